"""Readers of a stale key (within max_stale) are served the stale copy while its background
refresh loads, also when the refresh then fails: they neither wait for it nor load.

A background refresh leads its key's flight in the readers' table (one load of a key at a
time). A reader that finds a refresh's flight does not join it at first: it reads the tiers
without loading (``FlightTable``'s :data:`~tiered_cache.singleflight.BESIDE`) and is served
a fresh copy or a servable stale one; only a reader that finds nothing to serve (the copy past
``max_stale``, gone, or invalidated) joins the refresh's flight, or waits behind it when an
invalidation came since the refresh read. Readers that joined the refresh (1e85e2b) waited out
its load: under a throttled source, botocore's backoff (docs/benchmarks/faults.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.held_loads import HeldLoads as Loads
from tiered_cache.testing.held_loads import start_async_refresh, start_refresh
from tiered_cache.testing.polling import async_until, until

SERVE_STALE = Protection(max_stale=30, lease="off", early_refresh_beta=0.0)
READERS = 5
#: How a reader finds nothing to serve beside the refresh: its copy past max_stale, or gone
#: from the tier (evicted) with no invalidation.
NOTHING_TO_SERVE = ["past max_stale", "gone"]


def chain_parts(clock: FakeClock) -> dict[str, Any]:
    """One memory tier, a TTL of 1 s and stale copies served for 30 s: either face's chain."""
    return {
        "tiers": [MemoryTier(name="l1", max_entries=10, ttl=60, clock=clock)],
        "clock": clock,
        "ttl": 1,
        "protection": SERVE_STALE,
    }


@contextmanager
def refreshing() -> Iterator[tuple[TieredCache, FakeClock, Loads]]:
    """A chain whose key ``k`` went stale: a read served it and started the refresh, whose
    load is held (:func:`~tiered_cache.testing.held_loads.start_refresh`)."""
    clock = FakeClock()
    loads = Loads()
    cache = TieredCache(**chain_parts(clock))
    try:
        start_refresh(cache, clock, loads, 2)  # stale, within max_stale
        yield cache, clock, loads
    finally:
        cache.close()


@asynccontextmanager
async def async_refreshing() -> AsyncIterator[tuple[AsyncTieredCache, FakeClock, Loads]]:
    """:func:`refreshing` for the asyncio chain."""
    clock = FakeClock()
    loads = Loads()
    cache = AsyncTieredCache(**chain_parts(clock))
    try:
        await start_async_refresh(cache, clock, loads, 2)
        yield cache, clock, loads
    finally:
        await cache.aclose()


def waiters(cache: TieredCache | AsyncTieredCache) -> int:
    flight = cache._loader.flights.in_flight("k")
    return 0 if flight is None else flight.waiters


def leave_nothing_to_serve(
    cache: TieredCache | AsyncTieredCache, clock: FakeClock, how: str
) -> None:
    """The reader's copy past serving, without an invalidation (a reader may join the refresh)."""
    if how == "past max_stale":
        clock.advance(31)
    else:
        tier = cache.tiers[0]
        assert isinstance(tier, MemoryTier)
        tier.delete("k")  # the tier itself: no invalidation through the fence


def served_stale_and_waited(cache: TieredCache | AsyncTieredCache) -> tuple[int, int]:
    stats = cache.stats()
    return stats["stale_served"], stats["singleflight_waits"]


def test_readers_get_the_stale_copy_while_a_refresh_loads_and_fails() -> None:
    with refreshing() as (cache, _, loads):
        served: list[str] = []
        readers = [
            threading.Thread(target=lambda: served.append(cache.get("k", loads.loader("reader"))))
            for _ in range(READERS)
        ]
        for reader in readers:
            reader.start()
        try:
            until(lambda: len(served) == READERS, "every reader served while the refresh loads")
        finally:
            loads.release("refresh", fail=True)
            for reader in readers:
                reader.join()
        cache.wait_background(5)
        assert served == ["v1"] * READERS
        assert loads.started == ["v1", "refresh"]  # no reader loaded
        assert served_stale_and_waited(cache) == (READERS + 1, 0)


def test_async_readers_get_the_stale_copy_while_a_refresh_loads_and_fails() -> None:
    async def main() -> None:
        async with async_refreshing() as (cache, _, loads):
            readers = [
                asyncio.create_task(cache.get("k", loads.async_loader("reader")))
                for _ in range(READERS)
            ]
            try:
                await async_until(
                    lambda: all(r.done() for r in readers),
                    "every reader served while the refresh loads",
                )
            finally:
                loads.release("refresh", fail=True)
                served = await asyncio.gather(*readers)
            assert served == ["v1"] * READERS
            assert loads.started == ["v1", "refresh"]
            assert served_stale_and_waited(cache) == (READERS + 1, 0)

    asyncio.run(main())


@pytest.mark.parametrize("how", NOTHING_TO_SERVE)
def test_a_reader_with_nothing_to_serve_joins_the_refresh_and_loads_nothing(how: str) -> None:
    with refreshing() as (cache, clock, loads):
        leave_nothing_to_serve(cache, clock, how)
        served: list[str] = []
        reader = threading.Thread(target=lambda: served.append(cache.get("k", loads.loader("r"))))
        reader.start()
        until(lambda: waiters(cache) == 1, "the reader joined the refresh's flight")
        loads.release("refresh")
        reader.join(10)
        assert served == ["refresh"]
        assert loads.started == ["v1", "refresh"]  # the reader loaded nothing
        assert served_stale_and_waited(cache) == (1, 1)


@pytest.mark.parametrize("how", NOTHING_TO_SERVE)
def test_an_async_reader_with_nothing_to_serve_joins_the_refresh_and_loads_nothing(
    how: str,
) -> None:
    async def main() -> None:
        async with async_refreshing() as (cache, clock, loads):
            leave_nothing_to_serve(cache, clock, how)
            reader = asyncio.create_task(cache.get("k", loads.async_loader("r")))
            await async_until(lambda: waiters(cache) == 1, "the reader joined the refresh")
            loads.release("refresh")
            assert await asyncio.wait_for(reader, 10) == "refresh"
            assert loads.started == ["v1", "refresh"]
            assert served_stale_and_waited(cache) == (1, 1)

    asyncio.run(main())


def test_a_reader_after_an_invalidation_is_served_neither_the_stale_copy_nor_the_refresh() -> None:
    """The invalidation removed the stale copy, and the refresh read before it: the reader
    finds nothing to serve, may not take the refresh's value (the fence), waits for it to end
    (one load at a time) and loads anew."""
    with refreshing() as (cache, _, loads):
        cache.invalidate("k")
        served: list[str] = []
        reader = threading.Thread(target=lambda: served.append(cache.get("k", loads.loader("new"))))
        reader.start()
        until(lambda: waiters(cache) == 1, "the reader waits behind the refresh")
        assert loads.started == ["v1", "refresh"]
        loads.release("refresh")
        loads.release("new")
        reader.join(10)
        assert cache.wait_background(10)
        assert served == ["new"]
        assert (loads.started, loads.most) == (["v1", "refresh", "new"], 1)
        assert cache.get("k", loads.loader("again")) == "new"  # the refresh's fill was refused


def test_an_async_reader_after_an_invalidation_is_served_neither_stale_nor_refresh() -> None:
    async def main() -> None:
        async with async_refreshing() as (cache, _, loads):
            await cache.invalidate("k")
            reader = asyncio.create_task(cache.get("k", loads.async_loader("new")))
            await async_until(lambda: waiters(cache) == 1, "the reader waits behind the refresh")
            assert loads.started == ["v1", "refresh"]
            loads.release("refresh")
            loads.release("new")
            assert await asyncio.wait_for(reader, 10) == "new"
            assert await cache.wait_background(10)
            assert (loads.started, loads.most) == (["v1", "refresh", "new"], 1)
            assert await cache.get("k", loads.async_loader("again")) == "new"

    asyncio.run(main())
