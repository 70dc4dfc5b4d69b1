"""A chain whose first tier is shared (Redis first, no memory) counts that tier's hit or miss
once per read on both faces, whatever the bus.

The threaded chain's L1 lookup reads any tier 0 in a plain call and counts it. The asyncio
chain's lookup reads only an in-process tier 0 (a shared one is I/O: awaited on the slow
path), and the slow path re-read tier 0 quietly, taking it as read by the lookup: with Redis
first, ``stats()["tiers"][0]`` showed no hit and no miss, ever (docs/metrics.md:
``tier_hits`` / ``tier_misses`` are the reads a tier answered or could not answer).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.async_accessor import BlockingTierWarning
from tiered_cache.testing import FakeClock
from tiered_cache.testing.polling import async_until

from .test_bus_start_counts import ConfirmingBus
from .test_own_write_open import HeldAsyncShared, SharedTier


def first_tier_counts(cache: TieredCache | AsyncTieredCache) -> tuple[int, int]:
    first = cache.stats()["tiers"][0]
    return first["hits"], first["misses"]


async def load() -> str:
    return "v"


def async_chain(kind: str, clock: FakeClock, down: bool = False) -> AsyncTieredCache:
    """An asyncio chain whose one tier is shared (``kind``: native async, or a sync tier run
    in threads), its bus confirmed, or failed (``down``)."""
    bus = ConfirmingBus()
    if kind == "native":
        cache = AsyncTieredCache([HeldAsyncShared(clock)], ttl=600, clock=clock, bus=bus)
    else:
        with pytest.warns(BlockingTierWarning):  # a sync shared tier: its calls go to threads
            cache = AsyncTieredCache([SharedTier(clock)], ttl=600, clock=clock, bus=bus)
    bus.fail() if down else bus.confirm()
    return cache


DOWN = pytest.mark.parametrize("down", [False, True], ids=["bus-up", "bus-down"])


@DOWN
def test_a_threaded_chain_counts_its_shared_first_tier_once_per_read(
    clock: FakeClock, down: bool
) -> None:
    """The reference: a miss, then two hits (get, decorated), of tier 0."""
    bus = ConfirmingBus()
    cache = TieredCache([SharedTier(clock)], ttl=600, clock=clock, bus=bus)
    bus.fail() if down else bus.confirm()
    assert cache.get("k", lambda: "v") == "v"
    assert cache.get("k", lambda: "v") == "v"

    @cache.cached(key="{name}")
    def decorated(name: str) -> Any:
        return "v"

    assert decorated("k") == "v"
    assert first_tier_counts(cache) == (2, 1)
    cache.close()


@pytest.mark.anyio
@DOWN
@pytest.mark.parametrize("kind", ["native", "threaded"])
async def test_an_asyncio_chain_counts_its_shared_first_tier_once_per_read(
    clock: FakeClock, down: bool, kind: str
) -> None:
    cache = async_chain(kind, clock, down)
    assert await cache.get("k", load) == "v"
    assert await cache.get("k", load) == "v"

    @cache.cached(key="{name}")
    async def decorated(name: str) -> Any:
        return "v"

    assert await decorated("k") == "v"
    # Failed before: (0, 0) -- tier 0 read on the slow path, counted by no one.
    assert first_tier_counts(cache) == (2, 1)
    await cache.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["native", "threaded"])
async def test_asyncio_reads_joining_one_load_count_their_shared_first_tiers_misses(
    clock: FakeClock, kind: str
) -> None:
    cache = async_chain(kind, clock)
    go = asyncio.Event()

    async def slow() -> str:
        await go.wait()
        return "v"

    readers = [asyncio.ensure_future(cache.get("k", slow)) for _ in range(2)]
    await async_until(lambda: cache.stats()["singleflight_waits"] == 1, "the second joined")
    go.set()
    assert await asyncio.gather(*readers) == ["v", "v"]
    # Failed before: (0, 0). The threaded chain's lookup counts each read's miss.
    assert first_tier_counts(cache) == (0, 2)
    await cache.aclose()


@pytest.mark.anyio
@DOWN
@pytest.mark.parametrize("kind", ["native", "threaded"])
async def test_an_asyncio_read_served_a_stale_copy_of_its_shared_first_tier_counts_its_miss(
    clock: FakeClock, down: bool, kind: str
) -> None:
    """A copy past its soft expiry, served while it is refreshed: the threaded chain's lookup
    counts tier 0's miss (as memory first does on both faces), then the refresh's load."""
    cache = async_chain(kind, clock, down)
    assert await cache.get("k", load) == "v"
    clock.advance(700)  # past the ttl (600), within the stale copy's grace
    assert await cache.get("k", load) == "v"
    assert cache.stats()["stale_served"] == 1
    # Failed before: (0, 1) -- the stale copy's read counted by no one.
    assert first_tier_counts(cache) == (0, 2)
    await cache.aclose()


@pytest.mark.anyio
async def test_an_asyncio_read_beside_a_refresh_that_joins_it_counts_one_miss(
    clock: FakeClock,
) -> None:
    """A read that finds a background refresh leading its key reads the tiers beside it; with
    nothing there (Redis evicted the copy) it joins the refresh: one read, one miss of tier 0,
    as the threaded chain's lookup counts it."""
    bus = ConfirmingBus()
    shared = HeldAsyncShared(clock)
    cache = AsyncTieredCache([shared], ttl=600, clock=clock, bus=bus)
    bus.confirm()
    started, go = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await go.wait()
        return "w"

    assert await cache.get("k", load) == "v"
    clock.advance(700)
    assert await cache.get("k", slow) == "v"  # stale, refreshed in the background
    await started.wait()
    assert first_tier_counts(cache) == (0, 2)
    shared.inner.delete("k")  # evicted while the refresh runs
    reader = asyncio.ensure_future(cache.get("k", slow))
    await async_until(lambda: cache.stats()["singleflight_waits"] == 1, "the read joined")
    go.set()
    assert await reader == "w"
    # Failed before: (0, 4) -- its read beside the refresh and its join each counted a miss.
    assert first_tier_counts(cache) == (0, 3)
    await cache.aclose()
