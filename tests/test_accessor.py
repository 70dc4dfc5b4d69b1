"""How the chain holds a tier (tiered_cache/accessor.py), as a caller of the chain sees it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.breaker import CircuitBreakerTier
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.logged import ours
from tiered_cache.testing.recording import RecordingTier
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MISSING, Entry, MissingType, TierBase


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
            before = len(ours(caplog.records))
            assert cache.get("k") == "v"  # three failures: the L1 look, the second look, the fill
            logged.append(len(ours(caplog.records)) - before)
    assert logged == [1, 0, 1, 0, 1, 0]
    (first, *_) = ours(caplog.records)
    assert "tier 'l2' failed (ConnectionError: redis went away)" in first.getMessage()
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


def _failing_l2(clock: FakeClock) -> tuple[TieredCache, RecordingTier]:
    l2 = RecordingTier(MemoryTier(name="l2", clock=clock))
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), l2],
        DictSource({"k": "v"}),
        clock=clock,
        protection=Protection.never_stale(),
    )
    l2.failure = ConnectionError("redis went away")
    return cache, l2


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda cache: cache.get_many(["k"]), id="get_many"),
        pytest.param(lambda cache: cache.invalidate("k"), id="invalidate"),
        pytest.param(lambda cache: cache.invalidate_prefix("k"), id="invalidate_prefix"),
        pytest.param(lambda cache: cache.clear(), id="clear"),
    ],
)
def test_a_tier_failure_is_logged_with_what_failed_on_every_path(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, operation: Any
) -> None:
    cache, _ = _failing_l2(clock)
    with caplog.at_level(logging.WARNING, logger="tiered_cache.tier.l2"):
        operation(cache)
    (first, *_) = ours(caplog.records)
    assert "tier 'l2' failed (ConnectionError: redis went away)" in first.getMessage()
    assert cache.stats()["tiers"][1]["errors"] >= 1


def test_a_tier_whose_breaker_is_open_counts_skips_not_errors(clock: FakeClock) -> None:
    inner = RecordingTier(MemoryTier(name="l2", clock=clock))
    l2 = CircuitBreakerTier(inner, failure_threshold=1, cool_down=60.0, clock=clock)
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), l2],
        DictSource({"k": "v", "j": "w"}),
        clock=clock,
        protection=Protection.never_stale(),
    )
    inner.failure = ConnectionError("redis went away")
    cache.get_many(["k"])  # the first failure opens the breaker
    before = cache.stats()["tiers"][1]
    assert (before["breaker"], before["breaker_opened"]) == ("open", 1)
    cache.get_many(["j"])
    cache.invalidate("k")
    after = cache.stats()["tiers"][1]
    assert after["errors"] == before["errors"]
    assert after["skips"] > before["skips"]


@pytest.mark.parametrize("guarded", [False, True], ids=["bare", "behind a breaker"])
def test_a_failed_call_counts_an_error_with_or_without_a_breaker(
    clock: FakeClock, guarded: bool
) -> None:
    """A call made that failed is an error; a call the open breaker turned away is a skip.
    Behind a breaker (every tier from_config builds but memory), each failure reached the
    chain as the breaker's TierUnavailable and counted as a skip, "a call not made": the
    tier's errors stayed 0 while Redis refused every connection."""
    inner = RecordingTier(MemoryTier(name="l2", clock=clock))
    l2: Any = inner
    if guarded:
        l2 = CircuitBreakerTier(inner, failure_threshold=2, cool_down=60.0, clock=clock)
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), l2],
        DictSource({"a": 1, "b": 2, "c": 3}),
        clock=clock,
        protection=Protection.never_stale(),
    )
    inner.failure = ConnectionError("redis went away")
    cache.get("a")  # its read and its fill fail: the breaker opens at the second failure
    cache.get("b")  # turned away twice (or fails twice, bare)
    stats = cache.stats()["tiers"][1]
    assert (stats["errors"], stats["skips"]) == ((2, 2) if guarded else (4, 0))


class _HotKeysFail(TierBase):
    """A tier that tracks hot keys, and fails to report them."""

    name = "hot"

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def get(self, key: str) -> Entry | MissingType:
        return self.entries.get(key, MISSING)

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return {key: self.entries[key] for key in keys if key in self.entries}

    def set(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self.entries.update(entries)

    def delete(self, key: str) -> None:
        self.entries.pop(key, None)

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()

    def close(self) -> None:
        pass

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        raise ConnectionError("no report today")


def test_a_tier_failing_to_report_hot_keys_is_logged_and_reports_none(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TieredCache([_HotKeysFail()], DictSource({"k": "v"}), clock=clock)
    with caplog.at_level(logging.WARNING, logger="tiered_cache.tier.hot"):
        assert cache.hot_keys() == []
    (first, *_) = ours(caplog.records)
    assert "tier 'hot' failed (ConnectionError: no report today)" in first.getMessage()


def test_a_hit_is_counted_at_the_tier_that_had_it(clock: FakeClock) -> None:
    l3 = MemoryTier(name="l3", clock=clock)
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), MemoryTier(name="l2", clock=clock), l3],
        DictSource({}),
        clock=clock,
        ttl=60,
        protection=Protection.never_stale(),
    )
    l3.set("k", Entry("deep", clock() + 60))
    assert cache.get("k") == "deep"
    assert [tier["hits"] for tier in cache.stats()["tiers"]] == [0, 0, 1]


class _KeepingTier(_HotKeysFail):
    """A third-party tier that keeps what it is given until told otherwise (no expiry of its
    own): the chain alone judges freshness."""

    name = "keeping"

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        return []


def test_an_entry_at_its_hard_expiry_is_not_served_stale_by_get_many(clock: FakeClock) -> None:
    source = DictSource({"k": "v1"})
    cache = TieredCache(
        [_KeepingTier()],
        source,
        ttl=10,
        clock=clock,
        protection=Protection(max_stale=5.0, early_refresh_beta=0.0, soft_timeout=None),
        background=lambda task: None,
    )
    cache.get_many(["k"])
    source.items["k"] = "v2"
    clock.advance(15)  # exactly at the hard expiry, and the tier still holds the entry
    assert cache.get_many(["k"]) == {"k": "v2"}
    assert cache.stats()["stale_served"] == 0
