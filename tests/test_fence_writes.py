"""How a write's fill runs (:meth:`Fence.write_steps`): the fence knows from how it was built
whether its tiers' calls are plain calls (the threaded chain's accessors, the fence's own) or
coroutines (the asyncio chain's, given as ``fill_targets``). A one-key write without a lease
on the threaded chain is filled in plain calls (no step to drive: :meth:`Fence.fill_one`);
every other write goes as steps, which the asyncio chain awaits."""

from __future__ import annotations

import pytest

from tiered_cache import MemoryTier
from tiered_cache.accessor import TierAccessor
from tiered_cache.async_accessor import AsyncTierAccessor
from tiered_cache.fence import Fence
from tiered_cache.metrics import CacheMetrics
from tiered_cache.testing import FakeClock
from tiered_cache.tier import MISSING, Entry


def two_tiers(clock: FakeClock) -> tuple[list[MemoryTier], CacheMetrics]:
    tiers = [MemoryTier(name="l1", clock=clock), MemoryTier(name="l2", clock=clock)]
    return tiers, CacheMetrics([tier.name for tier in tiers])


def entry(clock: FakeClock, value: str) -> Entry:
    now = clock()
    return Entry(value, now, now + 60)


def test_the_threaded_fence_fills_a_one_key_write_in_plain_calls(clock: FakeClock) -> None:
    tiers, metrics = two_tiers(clock)
    fence = Fence([TierAccessor(i, tier, metrics, clock) for i, tier in enumerate(tiers)], metrics)
    assert fence.plain
    steps = fence.write_steps(fence.mark(), ["k"], {"k": entry(clock, "new")})
    with pytest.raises(StopIteration) as done:
        next(steps)  # no step yielded: the tiers were written by plain calls
    assert done.value.value == {"k"}
    assert [tier.get("k").value for tier in tiers] == ["new", "new"]  # type: ignore[union-attr]


def test_the_threaded_fence_fills_several_keys_as_steps(clock: FakeClock) -> None:
    tiers, metrics = two_tiers(clock)
    accessors = [TierAccessor(i, tier, metrics, clock) for i, tier in enumerate(tiers)]
    fence = Fence(accessors, metrics)
    entries = {"k": entry(clock, "K"), "j": entry(clock, "J")}
    steps = fence.write_steps(fence.mark(), ["k", "j"], entries)
    call, args = next(steps)
    assert call == accessors[1].set_many and args == (entries,)  # slowest first


def test_the_asyncio_fence_fills_a_one_key_write_as_steps(clock: FakeClock) -> None:
    tiers, metrics = two_tiers(clock)
    targets = [AsyncTierAccessor(i, tier, metrics, clock) for i, tier in enumerate(tiers)]
    fence = Fence([target.sync for target in targets], metrics, fill_targets=targets)
    assert not fence.plain
    steps = fence.write_steps(fence.mark(), ["k"], {"k": entry(clock, "new")})
    call, _ = next(steps)  # a step the asyncio chain awaits: its tiers' writes are coroutines
    assert call == targets[1].set_many
    steps.close()
    assert tiers[1].get("k") is MISSING
