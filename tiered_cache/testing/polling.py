"""Waiting in tests for what another thread, process, loop task or the bus does: the one home
of the poll loop, for the core's tests and the adapters'.

Each wait has a bound: against hanging (10 s unless told), or one the test checks (the bus's
delay, where a test says how soon a write must be heard). A test asserts the condition, never
how long it took.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

__all__ = ["async_eventually", "async_until", "eventually", "until"]


def eventually(check: Callable[[], object], within: float = 10.0, *, every: float = 0.01) -> bool:
    """Whether ``check()`` held within ``within`` seconds: asked every ``every`` seconds, and
    once more as the time runs out."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())


def until(condition: Callable[[], object], what: str, within: float = 10.0) -> None:
    """Wait for ``condition`` (asked every millisecond); fail, naming ``what``, if it has not
    held within ``within`` seconds."""
    assert eventually(condition, within, every=0.001), f"never: {what}"


async def async_eventually(
    check: Callable[[], object], within: float = 10.0, *, every: float = 0.01
) -> bool:
    """:func:`eventually` on a running loop, which runs meanwhile; ``check()``'s result is
    awaited when it is awaitable (an asyncio chain's read)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await _holds(check):
            return True
        await asyncio.sleep(every)
    return await _holds(check)


async def async_until(condition: Callable[[], object], what: str, within: float = 10.0) -> None:
    """:func:`until` on a running loop (:func:`async_eventually`)."""
    assert await async_eventually(condition, within, every=0.001), f"never: {what}"


async def _holds(check: Callable[[], object]) -> bool:
    result = check()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
