"""Impatient callers of an untimed load (no ``hard_timeout``, no stale copy to serve): a caller
that stops waiting (``asyncio.wait_for``, a cancellation) leaves its load running, and the
key's next miss joins it, as for a timed load. Before, the load was cancelled with its caller
and the next miss began another: callers with a timeout shorter than the source's answer
began load after load, none ended, and the cache never filled."""

from __future__ import annotations

import asyncio

import pytest

from tiered_cache import AsyncTieredCache, LoadTimeout, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.polling import async_until
from tiered_cache.tier import MISSING

pytestmark = pytest.mark.anyio

#: The default protection's timeouts: a soft one (no stale copy here: not timed), no hard one.
UNTIMED = Protection(lease="off")


class GatedLoader:
    """A coroutine source held by an ``asyncio.Event`` the test sets: counts the loads it
    began and ended, each ending with a value of its own (``v1``, ``v2``...)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0
        self.finished = 0

    async def __call__(self) -> str:
        self.started += 1
        number = self.started
        await self.gate.wait()
        self.finished += 1
        return f"v{number}"


def tiers(clock: FakeClock) -> list[MemoryTier]:
    return [
        MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock),
        MemoryTier(name="l2", max_entries=1000, ttl=3600, clock=clock),
    ]


async def until_started(load: GatedLoader, count: int) -> None:
    await async_until(lambda: load.started >= count, f"{count} load(s) began")


async def gives_up(cache: AsyncTieredCache, key: str, load: GatedLoader) -> None:
    """A caller misses ``key`` and is cancelled once it waits for a load: one it began, or
    one an earlier caller left running, which it joined."""
    began = load.started
    request = asyncio.create_task(cache.get(key, load))

    def waits() -> bool:
        left = cache._loader._abandoned.get(key)
        joined = left is not None and any(wait.caller is request for wait in left[2].waits)
        return load.started > began or joined

    await async_until(waits, "the caller waits for a load")
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_callers_that_give_up_leave_one_load_that_fills(clock: FakeClock) -> None:
    load = GatedLoader()
    l1, l2 = tiers(clock)
    cache = AsyncTieredCache([l1, l2], clock=clock, protection=UNTIMED)
    for _ in range(5):  # each gives up while the source has not answered
        await gives_up(cache, "k", load)
    for _ in range(5):  # and under wait_for (the gate stays shut: each times out)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(cache.get("k", load), 0.01)
    assert (load.started, load.finished) == (1, 0)
    load.gate.set()
    assert await cache.get("k", load) == "v1"
    assert (load.started, load.finished) == (1, 1)
    assert l1.get("k") is not MISSING and l2.get("k") is not MISSING
    stats = cache.stats()
    assert (stats["loads"], stats["abandoned_loads"]) == (1, 1)
    await cache.aclose()


async def test_a_load_left_running_fills_the_cache_with_nobody_waiting(clock: FakeClock) -> None:
    load = GatedLoader()
    l1, _ = layers = tiers(clock)
    cache = AsyncTieredCache(layers, clock=clock, protection=UNTIMED)
    await gives_up(cache, "k", load)
    load.gate.set()
    assert await cache.wait_background()
    assert load.finished == 1
    assert l1.get("k") is not MISSING
    assert await cache.get("k", load) == "v1"  # a hit
    assert load.started == 1
    await cache.aclose()


async def test_a_load_left_running_across_an_invalidation_neither_fills_nor_is_joined(
    clock: FakeClock,
) -> None:
    load = GatedLoader()
    l1, l2 = tiers(clock)
    cache = AsyncTieredCache([l1, l2], clock=clock, protection=UNTIMED)
    await gives_up(cache, "k", load)
    await cache.invalidate("k")  # the value loading may be older than the invalidation
    after = asyncio.create_task(cache.get("k", load))
    await until_started(load, 2)  # the next miss loads anew: it does not join the old load
    load.gate.set()
    assert await after == "v2"
    assert await cache.wait_background()
    assert (load.started, load.finished) == (2, 2)  # the old load ran to its end...
    assert l1.get("k").value == "v2" and l2.get("k").value == "v2"  # ...and did not fill
    await cache.aclose()


async def test_a_left_load_ending_after_an_invalidation_does_not_fill(clock: FakeClock) -> None:
    load = GatedLoader()
    l1, l2 = tiers(clock)
    cache = AsyncTieredCache([l1, l2], clock=clock, protection=UNTIMED)
    await gives_up(cache, "k", load)
    await cache.invalidate("k")
    load.gate.set()
    assert await cache.wait_background()
    assert load.finished == 1
    assert l1.get("k") is MISSING and l2.get("k") is MISSING
    await cache.aclose()


async def test_untimed_loads_left_running_count_toward_max_abandoned_loads(
    clock: FakeClock,
) -> None:
    """Each key's load left running stays one load; past ``max_abandoned_loads`` of them a
    miss on another key is refused at once (the source is in trouble), as for timed loads:
    else a hung source kept one task per key ever missed."""
    load = GatedLoader()
    protection = Protection(lease="off", max_abandoned_loads=2, fail_safe=False)
    cache = AsyncTieredCache(tiers(clock), clock=clock, protection=protection)
    for key in ["a", "b"]:
        await gives_up(cache, key, load)
    with pytest.raises(LoadTimeout, match="max_abandoned_loads"):
        await asyncio.wait_for(cache.get("c", load), 10)  # bounded: loading, it would hang
    assert load.started == 2
    assert cache.stats()["loads_refused"] == 1
    load.gate.set()
    assert await cache.wait_background()
    assert await cache.get("c", load) == "v3"  # they ended: loads start again
    await cache.aclose()
