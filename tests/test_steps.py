"""The steps' asyncio driver (:func:`tiered_cache.steps.arun`): its coroutine closed, and a
loader's own cancellation count."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.steps import arun


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


@pytest.mark.anyio
async def test_a_loader_whose_task_group_had_a_child_fail_serves_its_value() -> None:
    """A loader that gathers with a ``TaskGroup`` and handles a child's failure leaves its
    task's count of cancellations up by one on Python 3.11, though nothing was cancelled.
    The chain serves its value. (A first version of the lost-cancellation check, in the
    steps' driver around every call, the loader's too, raised ``CancelledError`` here.)"""
    cache = AsyncTieredCache([MemoryTier()])

    async def fail() -> None:
        raise ValueError("one of the loader's fetches")

    async def load() -> str:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(fail())
        except* ValueError:
            pass
        return "v"

    assert await cache.get("k", load) == "v"
    await cache.aclose()
