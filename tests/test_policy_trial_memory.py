"""The fill's trial keeps what it must only: a cache that never fills (its keys deleted or
expiring as fast as new ones come) runs the trial for its whole life."""

from __future__ import annotations

import tracemalloc

from tiered_cache import MemoryTier
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.testing import FakeClock
from tiered_cache.tier import Entry


def read_and_delete(tier: MemoryTier, clock: FakeClock, first: int, count: int) -> None:
    for number in range(first, first + count):
        key = f"request:{number}"
        clock.advance(0.001)
        if not tier.get(key):
            tier.set(key, Entry(value=number, loaded_at=clock()))
        tier.delete(key)


def test_a_cache_that_never_fills_keeps_no_trace_of_every_key_it_read() -> None:
    # A 500-entry tier whose keys are each read once and then invalidated (a request's id, a
    # session ended): it never fills, so the fill's trial never ends; the order of last reads
    # it keeps for the switch into LRU mode kept every key read until the warm-up's end
    # (10,500 keys here, about 1.7 MB, for the life of the tier) where 500 hold the order of
    # every key the tier can hold.
    clock = FakeClock()
    tier = MemoryTier(policy=TinyLfuPolicy(500, clock=clock), clock=clock)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        read_and_delete(tier, clock, 0, 30_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert kept < 400_000, kept
