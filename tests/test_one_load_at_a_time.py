"""One load of a key at a time in a process, across an invalidation.

A miss that comes after an invalidation of its key may not take the value of a load that read
before it (that load may bring back what the invalidation removed: ``Fence.may_join``), but it
does not start a load of its own beside it either: it waits for that load to end, then loads
(or joins the one load started after the invalidation). Seen in a Redis outage: the bus going
down invalidates everything, and every key with a load in flight got a second one at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from tiered_cache import (
    AsyncTieredCache,
    MemoryTier,
    PartialBatchError,
    RecursiveLoad,
    TieredCache,
)
from tiered_cache.protection import Protection
from tiered_cache.singleflight import FlightTable, Landing
from tiered_cache.testing import FakeClock
from tiered_cache.testing.buses import CuttableBus
from tiered_cache.testing.held_loads import HeldLoads as Loads
from tiered_cache.testing.polling import async_until, until

STRICT = Protection.never_stale(lease="off")


def waiters(flights: FlightTable[Landing], key: str) -> int:
    flight = flights.in_flight(key)
    return 0 if flight is None else flight.waiters


def decided(loads: Loads, flights: FlightTable[Landing], key: str, callers: int) -> bool:
    """The callers that came after the invalidation each started a load or wait on a flight."""
    return len(loads.started) > 1 or waiters(flights, key) >= callers


def sync_chain(clock: FakeClock, bus: CuttableBus | None = None) -> TieredCache:
    return TieredCache(
        [MemoryTier(name="l1", max_entries=10, ttl=60, clock=clock)],
        clock=clock,
        protection=STRICT,
        bus=bus,
    )


@pytest.mark.parametrize("invalidation", ["key", "clear", "bus down"])
def test_a_miss_after_an_invalidation_waits_for_the_load_in_flight_then_loads_anew(
    clock: FakeClock, invalidation: str
) -> None:
    bus = CuttableBus()
    cache = sync_chain(clock, bus)
    loads = Loads()
    results: dict[str, object] = {}
    first = threading.Thread(
        target=lambda: results.update(first=cache.get("k", loads.loader("old")))
    )
    first.start()
    until(lambda: loads.started == ["old"], "the first load started")
    if invalidation == "key":
        cache.invalidate("k")
    elif invalidation == "clear":
        cache.clear()
    else:
        bus.cut()  # a gap: this process may have missed invalidations of anything
    later = [
        threading.Thread(
            target=lambda n=n: results.update({f"later{n}": cache.get("k", loads.loader("new"))})
        )
        for n in range(2)
    ]
    for thread in later:
        thread.start()
    until(lambda: decided(loads, cache._loader.flights, "k", 2), "the later misses decided")
    assert loads.started == ["old"]  # neither started a second load beside the first
    loads.release("old")
    first.join(10)
    until(lambda: loads.started == ["old", "new"], "the later misses' load started")
    loads.release("new")
    for thread in later:
        thread.join(10)
    assert results == {"first": "old", "later0": "new", "later1": "new"}
    assert loads.most == 1
    assert cache.get("k", loads.loader("never")) == "new"  # the later load filled, not the first
    cache.close()


def test_a_get_many_after_an_invalidation_waits_for_the_batch_in_flight(clock: FakeClock) -> None:
    cache = sync_chain(clock)
    loads = Loads()
    results: dict[str, object] = {}
    first = threading.Thread(
        target=lambda: results.update(first=cache.get_many(["k"], loads.batch_loader("old")))
    )
    first.start()
    until(lambda: loads.started == ["old"], "the first batch started")
    cache.invalidate("k")
    later = threading.Thread(
        target=lambda: results.update(later=cache.get_many(["k"], loads.batch_loader("new")))
    )
    later.start()
    until(lambda: decided(loads, cache._loader.flights, "k", 1), "the later batch decided")
    assert loads.started == ["old"]
    loads.release("old")
    first.join(10)
    until(lambda: loads.started == ["old", "new"], "the later batch started")
    loads.release("new")
    later.join(10)
    assert results == {"first": {"k": "old"}, "later": {"k": "new"}}
    assert loads.most == 1
    cache.close()


@pytest.mark.anyio
@pytest.mark.parametrize("batch", [False, True], ids=["get", "get_many"])
async def test_an_async_miss_after_an_invalidation_waits_for_the_load_in_flight(
    clock: FakeClock, batch: bool
) -> None:
    cache = AsyncTieredCache(
        [MemoryTier(name="l1", max_entries=10, ttl=60, clock=clock)], clock=clock, protection=STRICT
    )
    started: list[str] = []
    running = most = 0
    gates = {"old": asyncio.Event(), "new": asyncio.Event()}

    async def load(value: str) -> str:
        nonlocal running, most
        started.append(value)
        running += 1
        most = max(most, running)
        try:
            await gates[value].wait()
            return value
        finally:
            running -= 1

    async def read(value: str) -> object:
        if batch:
            return await cache.get_many(["k"], lambda keys: _batch(keys, load(value)))
        return await cache.get("k", lambda: load(value))

    first = asyncio.create_task(read("old"))
    await async_until(lambda: started == ["old"], "the first load started")
    await cache.invalidate("k")
    later = [asyncio.create_task(read("new")) for _ in range(2)]
    flights = cache._loader.flights
    await async_until(lambda: len(started) > 1 or waiters(flights, "k") >= 2, "they decided")
    assert started == ["old"]
    gates["old"].set()
    await async_until(lambda: len(started) > 1, "the later misses' load started")
    assert started == ["old", "new"]
    gates["new"].set()
    expected: object = {"k": "new"} if batch else "new"
    assert await first == ({"k": "old"} if batch else "old")
    assert await asyncio.gather(*later) == [expected, expected]
    assert most == 1
    await cache.aclose()


async def _batch(keys: Sequence[str], load: object) -> dict[str, str]:
    value = await load  # type: ignore[misc]
    return dict.fromkeys(keys, value)


def test_a_loader_that_invalidates_and_reads_its_own_key_raises_recursive_load(
    clock: FakeClock,
) -> None:
    """Behind its own flight, the loader would wait for itself for ever."""
    cache = sync_chain(clock)

    def load() -> str:
        cache.invalidate("k")
        return str(cache.get("k", lambda: "inner"))

    def load_many(keys: Sequence[str]) -> dict[str, str]:
        cache.invalidate("k")
        return dict(cache.get_many(["k"], lambda keys: dict.fromkeys(keys, "inner")))

    with pytest.raises(RecursiveLoad, match="'k'"):
        cache.get("k", load)
    with pytest.raises(PartialBatchError) as raised:
        cache.get_many(["k"], load_many)
    assert isinstance(raised.value.errors["k"], RecursiveLoad)
    assert cache.get("k", lambda: "v") == "v"  # nothing of the refused loads stayed in flight
    cache.close()


@pytest.mark.anyio
async def test_an_async_loader_that_invalidates_and_reads_its_own_key_raises_recursive_load(
    clock: FakeClock,
) -> None:
    cache = AsyncTieredCache(
        [MemoryTier(name="l1", max_entries=10, ttl=60, clock=clock)], clock=clock, protection=STRICT
    )

    async def inner() -> str:
        return "inner"

    async def load() -> str:
        await cache.invalidate("k")
        return str(await cache.get("k", inner))

    with pytest.raises(RecursiveLoad, match="'k'"):
        await cache.get("k", load)
    await cache.aclose()
