"""The steps' asyncio driver (:func:`tiered_cache.steps.arun`) when its coroutine is closed."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from tiered_cache.steps import arun


class Suspended:
    """An awaitable that suspends once, as a future not done yet."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def test_a_step_closed_with_its_coroutine_awaits_nothing_more() -> None:
    """A coroutine of the driver closed while it waits (its task destroyed pending with a
    loop closed by hand and collected: the async bus's listener) closes the steps without
    awaiting the calls their clean-up asks for. Seen failing: ``RuntimeError: coroutine
    ignored GeneratorExit`` (an unraisable error as the collector closed the listener), the
    steps having asked for their connection to be closed in a ``finally``."""
    calls: list[str] = []

    async def wait() -> None:
        calls.append("wait")
        await Suspended()

    async def close() -> None:
        calls.append("close")
        await Suspended()  # a connection's close waits for its socket

    def steps() -> Any:
        try:
            yield wait, ()
        finally:
            yield close, ()

    coroutine = arun(steps())
    coroutine.send(None)  # suspended in wait()
    coroutine.close()
    assert calls == ["wait"]
