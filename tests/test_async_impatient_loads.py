"""Impatient callers of an untimed load (no ``hard_timeout``, no stale copy to serve): the load
runs in its caller's task, and a caller cancelled while it loads (``asyncio.wait_for``, a
client going away) has the same load begun again in a task of the loader, left running: it
fills the tiers, and the key's next miss joins it. Before, the load was cancelled with its
caller and the next miss began another: callers with a timeout shorter than the source's
answer began load after load, none ended, and the cache never filled."""

from __future__ import annotations

import asyncio
import collections
import logging

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.logged import ours
from tiered_cache.testing.polling import async_until
from tiered_cache.tier import MISSING

pytestmark = pytest.mark.anyio

#: The default protection's timeouts: a soft one (no stale copy here: not timed), no hard one.
UNTIMED = Protection(lease="off")


class GatedLoader:
    """A coroutine source held by an ``asyncio.Event`` the test sets: counts the loads it
    began and ended (and by key), each ending with a value of its own (``v1``, ``v2``...),
    and remembers the task each load began in."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0
        self.finished = 0
        self.by_key: collections.Counter[str] = collections.Counter()
        self.tasks: list[asyncio.Task[object] | None] = []

    def of(self, key: str) -> GatedKey:
        return GatedKey(self, key)

    async def __call__(self, key: str = "k") -> str:
        self.started += 1
        self.by_key[key] += 1
        self.tasks.append(asyncio.current_task())
        number = self.started
        await self.gate.wait()
        self.finished += 1
        return f"v{number}"


class GatedKey:
    """The loader of one key (``get(key, loader.of(key))``)."""

    def __init__(self, load: GatedLoader, key: str) -> None:
        self._load = load
        self._key = key

    async def __call__(self) -> str:
        return await self._load(self._key)


def tiers(clock: FakeClock) -> list[MemoryTier]:
    return [
        MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock),
        MemoryTier(name="l2", max_entries=1000, ttl=3600, clock=clock),
    ]


async def until_started(load: GatedLoader, count: int) -> None:
    await async_until(lambda: load.started >= count, f"{count} load(s) began")


async def gives_up(cache: AsyncTieredCache, key: str, load: GatedLoader) -> None:
    """A caller misses ``key`` and is cancelled once it waits for a load: one it began in its
    own task, or one an earlier caller left running, which it joined."""
    request = asyncio.create_task(cache.get(key, load.of(key)))

    def waits() -> bool:
        left = cache._loader._abandoned.get(key)
        joined = left is not None and any(wait.caller is request for wait in left[2].waits)
        return request in load.tasks or joined

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
            await asyncio.wait_for(cache.get("k", load.of("k")), 0.01)
    # The first caller's load, cancelled with it, and the same begun again, left running.
    assert (load.started, load.finished) == (2, 0)
    load.gate.set()
    assert await cache.get("k", load.of("k")) == "v2"
    assert (load.started, load.finished) == (2, 1)
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
    assert await cache.get("k", load.of("k")) == "v2"  # a hit
    assert load.started == 2
    await cache.aclose()


async def test_a_load_left_running_across_an_invalidation_neither_fills_nor_is_joined(
    clock: FakeClock,
) -> None:
    load = GatedLoader()
    l1, l2 = tiers(clock)
    cache = AsyncTieredCache([l1, l2], clock=clock, protection=UNTIMED)
    await gives_up(cache, "k", load)
    await until_started(load, 2)  # begun again, left running
    await cache.invalidate("k")  # the value loading may be older than the invalidation
    after = asyncio.create_task(cache.get("k", load.of("k")))
    await until_started(load, 3)  # the next miss loads anew: it does not join the old load
    load.gate.set()
    assert await after == "v3"
    assert await cache.wait_background()
    assert (load.started, load.finished) == (3, 2)  # the left load ran to its end...
    assert l1.get("k").value == "v3" and l2.get("k").value == "v3"  # ...and did not fill
    await cache.aclose()


async def test_a_left_load_ending_after_an_invalidation_does_not_fill(clock: FakeClock) -> None:
    load = GatedLoader()
    l1, l2 = tiers(clock)
    cache = AsyncTieredCache([l1, l2], clock=clock, protection=UNTIMED)
    await gives_up(cache, "k", load)
    await until_started(load, 2)
    await cache.invalidate("k")
    load.gate.set()
    assert await cache.wait_background()
    assert load.finished == 1
    assert l1.get("k") is MISSING and l2.get("k") is MISSING
    await cache.aclose()


async def test_a_caller_cancelled_after_an_invalidation_begins_nothing_again(
    clock: FakeClock,
) -> None:
    """The key was invalidated while the caller loaded: a load begun again would read under
    the caller's fence mark, its fill refused and no miss let to join it (the fence's
    ``may_join``). Nothing is begun: the next miss loads."""
    load = GatedLoader()
    cache = AsyncTieredCache(tiers(clock), clock=clock, protection=UNTIMED)
    request = asyncio.create_task(cache.get("k", load.of("k")))
    await until_started(load, 1)
    await cache.invalidate("k")
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert await cache.wait_background()
    assert load.started == 1 and cache.stats()["abandoned_loads"] == 0
    await cache.aclose()


async def test_loads_left_running_stop_at_max_abandoned_loads(clock: FakeClock) -> None:
    """Each key's load left running stays one load; past ``max_abandoned_loads`` of them a
    cancelled caller's load is not begun again (the source is in trouble): else a hung
    source kept one task per key ever missed."""
    load = GatedLoader()
    protection = Protection(lease="off", max_abandoned_loads=2, fail_safe=False)
    cache = AsyncTieredCache(tiers(clock), clock=clock, protection=protection)
    for key in ["a", "b"]:
        await gives_up(cache, key, load)
        await until_started(load, 2 * len(load.by_key))  # begun again
    assert load.started == 4
    await gives_up(cache, "c", load)
    load.gate.set()
    assert await cache.wait_background()
    assert (load.started, load.finished) == (5, 2)  # c's load not begun again
    assert cache.stats()["abandoned_loads"] == 2
    await cache.aclose()


async def test_a_storm_of_impatient_callers_loads_each_key_at_most_twice(
    clock: FakeClock,
) -> None:
    """50 callers of 8 keys, all cancelled while the source has not answered, then 50 more,
    twice: each key's first leader's load is begun again once and left running, every later
    caller joins it. Each key is loaded at most twice, and every load left running ends and
    fills."""
    load = GatedLoader()
    l1, l2 = tiers(clock)
    cache = AsyncTieredCache([l1, l2], clock=clock, protection=UNTIMED)
    keys = [f"k{n}" for n in range(8)]
    for wave in range(3):
        callers = [
            asyncio.create_task(cache.get(keys[n % 8], load.of(keys[n % 8]))) for n in range(50)
        ]
        await until_started(load, 8 if wave == 0 else 16)  # a load of each key runs
        for _ in range(20):  # the callers reach their loads or the flights they wait for
            await asyncio.sleep(0)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        assert all(caller.cancelled() for caller in callers)
    assert max(load.by_key.values()) <= 2
    load.gate.set()
    assert await cache.wait_background()
    assert (load.started, load.finished) == (16, 8)
    assert all(l1.get(key) is not MISSING and l2.get(key) is not MISSING for key in keys)
    await cache.aclose()


class Stubborn:
    """A loader that never answers until ``freed`` is set; its first call ends with its
    cancellation (the caller's own load), the later ones ignore it (a client that swallows
    it, or whose cleanup waits on a dead server)."""

    def __init__(self) -> None:
        self.calls = 0
        self.freed = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        stubborn = self.calls > 1
        while True:
            try:
                await self.freed.wait()
                return "late"
            except asyncio.CancelledError:
                if not stubborn:
                    raise


async def test_aclose_waits_for_a_left_load_ignoring_its_cancellation_close_wait_at_most(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The load begun again for a cancelled caller ignores its cancellation: the close
    cancels it and waits ``protection.close_wait`` (from the settings) at most, then returns,
    warns and counts it. Before, it waited for ever: the service's shutdown hung. The load,
    ending after the close, fills nothing."""
    load = Stubborn()
    cache = AsyncTieredCache.from_config(
        tiers=[{"kind": "memory", "name": "l1"}],
        protection={"lease": "off", "close_wait": "50ms"},
        bus={"kind": "off"},
    )
    request = asyncio.create_task(cache.get("k", load))
    await async_until(lambda: load.calls == 1, "the caller loads")
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    await async_until(lambda: load.calls == 2, "its load begun again")
    left = cache._loader._abandoned["k"][0]
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        closing = asyncio.create_task(cache.aclose())
        await asyncio.wait({closing}, timeout=20)
        done = closing.done()
        load.freed.set()
        await asyncio.wait({closing, left}, timeout=20)
    assert done  # it returned while the load still ran
    assert cache.stats()["close_loads_left_running"] == 1
    assert [getattr(r, "event", None) for r in ours(caplog.records)] == ["close_loads_left_running"]
    assert left.result().value == "late"  # it ended after the close
    assert cache.tiers[0].peek("k") is MISSING  # the late load filled nothing
