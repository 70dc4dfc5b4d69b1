"""Read-through, fill-up, negative caching, batching, writes and degradation of the chain."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from tiered_cache import (
    MISSING,
    CodecError,
    Entry,
    MemoryTier,
    TieredCache,
    TieredCacheError,
    TierUnavailable,
)
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.recording import RecordingTier
from tiered_cache.testing.sources import DictSource

#: No stale serving, no early refresh, no timeouts: these tests pin down plain read-through
#: (source protection has its own tests in test_protection.py).
STRICT = Protection.never_stale()


class CannotEncode(MemoryTier):
    """A memory tier that refuses sets, as a Redis tier does for a value its codec rejects."""

    def set(self, key: str, entry: Any) -> None:
        raise CodecError(f"value of {key!r}: not encodable")


def two_tier_chain(clock: FakeClock, source: DictSource, **kwargs: Any) -> TieredCache:
    l1 = RecordingTier(MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock))
    l2 = RecordingTier(MemoryTier(name="l2", max_entries=1000, ttl=3600, clock=clock))
    return TieredCache([l1, l2], source, clock=clock, protection=STRICT, **kwargs)


def recorders(cache: TieredCache) -> list[RecordingTier]:
    return [tier for tier in cache.tiers if isinstance(tier, RecordingTier)]


def test_miss_everywhere_loads_once_and_fills_every_tier(clock: FakeClock) -> None:
    source = DictSource({"t:1": {"text": "hi"}})
    cache = two_tier_chain(clock, source)
    assert cache.get("t:1") == {"text": "hi"}
    assert cache.get("t:1") == {"text": "hi"}
    assert source.loads == ["t:1"]
    l1, l2 = recorders(cache)
    assert l1.calls["set"] == 1
    assert l2.calls["set"] == 1
    stats = cache.stats()
    assert stats["tiers"][0]["hits"] == 1
    assert stats["tiers"][0]["misses"] == 1
    assert stats["loads"] == 1


def test_hit_in_second_tier_fills_only_the_first(clock: FakeClock) -> None:
    source = DictSource({"t:1": "v"})
    cache = two_tier_chain(clock, source)
    cache.get("t:1")
    clock.advance(61)  # past l1's ttl, within l2's
    l1, l2 = recorders(cache)
    sets_before = (l1.calls["set"], l2.calls["set"])
    assert cache.get("t:1") == "v"
    assert source.loads == ["t:1"]
    assert (l1.calls["set"], l2.calls["set"]) == (sets_before[0] + 1, sets_before[1])
    assert cache.stats()["tiers"][1]["hits"] == 1


def test_value_fresh_for_cache_ttl_then_reloaded(clock: FakeClock) -> None:
    source = DictSource({"k": 1})
    cache = two_tier_chain(clock, source, ttl=30)
    cache.get("k")
    clock.advance(29)
    cache.get("k")
    assert len(source.loads) == 1
    source.items["k"] = 2
    clock.advance(2)
    assert cache.get("k") == 2
    assert len(source.loads) == 2


def test_per_call_ttl_overrides_the_cache_ttl(clock: FakeClock) -> None:
    cache = two_tier_chain(clock, DictSource(), ttl=1000)
    calls: list[int] = []
    cache.get("k", lambda: calls.append(1) or "v", ttl="5s")
    clock.advance(6)
    cache.get("k", lambda: calls.append(1) or "v", ttl="5s")
    assert len(calls) == 2


def test_not_found_is_cached_as_none_for_negative_ttl(clock: FakeClock) -> None:
    source = DictSource()
    cache = two_tier_chain(clock, source, negative_ttl=10)
    assert cache.get("absent") is None
    assert cache.get("absent") is None
    assert source.loads == ["absent"]
    clock.advance(11)
    assert cache.get("absent") is None
    assert source.loads == ["absent", "absent"]


def test_loader_returning_none_is_negatively_cached(clock: FakeClock) -> None:
    cache = two_tier_chain(clock, DictSource(), negative_ttl=10)
    calls: list[str] = []

    def loader() -> None:
        calls.append("x")

    assert cache.get("k", loader) is None
    assert cache.get("k", loader) is None
    assert calls == ["x"]


def test_get_many_one_call_per_tier_and_one_batch(clock: FakeClock) -> None:
    items = {f"k{i}": i for i in range(10)}
    source = DictSource(items)
    cache = two_tier_chain(clock, source)
    l1, l2 = recorders(cache)
    cache.get("k0")  # k0 now in both tiers
    l2.inner.set("k1", l1.inner.get("k0").with_value(1))  # type: ignore[union-attr]
    result = cache.get_many(["k0", "k1", "k2", "k3", "k2", "missing"])
    assert result == {"k0": 0, "k1": 1, "k2": 2, "k3": 3, "missing": None}
    assert l1.calls["get_many"] == 1
    assert l2.calls["get_many"] == 1
    assert source.batches == [["k2", "k3", "missing"]]
    # what was found in l2 went up into l1, what was loaded into both
    assert sorted(l1.inner.get_many(["k1", "k2", "k3", "missing"])) == ["k1", "k2", "k3", "missing"]
    assert cache.get_many(["k2", "missing"]) == {"k2": 2, "missing": None}
    assert len(source.batches) == 1


def test_get_many_with_a_batch_loader(clock: FakeClock) -> None:
    cache = two_tier_chain(clock, None)  # type: ignore[arg-type]
    batches: list[list[str]] = []

    def load(keys: Sequence[str]) -> dict[str, str]:
        batches.append(list(keys))
        return {key: key.upper() for key in keys if key != "b"}

    assert cache.get_many(["a", "b"], load) == {"a": "A", "b": None}
    assert cache.get_many(["a", "b", "c"], load) == {"a": "A", "b": None, "c": "C"}
    assert batches == [["a", "b"], ["c"]]


def test_no_source_and_no_loader_is_a_clear_error(clock: FakeClock) -> None:
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock)
    with pytest.raises(TieredCacheError, match="no source and no loader"):
        cache.get("k")


def test_loader_failure_reaches_the_caller_and_nothing_is_cached(clock: FakeClock) -> None:
    cache = two_tier_chain(clock, DictSource())

    def broken() -> str:
        raise RuntimeError("source down")

    with pytest.raises(RuntimeError, match="source down"):
        cache.get("k", broken)
    assert cache.get("k", lambda: "ok") == "ok"
    assert cache.stats()["load_failures"] == 1


def test_failing_tier_is_skipped_with_a_warning_and_a_metric(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = DictSource({"k": "v"})
    cache = two_tier_chain(clock, source)
    l1, l2 = recorders(cache)
    l2.failure = ConnectionError("redis went away")
    with caplog.at_level(logging.WARNING, logger="tiered_cache.chain"):
        assert cache.get("k") == "v"
        assert cache.get("k") == "v"  # from l1
    assert source.loads == ["k"]
    stats = cache.stats()
    assert stats["tiers"][1]["errors"] >= 2  # the failed get and the failed fill
    assert any("'l2' failed" in record.getMessage() for record in caplog.records)
    l1.failure = TierUnavailable("circuit open")
    assert cache.get("k") == "v"
    assert cache.stats()["tiers"][0]["skips"] >= 1


def test_every_tier_down_still_answers_from_the_source(clock: FakeClock) -> None:
    source = DictSource({"k": "v"})
    cache = two_tier_chain(clock, source)
    for tier in recorders(cache):
        tier.failure = TimeoutError("timed out")
    assert cache.get("k") == "v"
    assert cache.get_many(["k"]) == {"k": "v"}
    cache.set("k", "w")
    cache.invalidate("k")
    assert source.items["k"] == "w"


def test_codec_error_is_raised_and_no_tier_keeps_the_value(clock: FakeClock) -> None:
    l1 = MemoryTier(name="l1", clock=clock)
    cache = TieredCache([l1, CannotEncode(name="redis-like", clock=clock)], clock=clock)
    with pytest.raises(CodecError):
        cache.set("k", object())
    assert l1.get("k").__bool__() is False
    with pytest.raises(CodecError):
        cache.get("k2", object)
    assert "k2" not in l1


def test_set_writes_through_source_first_then_tiers(clock: FakeClock) -> None:
    source = DictSource({"k": "old"})
    cache = two_tier_chain(clock, source)
    cache.get("k")
    cache.set("k", "new")
    assert source.items["k"] == "new"
    assert cache.get("k") == "new"
    assert source.loads == ["k"]


def test_failed_source_write_changes_no_tier(clock: FakeClock) -> None:
    source = DictSource({"k": "old"})
    cache = two_tier_chain(clock, source)
    cache.get("k")

    def refuse(key: str, value: Any) -> None:
        raise RuntimeError("write refused")

    source.store = refuse  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        cache.set("k", "new")
    assert cache.get("k") == "old"


def test_invalidate_removes_from_every_tier(clock: FakeClock) -> None:
    source = DictSource({"k": 1})
    cache = two_tier_chain(clock, source)
    cache.get("k")
    source.items["k"] = 2
    cache.invalidate("k")
    assert cache.get("k") == 2
    for tier in recorders(cache):
        assert tier.calls["delete_many"] == 1


def test_invalidation_during_a_load_keeps_the_loaded_value_out_of_the_tiers(
    clock: FakeClock,
) -> None:
    source = DictSource({"k": "old"})
    cache = two_tier_chain(clock, source)

    def slow_read_then_invalidated() -> str:
        value = source.items["k"]
        source.items["k"] = "new"  # a writer changes the source ...
        cache.invalidate("k")  # ... and invalidates while this load is in flight
        return value

    assert cache.get("k", slow_read_then_invalidated) == "old"
    assert cache.get("k") == "new"


def test_stats_are_json_serializable(clock: FakeClock) -> None:
    import json

    cache = two_tier_chain(clock, DictSource({"k": 1}))
    cache.get("k")
    snapshot = json.loads(json.dumps(cache.stats()))
    assert [tier["name"] for tier in snapshot["tiers"]] == ["l1", "l2"]
    assert snapshot["source_reads_saved"] == 0


def test_close_closes_tiers_and_source_once(clock: FakeClock) -> None:
    closed: list[str] = []

    class Closing(MemoryTier):
        def close(self) -> None:
            closed.append(self.name)

    with TieredCache([Closing(name="a"), Closing(name="b")], clock=clock):
        pass
    assert closed == ["a", "b"]


def test_hot_keys_come_from_the_memory_tier_and_feed_stats(clock: FakeClock) -> None:
    cache = TieredCache.from_config(
        tiers=[{"kind": "memory", "max_entries": 100, "admission": "hot-keys"}], clock=clock
    )
    for i in range(300):
        cache.get("tweet:viral", lambda: "v")
        cache.get(f"tweet:{i}", lambda: "cold")  # one-off keys: misses the sketch counts
        clock.advance(0.01)
    (hottest, rate), *_ = cache.hot_keys(3)
    assert hottest == "tweet:viral"
    assert rate > 0
    assert cache.stats()["hot_keys"][0][0] == "tweet:viral"
    plain = TieredCache.from_config(tiers=[{"kind": "memory", "admission": "always"}])
    assert plain.hot_keys() == []


def test_hot_keys_count_the_hits_since_the_last_miss(clock: FakeClock) -> None:
    # A key everyone reads is a memory hit every time: its hits wait in the tier's read
    # buffer until the next miss or write replays them into the policy. hot_keys() (and
    # stats(), and the exporters' hot_key_reads_per_second) must see them without waiting
    # for that miss: a service whose reads all hit showed no hot key at all.
    cache = TieredCache.from_config(
        tiers=[{"kind": "memory", "max_entries": 100, "admission": "hot-keys"}], clock=clock
    )
    cache.get("tweet:viral", lambda: "v")  # the one miss
    for _ in range(100):
        assert cache.get("tweet:viral") == "v"
        clock.advance(0.01)
    assert [key for key, _ in cache.hot_keys(3)] == ["tweet:viral"]
    assert [key for key, _ in cache.stats()["hot_keys"]] == ["tweet:viral"]


def test_a_miss_through_the_chain_is_one_read_for_the_hot_key_sketch(clock: FakeClock) -> None:
    # The chain looks at tier 0 again inside the key's flight; that look must not count as a
    # second read, or every miss would weigh twice what a hit weighs in the sketch.
    policy = TinyLfuPolicy(100, clock=clock)
    memory = MemoryTier(policy=policy, clock=clock)
    cache = TieredCache([memory], source=DictSource({"tweet:1": "v", "tweet:2": "w"}), clock=clock)
    assert cache.get("tweet:1") == "v"
    assert policy.sketch.frequency("tweet:1") == 1
    assert cache.get_many(["tweet:2"]) == {"tweet:2": "w"}
    assert policy.sketch.frequency("tweet:2") == 1


def test_an_l1_hit_reads_the_clock_once(clock: FakeClock) -> None:
    reads: list[float] = []

    def counting_clock() -> float:
        reads.append(clock())
        return reads[-1]

    memory = MemoryTier(clock=counting_clock)
    cache = TieredCache([memory], source=DictSource({"k": "v"}), clock=counting_clock)
    assert cache.get("k") == "v"  # a miss and a load: any number of readings
    reads.clear()
    assert cache.get("k") == "v"
    assert len(reads) == 1  # the chain reads it and hands it to the memory tier


def test_a_chain_shows_its_namespace_tiers_and_source(clock: FakeClock) -> None:
    tiers = [MemoryTier(name="l1", clock=clock), MemoryTier(name="l2", clock=clock)]
    cache = TieredCache(tiers, DictSource(), namespace="tweets", clock=clock)
    assert repr(cache) == "<TieredCache 'tweets': l1 -> l2 -> dict>"
    assert repr(TieredCache([], clock=clock)) == "<TieredCache 'default': no tiers -> loader>"


def test_stats_name_the_namespace_and_the_source_and_say_there_is_no_bus(
    clock: FakeClock,
) -> None:
    cache = TieredCache(
        [MemoryTier(clock=clock)], DictSource({"k": "v"}), namespace="tweets", clock=clock
    )
    stats = cache.stats()
    assert (stats["namespace"], stats["source"]["name"], stats["bus"]) == ("tweets", "dict", None)


def test_hot_keys_gives_the_ten_hottest_by_default(clock: FakeClock) -> None:
    cache = TieredCache.from_config(
        tiers=[{"kind": "memory", "max_entries": 100, "admission": "hot-keys"}], clock=clock
    )
    for round_ in range(300):
        for i in range(12):
            cache.get(f"tweet:{i}", lambda: "v")
        cache.get(f"cold:{round_}", lambda: "cold")
        clock.advance(0.01)
    assert len(cache.hot_keys(12)) == 12
    assert len(cache.hot_keys()) == 10


def test_lookup_many_leaves_out_an_entry_that_is_only_stale(clock: FakeClock) -> None:
    cache = TieredCache(
        [MemoryTier(ttl=1000, clock=clock)],
        DictSource({"k": "v"}),
        ttl=10,
        clock=clock,
        protection=Protection(max_stale=100.0, early_refresh_beta=0.0, soft_timeout=None),
    )
    cache.get("k")
    assert set(cache.lookup_many(["k"])) == {"k"}
    clock.advance(11)  # past the soft expiry: servable stale by get, not fresh
    assert cache.lookup_many(["k"]) == {}


class FilledSinceTheLookup(MemoryTier):
    """A memory tier whose counted lookup of "k" misses while its quiet look finds it: another
    flight filled "k" between a read's L1 miss and the start of its own flight."""

    def get_at(self, key: str, now: float) -> Any:
        return MISSING if key == "k" else super().get_at(key, now)


def test_a_memory_only_chain_serves_what_another_flight_filled_since_the_l1_miss(
    clock: FakeClock,
) -> None:
    memory = FilledSinceTheLookup(clock=clock)
    cache = TieredCache([memory], clock=clock, ttl=60)
    cache.set("k", "filled")
    loads: list[str] = []
    assert cache.get("k", lambda: loads.append("k") or "loaded") == "filled"
    assert loads == []
    assert cache.stats()["loads"] == 0


def test_a_memory_only_chain_serves_a_stale_entry_and_refreshes_it(clock: FakeClock) -> None:
    refreshes: list[Any] = []
    cache = TieredCache(
        [MemoryTier(clock=clock)],
        clock=clock,
        ttl=10,
        background=refreshes.append,
        protection=Protection(max_stale=100, early_refresh_beta=0),
    )
    cache.set("k", "old")
    clock.advance(20)  # past its freshness, within max_stale
    assert cache.get("k", lambda: "new") == "old"
    assert cache.stats()["stale_served"] == 1
    assert len(refreshes) == 1
    refreshes[0]()
    assert cache.get("k", lambda: "newer") == "new"


def test_lookup_many_copies_a_slower_tiers_entry_up_after_invalidations(clock: FakeClock) -> None:
    """lookup_many fills the faster tiers with what a slower one holds, judged by the fence
    from the read's start, as get_many's reads are: an invalidation of another key before it
    refuses nothing."""
    l1, l2 = MemoryTier(clock=clock), MemoryTier(name="l2", clock=clock)
    cache = TieredCache([l1, l2], clock=clock, ttl=600)
    cache.set("k", "v")
    l1.clear()
    cache.invalidate("other")
    found = cache.lookup_many(["k"])
    assert found["k"].value == "v"
    entry = l1.get("k")
    assert isinstance(entry, Entry) and entry.value == "v"
    cache.close()
