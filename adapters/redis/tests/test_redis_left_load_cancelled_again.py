"""A caller whose load is left running (:meth:`AsyncSourceLoader._leave`) and that is cancelled
again while it waits the left task's first step (:func:`~tiered_cache.loops.past_first_step`,
which waits through cancellations) still ends cancelled, and each cancellation stays counted:
an ``asyncio.timeout`` around the call that expired in that turn does not turn a cancellation
by hand into ``TimeoutError``, and one whose expiry was the only cancellation still times out.

A guard, not a fix: main (2d0f15d) passes it. ``past_first_step`` swallows the
``CancelledError``s it meets but leaves the task's count of cancellations as it is, and the
caller raises its own afterwards. A ``past_first_step`` that took them back
(``uncancel()``) fails it: ``assert request.cancelled()``, the task ended in the scope's
``TimeoutError``.

Real parts: the session's redis-server (the left load's lease is a Redis lease). The second
cancellation is sent by a task factory as the left load's task is created, so it lands in
exactly the turn ``past_first_step`` waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer

from .leases_held import leases_in
from .test_redis_async import PATIENT, chain

GUARD = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Hangs:
    """A loader that never answers until ``freed``; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.freed = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        await self.freed.wait()
        return "late"


def again_at_spawn(request: asyncio.Task[Any], cancel_again: Any) -> list[str]:
    """Run ``cancel_again()`` as ``request``, cancelled, spawns its next task (the left
    load's); returns the names of the coroutines it was run at (one, once it was)."""
    loop = asyncio.get_running_loop()
    fired: list[str] = []

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        if asyncio.current_task() is request and request.cancelling():
            loop.set_task_factory(None)
            fired.append(task.get_coro().__qualname__)
            cancel_again()
        return task

    loop.set_task_factory(factory)
    return fired


@pytest.mark.anyio
@pytest.mark.parametrize("again", ["by_hand", "outer_timeout"])
async def test_a_caller_cancelled_again_while_its_load_is_left_ends_cancelled(
    redis_server: RedisServer, namespace: str, again: str
) -> None:
    cache: AsyncTieredCache = chain(redis_server.url, namespace, protection=PATIENT)
    load = Hangs()
    timeouts: list[asyncio.Timeout] = []

    async def caller() -> str:
        async with asyncio.timeout(None) as scope:
            timeouts.append(scope)
            return await cache.get("k", load)

    request = asyncio.create_task(caller())
    await async_until(lambda: load.calls == 1, "the request loads")
    if again == "by_hand":
        fired = again_at_spawn(request, request.cancel)
    else:  # the timeout around the call expires in the turn the caller waits
        fired = again_at_spawn(request, lambda: timeouts[0].reschedule(-1.0))
    request.cancel()
    done, _ = await asyncio.wait({request}, timeout=GUARD)
    assert done
    assert fired == ["AsyncSourceLoader._load_and_fill"]  # the left load's task
    assert request.cancelled()  # not a value, nor the scope's TimeoutError
    assert cache.stats()["abandoned_loads"] == 1
    load.freed.set()
    await async_until(lambda: leases_in(redis_server, namespace) == [], "the lease goes back")
    assert await cache.get("k") == "late"  # filled by the left load
    await cache.aclose()


@pytest.mark.anyio
async def test_a_timeout_that_expires_as_the_load_is_left_still_times_out(
    redis_server: RedisServer, namespace: str
) -> None:
    cache: AsyncTieredCache = chain(redis_server.url, namespace, protection=PATIENT)
    load = Hangs()

    async def caller() -> str:
        async with asyncio.timeout(0.05):
            return await cache.get("k", load)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(caller(), GUARD)
    assert cache.stats()["abandoned_loads"] == 1
    load.freed.set()
    await async_until(lambda: leases_in(redis_server, namespace) == [], "the lease goes back")
    await cache.aclose()
