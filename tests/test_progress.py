"""The progress line: drawn on a real terminal (a pseudo-terminal), silent on a pipe."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import TextIO

import pytest

from tiered_cache.progress import ProgressLine
from tiered_cache.testing import FakeClock


@pytest.fixture
def terminal() -> Iterator[tuple[TextIO, int]]:
    """The writing end of a pseudo-terminal (``isatty()`` is true) and the reading end's fd."""
    reader, writer = os.openpty()
    stream = open(writer, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    yield stream, reader
    stream.close()
    os.close(reader)


def read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_on_a_terminal_the_line_is_redrawn_in_place(terminal: tuple[TextIO, int]) -> None:
    stream, reader = terminal
    clock = FakeClock(100.0)
    progress = ProgressLine(stream, unit="records", clock=clock)
    assert progress.enabled
    clock.advance(2.0)
    progress.update(5, 10, "1 shard")
    clock.advance(2.0)
    progress.finish(10, 10, "caught up")
    shown = read_all(reader)
    assert shown.count("\r[") == 2
    assert "[############............]  50%  5/10 records  2/s  1 shard" in shown
    assert "[########################] 100%  10/10 records  2/s  caught up" in shown
    assert shown.endswith("\n")  # the terminal shows "\r\n" for it


def test_without_a_total_it_counts(terminal: tuple[TextIO, int]) -> None:
    stream, reader = terminal
    clock = FakeClock(0.0)
    progress = ProgressLine(stream, unit="records", clock=clock)
    clock.advance(1.0)
    progress.update(1234)
    assert read_all(reader) == "\r1,234 records  1,234/s"


def test_redraws_are_at_most_one_per_interval(terminal: tuple[TextIO, int]) -> None:
    stream, reader = terminal
    clock = FakeClock(0.0)
    progress = ProgressLine(stream, clock=clock, interval=0.5)
    progress.update(1)
    progress.update(2)  # too soon: not drawn
    clock.advance(0.5)
    progress.update(3)
    shown = read_all(reader)
    assert shown.count("\r") == 2
    assert "2 items" not in shown
    assert "3 items" in shown


def test_a_shorter_line_wipes_the_longer_one_before_it(terminal: tuple[TextIO, int]) -> None:
    stream, reader = terminal
    clock = FakeClock(0.0)
    progress = ProgressLine(stream, clock=clock, interval=0.0)
    progress.update(1, note="a long note here")
    progress.update(2)
    first, second = read_all(reader).split("\r")[1:]
    assert len(second) == len(first)
    assert second.rstrip() == "2 items"


@pytest.mark.parametrize("kind", ["pipe", "buffer"])
def test_piped_or_redirected_it_writes_nothing(kind: str) -> None:
    if kind == "pipe":
        reader, writer = os.pipe()
        stream: TextIO = open(writer, "w", encoding="utf-8")  # noqa: SIM115
    else:
        stream = io.StringIO()
    progress = ProgressLine(stream)
    assert not progress.enabled
    progress.update(5, 10)
    progress.finish(10, 10, "done")
    stream.flush()
    if kind == "pipe":
        stream.close()
        with os.fdopen(reader) as read_end:
            assert read_end.read() == ""
    else:
        assert isinstance(stream, io.StringIO)
        assert stream.getvalue() == ""
