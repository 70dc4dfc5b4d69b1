"""How the chain holds a tier (tiered_cache/accessor.py), as a caller of the chain sees it."""

from __future__ import annotations

import logging

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.recording import RecordingTier
from tiered_cache.testing.sources import DictSource


def test_a_failing_tier_is_logged_at_most_once_per_ten_seconds_of_the_chains_clock(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    l2 = RecordingTier(MemoryTier(name="l2", clock=clock))
    cache = TieredCache(
        [l2], DictSource({"k": "v"}), clock=clock, protection=Protection.never_stale()
    )
    l2.failure = ConnectionError("redis went away")
    logged: list[int] = []
    with caplog.at_level(logging.WARNING, logger="tiered_cache.tier.l2"):
        for step in (0.0, 5.0, 5.0, 9.5, 0.5, 9.9):  # reads at 0, 5, 10, 19.5, 20, 29.9 s
            clock.advance(step)
            before = len(caplog.records)
            assert cache.get("k") == "v"  # three failures: the L1 look, the second look, the fill
            logged.append(len(caplog.records) - before)
    assert logged == [1, 0, 1, 0, 1, 0]
    assert "tier 'l2' failed (ConnectionError: redis went away)" in caplog.records[0].getMessage()
    assert cache.stats()["tiers"][0]["errors"] == 18


def test_get_many_counts_a_hit_or_a_miss_per_key(clock: FakeClock) -> None:
    source = DictSource({"a": 1, "b": 2, "c": 3})
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), MemoryTier(name="l2", clock=clock)],
        source,
        clock=clock,
        protection=Protection.never_stale(),
    )
    cache.get_many(["a", "b", "c"])
    cache.get_many(["a", "b", "c"])
    tiers = cache.stats()["tiers"]
    assert [(tier["hits"], tier["misses"]) for tier in tiers] == [(3, 3), (0, 3)]


def test_get_many_judges_freshness_and_staleness_up_to_the_expiry_exclusive(
    clock: FakeClock,
) -> None:
    source = DictSource({"k": "v1"})
    cache = TieredCache(
        [MemoryTier(name="l1", ttl=1000, clock=clock)],
        source,
        ttl=10,
        clock=clock,
        protection=Protection(max_stale=5.0, early_refresh_beta=0.0, soft_timeout=None),
        background=lambda task: None,  # refreshes are not run: the stale value stays
    )
    cache.get_many(["k"])
    source.items["k"] = "v2"
    clock.advance(10)  # exactly at the soft expiry: stale, served while a refresh is due
    assert cache.get_many(["k"]) == {"k": "v1"}
    assert cache.stats()["stale_served"] == 1
    clock.advance(5)  # exactly at the hard expiry: no longer servable, loaded again
    assert cache.get_many(["k"]) == {"k": "v2"}
    assert source.batches == [["k"], ["k"]]
