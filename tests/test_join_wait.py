"""Coroutines waiting for another caller's load of their key (single-flight).

Cancelled as that load lands, with a join timeout (``hard_timeout`` set), a waiter is
cancelled: it raises ``CancelledError``, it does not return the value as though nothing
happened. Python 3.11's ``asyncio.wait_for`` returns the result of an awaitable that ended
in the tick its caller was cancelled in, dropping the cancellation; the wait for a flight
went through it. The walk cancels the waiter 0, 1, 2, ... loop turns after the load
returned, until the waiter has ended first. And a load that failed with ``TimeoutError``
hands that error to its waiters, on both faces.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.polling import until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def waiter_cancelled_turns_after_the_load(turns: int) -> tuple[list[str], bool]:
    """What the waiter ended with, and whether it was still running when cancelled."""
    cache = AsyncTieredCache([MemoryTier()], protection=Protection(hard_timeout=30.0))
    loop = asyncio.get_running_loop()
    gate = asyncio.Event()
    ended: list[str] = []
    cancelled_running: list[bool] = []
    waiter: asyncio.Task[None] | None = None

    def cancel_after(turns: int) -> None:
        if turns:
            loop.call_soon(cancel_after, turns - 1)
        else:
            assert waiter is not None
            cancelled_running.append(waiter.cancel())

    async def load() -> str:
        await gate.wait()
        loop.call_soon(cancel_after, turns)
        return "v"

    async def wait_for_the_flight() -> None:
        try:
            ended.append(await cache.get("k", load))
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    leader = asyncio.create_task(cache.get("k", load))
    for _ in range(5):
        await asyncio.sleep(0)  # the leader waits at the gate
    waiter = asyncio.create_task(wait_for_the_flight())
    for _ in range(5):
        await asyncio.sleep(0)  # the waiter joined the flight
    gate.set()
    await asyncio.gather(leader, waiter, return_exceptions=True)
    await cache.aclose()
    return ended, bool(cancelled_running and cancelled_running[0])


@pytest.mark.anyio
async def test_a_waiter_cancelled_as_its_flight_lands_is_cancelled() -> None:
    """Seen failing: cancelled 3, 4 and 5 turns after the load returned (still running),
    the waiter returned ``'v'``: ``[3, 4, 5] == []``."""
    kept: list[int] = []
    for turns in range(50):
        ended, was_running = await waiter_cancelled_turns_after_the_load(turns)
        if not was_running:
            break
        if ended != ["cancelled"]:
            kept.append(turns)
    else:
        pytest.fail("the waiter never ended")
    assert kept == []


@pytest.mark.anyio
@pytest.mark.parametrize("hard_timeout", [None, 30.0])
async def test_a_waiter_of_a_load_that_timed_out_gets_its_error(hard_timeout: float | None) -> None:
    """A load whose loader raised ``TimeoutError`` (a source's own, as aiohttp raises it)
    hands it to the coroutines that joined it. Seen failing: with no ``hard_timeout`` the
    waiter got a bare ``AssertionError``; with one, a ``LoadTimeout`` saying it waited too
    long, after no wait at all."""
    cache = AsyncTieredCache([MemoryTier()], protection=Protection(hard_timeout=hard_timeout))
    gate = asyncio.Event()

    async def load() -> str:
        await gate.wait()
        raise TimeoutError("the source timed out")

    leader = asyncio.create_task(cache.get("k", load))
    for _ in range(5):
        await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get("k", load))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    ended = await asyncio.gather(leader, waiter, return_exceptions=True)
    await cache.aclose()
    assert [(type(error), str(error)) for error in ended] == [
        (TimeoutError, "the source timed out")
    ] * 2


def waiting(cache: TieredCache, key: str) -> int:
    """The callers waiting for the flight of ``key``."""
    flight = cache._loader.flights.in_flight(key)
    return 0 if flight is None else flight.waiters


@pytest.mark.parametrize("hard_timeout", [None, 30.0])
def test_a_thread_waiting_for_a_load_that_timed_out_gets_its_error(
    hard_timeout: float | None,
) -> None:
    """The threaded chain the same. Seen failing the same way: ``AssertionError`` with no
    ``hard_timeout``, a ``LoadTimeout`` naming a wait of 30 s with one."""
    cache = TieredCache([MemoryTier()], protection=Protection(hard_timeout=hard_timeout))
    inside, gate = threading.Event(), threading.Event()
    ended: list[tuple[type[BaseException], str]] = []

    def load() -> str:
        inside.set()
        assert gate.wait(30)
        raise TimeoutError("the source timed out")

    def read() -> None:
        try:
            cache.get("k", load)
        except BaseException as error:
            ended.append((type(error), str(error)))

    leader = threading.Thread(target=read)
    leader.start()
    assert inside.wait(30)
    waiter = threading.Thread(target=read)
    waiter.start()
    until(lambda: waiting(cache, "k") == 1, "the waiter joins its flight")
    gate.set()
    leader.join()
    waiter.join()
    cache.close()
    assert ended == [(TimeoutError, "the source timed out")] * 2
