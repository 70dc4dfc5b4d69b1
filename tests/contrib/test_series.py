"""The series both exporters publish, from stats() snapshots: what each part of a snapshot
becomes, and the facts tiers report themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiered_cache import TieredCache
from tiered_cache.breaker import guard
from tiered_cache.contrib.series import CATALOGUE, Series, series
from tiered_cache.logs import key_hash
from tiered_cache.memory import MemoryTier
from tiered_cache.settings import BreakerSettings
from tiered_cache.testing import FakeClock
from tiered_cache.testing.recording import RecordingTier

DOCS = Path(__file__).resolve().parents[2] / "docs"


def by_name(items: list[Series]) -> dict[str, Series]:
    return {item.spec.name: item for item in items}


def test_a_memory_tier_reports_its_entries_and_evictions(clock: FakeClock) -> None:
    cache = TieredCache([MemoryTier(max_entries=2, clock=clock)], clock=clock)
    for key in "abc":
        cache.get(key, lambda: 1)
    tier = cache.stats()["tiers"][0]
    assert (tier["entries"], tier["evictions"]) == (2, 1)
    published = by_name(series(cache.stats()))
    assert published["tier_evictions"].samples == [
        ({"namespace": "default", "tier": "memory"}, 1.0)
    ]


def test_breaker_state_bus_hot_keys_and_read_units() -> None:
    snapshot: dict[str, Any] = {
        "namespace": "ns",
        "tiers": [{"name": "redis", "hits": 1, "breaker": "open", "breaker_opened": 2}],
        "bus": "down",
        "bus_publish_breaker": "open",
        "hot_keys": [["tweet:1", 5.0], ["user:secret@example.com", 2.0]],
        "source": {"name": "dynamodb:t", "read_units_saved": 7.5},
    }
    published = by_name(series(snapshot))
    tier = {"namespace": "ns", "tier": "redis"}
    assert published["tier_breaker_state"].samples == [
        ({**tier, "state": "closed"}, 0.0),
        ({**tier, "state": "half-open"}, 0.0),
        ({**tier, "state": "open"}, 1.0),
    ]
    assert published["tier_breaker_opened"].samples == [(tier, 2.0)]
    assert published["bus_connected"].samples == [({"namespace": "ns"}, 0.0)]
    assert published["bus_publish_breaker_state"].samples == [
        ({"namespace": "ns", "state": "closed"}, 0.0),
        ({"namespace": "ns", "state": "half-open"}, 0.0),
        ({"namespace": "ns", "state": "open"}, 1.0),
    ]
    assert published["source_read_units_saved"].samples == [({"namespace": "ns"}, 7.5)]
    # Hot keys are labelled with their hash unless raw keys are asked for.
    hashed = [labels["key"] for labels, _ in published["hot_key_reads_per_second"].samples]
    assert hashed == [key_hash("tweet:1"), key_hash("user:secret@example.com")]
    raw = by_name(series(snapshot, raw_hot_keys=True))["hot_key_reads_per_second"].samples
    assert [(labels["rank"], labels["key"], rate) for labels, rate in raw] == [
        ("1", "tweet:1", 5.0),
        ("2", "user:secret@example.com", 2.0),
    ]


def test_a_chain_without_bus_or_breaker_publishes_no_sample_for_them() -> None:
    published = by_name(series(TieredCache([MemoryTier()]).stats()))
    assert published["bus_connected"].samples == []
    assert published["bus_publish_breaker_state"].samples == []
    assert published["tier_breaker_state"].samples == []
    assert published["source_read_units_saved"].samples == []
    assert published["source_loops_left_open"].samples == []


def test_every_metric_is_documented_and_the_dashboard_uses_only_published_names() -> None:
    page = (DOCS / "metrics.md").read_text()
    for spec in CATALOGUE:
        assert f"| `{spec.name}` | {spec.kind} |" in page, spec.name
    import json
    import re

    dashboard = (DOCS / "grafana" / "tiered-cache.json").read_text()
    json.loads(dashboard)
    used = set(re.findall(r"tiered_cache_([a-z_]+)", dashboard))
    assert used
    names = {spec.name for spec in CATALOGUE}
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert base in names, name


def test_a_tiers_breaker_state_is_published(clock: FakeClock) -> None:
    redis = RecordingTier(MemoryTier(name="redis", clock=clock))
    redis.failure = ConnectionError("down")
    guarded = guard(redis, BreakerSettings(failure_threshold=1, cool_down=30), clock=clock)
    cache = TieredCache([MemoryTier(name="memory", clock=clock), guarded], clock=clock)

    def states() -> dict[str, float]:
        samples = by_name(series(cache.stats()))["tier_breaker_state"].samples
        return {sample["state"]: value for sample, value in samples if sample["tier"] == "redis"}

    assert states() == {"closed": 1.0, "half-open": 0.0, "open": 0.0}
    cache.get("k", lambda: 1)  # the Redis read fails: the circuit opens
    assert states() == {"closed": 0.0, "half-open": 0.0, "open": 1.0}
    clock.advance(31)
    assert states() == {"closed": 0.0, "half-open": 1.0, "open": 0.0}


def test_the_counts_of_timed_loads_left_running_or_refused_are_published() -> None:
    """``abandoned_loads`` and ``loads_refused`` (tiered_cache.timed_slots) were counted but
    not in the events every snapshot lists, so no exporter published them: a source whose
    loads hang was invisible on a dashboard."""
    published = by_name(series(TieredCache([MemoryTier()], namespace="ns").stats()))
    for name in ("abandoned_loads", "loads_refused"):
        assert published[name].samples == [({"namespace": "ns"}, 0.0)], name


def test_a_starting_bus_is_not_published_as_down() -> None:
    """A chain's bus is starting until its first subscription is confirmed: at every deploy,
    in every worker. ``bus_connected`` read 0 then, and the fleet's (the minimum over the
    workers, multiprocess mode's ``livemin``) showed an outage at every deploy. It reads 0
    while down (or closed) only; ``bus_state`` tells a start apart."""
    states = ("starting", "connected", "down", "closed")
    for state, up in zip(states, (1.0, 1.0, 0.0, 0.0), strict=True):
        published = by_name(series({"namespace": "ns", "bus": state}))
        assert published["bus_connected"].samples == [({"namespace": "ns"}, up)], state
        assert published["bus_state"].samples == [
            ({"namespace": "ns", "state": candidate}, 1.0 if candidate == state else 0.0)
            for candidate in states
        ], state
    published = by_name(series(TieredCache([MemoryTier()]).stats()))
    assert published["bus_state"].samples == []  # no bus


def test_reads_with_the_bus_down_or_starting_are_published() -> None:
    """Counted in ``stats()`` but not in the events every snapshot lists, so no exporter
    published them: the memory a fleet bypassed in an outage was not on a dashboard."""
    published = by_name(series(TieredCache([MemoryTier()], namespace="ns").stats()))
    for name in (
        "bus_down_served",
        "bus_down_bypasses",
        "bus_starting_served",
        "bus_starting_bypasses",
    ):
        assert published[name].samples == [({"namespace": "ns"}, 0.0)], name


def test_failed_listening_attempts_are_published() -> None:
    """``bus_errors`` (listening that failed for another reason than the network: a missing
    ACL permission, an endpoint that is not Redis) was counted in ``stats()`` only: a bus
    that never subscribes for want of a permission showed on no dashboard but as down."""
    published = by_name(series(TieredCache([MemoryTier()], namespace="ns").stats()))
    assert published["bus_errors"].samples == [({"namespace": "ns"}, 0.0)]
