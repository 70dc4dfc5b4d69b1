"""The in-process tier: bounds by count and bytes, its own TTL with jitter, LRU order."""

from __future__ import annotations

import random

import pytest

from tiered_cache import MISSING, Entry, MemoryTier, TieredCache
from tiered_cache.memory import LruPolicy
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.slot import Slot
from tiered_cache.testing import FakeClock
from tiered_cache.weighing import deep_size


def entry(clock: FakeClock, value: object, lifetime: float = 1000.0) -> Entry:
    return Entry(value, clock(), clock() + lifetime, clock() + lifetime)


def lru_tier(max_entries: int, clock: FakeClock) -> MemoryTier:
    """The order tests below are about the plain LRU policy (``admission = "always"``); the
    tier's default is the adaptive hot-key policy (test_the_default_policy_is_the_adaptive_one)."""
    return MemoryTier(policy=LruPolicy(max_entries), clock=clock)


def test_the_default_policy_is_the_adaptive_one_from_config_builds() -> None:
    # A user building the tier in code gets the same policy as from a config file.
    built = MemoryTier(max_entries=500)
    configured = TieredCache.from_config(tiers=[{"kind": "memory", "max_entries": 500}])
    for tier in (built, configured.tiers[0]):
        assert isinstance(tier, MemoryTier)
        policy = tier.policy
        assert isinstance(policy, TinyLfuPolicy)
        assert (policy.max_entries, policy._adaptive) == (500, True)


def test_bounded_by_entry_count_least_recently_used_goes_first(clock: FakeClock) -> None:
    tier = lru_tier(3, clock)
    for key in "abc":
        tier.set(key, entry(clock, key))
    tier.get("a")  # a is now the most recently used
    tier.set("d", entry(clock, "d"))
    assert sorted(tier.get_many(list("abcd"))) == ["a", "c", "d"]
    assert len(tier) == 3
    assert tier.policy.evictions == 1


def test_bounded_by_bytes(clock: FakeClock) -> None:
    tier = MemoryTier(max_entries=1000, max_bytes=2_000, clock=clock)
    for i in range(50):
        tier.set(f"k{i}", entry(clock, "x" * 100))
    assert tier.policy.weight <= 2_000
    assert 0 < len(tier) < 50
    tier.set("huge", entry(clock, "x" * 5_000))  # bigger than the whole bound: refused
    assert tier.get("huge") is MISSING


def test_tier_ttl_caps_the_entry_lifetime(clock: FakeClock) -> None:
    tier = MemoryTier(ttl=60, clock=clock)
    tier.set("k", entry(clock, "v", lifetime=3600))
    clock.advance(59)
    assert tier.get("k") is not MISSING
    clock.advance(2)
    assert tier.get("k") is MISSING
    assert len(tier) == 0  # an expired entry found on read is dropped


def test_ttl_jitter_spreads_expiry_within_the_fraction(clock: FakeClock) -> None:
    tier = MemoryTier(ttl=100, ttl_jitter=0.2, clock=clock, rng=random.Random(7))
    for i in range(200):
        tier.set(f"k{i}", entry(clock, i, lifetime=10_000))
    clock.advance(79.9)
    assert len(tier.get_many([f"k{i}" for i in range(200)])) == 200  # none before 80% of ttl
    clock.advance(10)
    alive = len(tier.get_many([f"k{i}" for i in range(200)]))
    assert 0 < alive < 200  # some expired between 80% and 90%: expiry is spread
    clock.advance(10.2)
    assert tier.get_many([f"k{i}" for i in range(200)]) == {}


def test_buffered_hits_leave_the_recency_order_of_their_last_reads(clock: FakeClock) -> None:
    # Hits are replayed at the next write as one touch per key, in the order of each key's
    # last hit: the same order as touching at every hit.
    tier = lru_tier(3, clock)
    for key in "abc":
        tier.set(key, entry(clock, key))
    for key in "bcab":
        assert tier.get(key)
    tier.set("d", entry(clock, "d"))  # last hits: c, a, b, so c is the least recent
    assert [key in tier for key in "abcd"] == [True, True, False, True]
    tier.set("e", entry(clock, "e"))  # then a
    assert [key in tier for key in "abcde"] == [False, True, False, True, True]


def test_contains_is_not_an_access(clock: FakeClock) -> None:
    tier = lru_tier(2, clock)
    tier.set("a", entry(clock, 1))
    tier.set("b", entry(clock, 2))
    assert "a" in tier
    tier.set("c", entry(clock, 3))  # a is still least recently used
    assert "a" not in tier
    assert 5 not in tier


def test_peek_is_not_an_access_and_hides_expired_entries(clock: FakeClock) -> None:
    tier = lru_tier(2, clock)
    tier.set("a", entry(clock, 1))
    tier.set("b", entry(clock, 2, lifetime=5.0))
    assert tier.peek("a") == entry(clock, 1)
    tier.set("c", entry(clock, 3))  # a is still least recently used: the peek did not count
    assert tier.peek("a") is MISSING
    clock.advance(6.0)
    assert tier.peek("b") is MISSING
    assert tier.peek("never") is MISSING


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryTier(max_entries=0)
    with pytest.raises(ValueError, match="ttl_jitter"):
        MemoryTier(ttl_jitter=1.0)


def test_lru_policy_put_replaces_and_keeps_weight_exact() -> None:
    policy = LruPolicy(max_entries=10, max_weight=100)
    policy.put("k", Slot(Entry("v", 0.0), 10.0, 30))
    slot = Slot(Entry("v", 0.0), 10.0, 40)
    policy.put("k", slot)
    assert policy.weight == 40
    assert policy.pop("k") is slot
    assert policy.weight == 0


def test_lru_policy_clear_forgets_the_order_so_a_refill_weighs_right() -> None:
    # A clear that kept the recency order would let the refill push out keys that are no
    # longer there, subtracting their weights from the new ones.
    policy = LruPolicy(max_entries=2, max_weight=100)
    entry = Entry("v", 0.0)
    policy.put("a", Slot(entry, 10.0, 10))
    policy.put("b", Slot(entry, 10.0, 20))
    policy.clear()
    assert (len(policy), policy.weight) == (0, 0)
    policy.put("c", Slot(entry, 10.0, 30))
    policy.put("d", Slot(entry, 10.0, 40))
    assert (len(policy), policy.weight, policy.evictions) == (2, 70, 0)
    policy.put("e", Slot(entry, 10.0, 50))  # evicts "c", the least recently used of the refill
    assert sorted(policy.keys()) == ["d", "e"]
    assert (policy.weight, policy.evictions) == (90, 1)


def test_deep_size_grows_with_content() -> None:
    assert deep_size({"a": "x" * 1000}) > deep_size({"a": "x"})
    assert deep_size([1, 2, 3]) > deep_size([])


def test_lru_policy_matches_a_true_lru_hit_for_hit() -> None:
    """Regression: reading the order's values (for the byte count) used to reorder it."""
    import cachetools

    from tiered_cache.workloads import zipf_keys

    keys = list(zipf_keys(2000, 1.0, 20_000, seed=1))
    policy = LruPolicy(max_entries=50, max_weight=10**9)
    reference: cachetools.LRUCache[str, int] = cachetools.LRUCache(maxsize=50)
    slot = Slot(Entry("v", 0.0), float("inf"), 1)
    ours = theirs = 0
    for key in keys:
        if policy.get(key) is not None:
            ours += 1
        else:
            policy.put(key, slot)
        if key in reference:
            reference[key]
            theirs += 1
        else:
            reference[key] = 1
    assert ours == theirs
    assert policy.weight == len(policy) == 50
