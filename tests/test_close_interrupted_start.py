"""A ``close()`` interrupted (Ctrl-C's ``KeyboardInterrupt``, a signal handler raising) at any
instant of its close thread's start (:mod:`tiered_cache.closing`).

``Thread.start`` lists the thread (``threading.enumerate`` shows it) before it launches it:
interrupted in between, the thread is listed and never runs; interrupted after, it runs. The
close cannot tell the two apart. What a user expects either way: the interrupted ``close()``
raises at once, the next ``close()`` closes the chain, and a process that the interrupt ends
closes it before it exits. Each test interrupts at each line ``Thread.start`` runs.
"""

from __future__ import annotations

import dis
import sys
import threading
from types import FrameType

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.closing import CloseOnce
from tiered_cache.memory import LruPolicy
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import SERVICE_HEAD, ClosesCounted, service_ended
from tiered_cache.testing.interrupts import Interrupted, raised_at_line

START = threading.Thread.start.__code__
#: The close's own start of its thread, around ``Thread.start``.
OWN_START = CloseOnce._start.__code__
#: Every line of ``Thread.start`` (those that do not run in a start are never reached).
LINES = sorted(
    {i.starts_line for i in dis.get_instructions(START) if i.starts_line} - {START.co_firstlineno}
)


def lines_run() -> list[int]:
    """The lines of ``Thread.start`` a start runs (the interrupt lands at one of them)."""
    seen: list[int] = []

    def calls(frame: FrameType, event: str, arg: object) -> object:
        if event == "call" and frame.f_code is START:
            return lines
        return None

    def lines(frame: FrameType, event: str, arg: object) -> object:
        if event == "line":
            seen.append(frame.f_lineno)
        return lines

    thread = threading.Thread(target=lambda: None)
    sys.settrace(calls)
    try:
        thread.start()
    finally:
        sys.settrace(None)
    thread.join()
    return sorted(set(seen))


RUN = lines_run()


def ctrl_c_at(line: int, raised: type[BaseException]) -> object:
    """A trace function raising ``raised`` at ``line`` of the close thread's start."""

    def calls(frame: FrameType, event: str, arg: object) -> object:
        starting = event == "call" and frame.f_code is START
        if starting and frame.f_locals["self"].name == "tiered-cache-close":
            return at_line
        return None

    at_line = raised_at_line(line, raised)
    return calls


def closing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tiered-cache-close" and t.is_alive()]


@pytest.mark.parametrize("line", RUN)
def test_a_close_interrupted_in_its_threads_start_raises_and_the_next_closes(line: int) -> None:
    """Seen failing at the lines between the listing and the launch: ``the interrupted
    close() never returned`` (it waited for a thread that was never launched to begin). The
    first line is the instant tests/test_close_once.py interrupted at before (``Thread.start``
    entered: a signal is raised at a function's entry), where the close then waited for good
    too."""
    clock = FakeClock(1000.0)
    memory, source = MemoryTier(policy=LruPolicy(100), clock=clock), ClosesCounted()
    cache = TieredCache([memory], source, ttl=1.0, clock=clock)
    assert cache.get("a") == "old"
    seen: list[str] = []

    def interrupted_close() -> None:
        sys.settrace(ctrl_c_at(line, Interrupted))  # type: ignore[arg-type]
        try:
            cache.close()
            seen.append("returned")
        except Interrupted:
            seen.append("interrupted")
        finally:
            sys.settrace(None)

    closing = threading.Thread(target=interrupted_close, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "the interrupted close() never returned"
    assert seen == ["interrupted"]
    cache.close()
    assert (len(memory), source.closes, cache.closed) == (0, 1, True)
    assert closing_threads() == []


SERVICE = (
    SERVICE_HEAD
    + """
from {module} import ctrl_c_at
sys.settrace(ctrl_c_at({line}, KeyboardInterrupt))
with cache:  # the service's main ends: Ctrl-C lands in its close, as it starts its thread
    pass
"""
)

MODULE = __name__ if __name__ != "__main__" else "test_close_interrupted_start"


@pytest.mark.parametrize("line", RUN)
def test_a_process_whose_close_is_interrupted_in_its_threads_start_closes_before_it_exits(
    line: int,
) -> None:
    """The ``KeyboardInterrupt`` ends the process; its exit finishes the close, whether the
    close's thread was launched or not. Seen failing at the lines between the listing and
    the launch: the process never ended (its close waited for that thread to begin)."""
    assert service_ended(SERVICE.format(module=MODULE, line=line)) == ["source closed"]


TWICE = (
    SERVICE_HEAD
    + """
from {module} import ctrl_c_twice
ctrl_c_twice(launched={launched}, after={after})
with cache:  # the service's main ends: Ctrl-C twice in its close, as it starts its thread
    pass
"""
)


def ctrl_c_twice(*, launched: bool, after: int) -> None:
    """Ctrl-C pressed twice as a ``close()`` starts its thread: the first lands in
    ``Thread.start`` (before it launches the thread, or once it has begun: ``launched``),
    the second at the line the close's own start runs ``after`` lines after the first (as
    it handles it), if it runs that many. The first is raised by ``Thread.start`` itself,
    not by a trace function (a trace function that raises is unset: the second could not be
    raised). Says so on stderr as the second is raised."""
    start = threading.Thread.start
    first: list[bool] = []
    lines: list[int] = []

    def interrupted_start(thread: threading.Thread) -> None:
        if thread.name != "tiered-cache-close" or first:
            start(thread)
            return
        if launched:
            start(thread)
        first.append(True)
        raise KeyboardInterrupt

    def calls(frame: FrameType, event: str, arg: object) -> object:
        return in_own if event == "call" and frame.f_code is OWN_START else None

    def in_own(frame: FrameType, event: str, arg: object) -> object:
        if event == "return" and first:  # the close stopped: none in the exit's hook
            sys.settrace(None)
        if event == "line" and first:
            lines.append(frame.f_lineno)
            if len(lines) > after:
                sys.settrace(None)
                frame.f_trace = None
                print("the second interrupt", file=sys.stderr, flush=True)
                raise KeyboardInterrupt
        return in_own

    threading.Thread.start = interrupted_start  # type: ignore[method-assign]
    sys.settrace(calls)  # type: ignore[arg-type]


@pytest.mark.parametrize("after", range(4))
@pytest.mark.parametrize("launched", [False, True], ids=["not-launched", "launched"])
def test_a_process_whose_close_is_interrupted_twice_as_it_starts_its_thread_closes_before_it_exits(
    launched: bool, after: int
) -> None:
    """Ctrl-C lands in the close thread's start, and a second one at each line the close
    then runs as it handles the first (those it runs): the process ends, and its exit
    finishes the close. Seen failing with the thread not launched and the second interrupt
    at the first line of the ``except`` clause that registered the exit's hook (``after``
    1), before it did: ``assert [] == ['source closed']`` (the process exited with the chain
    open)."""
    script = TWICE.format(module=MODULE, launched=launched, after=after)
    assert service_ended(script) == ["source closed"]
