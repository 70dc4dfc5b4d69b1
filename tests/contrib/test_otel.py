"""The OpenTelemetry instruments, collected by the SDK's in-memory reader over a chain of memory
and a real Redis."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tiered_cache import TieredCache
from tiered_cache.contrib.otel import instrument
from tiered_cache.contrib.series import CATALOGUE

Points = dict[tuple[str, frozenset[tuple[str, str]]], float]


def collect(reader: InMemoryMetricReader) -> Points:
    data = reader.get_metrics_data()
    assert data is not None
    points: Points = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    labels = frozenset((k, str(v)) for k, v in (point.attributes or {}).items())
                    points[(metric.name, labels)] = point.value  # type: ignore[union-attr]
    return points


@pytest.fixture
def reader(cache: TieredCache) -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    instrument(cache, meter_provider=MeterProvider(metric_readers=[reader]))
    return reader


def test_a_collection_finds_hits_misses_and_loads_of_a_known_sequence(
    reader: InMemoryMetricReader, run_known_reads: Callable[[], None], namespace: str
) -> None:
    run_known_reads()
    points = collect(reader)

    def tier(name: str, tier_name: str) -> float:
        labels = frozenset({("namespace", namespace), ("tier", tier_name)})
        return points[(f"tiered_cache.{name}", labels)]

    def chain(name: str, **labels: str) -> float:
        return points[
            (f"tiered_cache.{name}", frozenset({"namespace": namespace, **labels}.items()))
        ]

    assert tier("tier_hits", "memory") == 2
    assert tier("tier_misses", "memory") == 3
    assert tier("tier_fills", "memory") == 3
    assert tier("tier_hits", "redis") == 1
    assert tier("tier_misses", "redis") == 2
    assert tier("tier_fills", "redis") == 2
    assert chain("loads") == 2
    assert chain("load_failures") == 0
    assert chain("source_reads_saved") == 3
    assert chain("load_duration_seconds.bucket", le="0.0025") == 0
    assert chain("load_duration_seconds.bucket", le="0.005") == 1
    assert chain("load_duration_seconds.bucket", le="0.25") == 2
    assert chain("load_duration_seconds.bucket", le="+Inf") == 2
    assert chain("load_duration_seconds.count") == 2
    assert chain("load_duration_seconds.sum") == pytest.approx(0.203)
    published = {name for name, _ in points}
    for spec in CATALOGUE:
        # Per-chain counters always have a point; the others only where they apply (no bus,
        # no breaker, no source that moves off a loop left open here).
        if (
            spec.kind == "counter"
            and spec.labels == ("namespace",)
            and spec.name not in {"source_loops_left_open"}
        ):
            assert f"tiered_cache.{spec.name}" in published


def test_each_collection_reads_the_counters_afresh(
    reader: InMemoryMetricReader, cache: TieredCache, namespace: str
) -> None:
    key = ("tiered_cache.tier_hits", frozenset({("namespace", namespace), ("tier", "memory")}))
    cache.get("k", lambda: 1)
    assert collect(reader)[key] == 0
    cache.get("k")
    assert collect(reader)[key] == 1


def test_chains_instrumented_in_two_calls_on_one_provider_are_both_collected() -> None:
    """A meter keeps one instrument per name: a second instrument() on the same provider made
    instruments the SDK ignored, and the second chain was never collected (nor was a chain
    rebuilt after a close and instrumented again), with no error and no warning."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with (
        TieredCache.from_config(namespace="first", bus={"kind": "off"}) as first,
        TieredCache.from_config(namespace="second", bus={"kind": "off"}) as second,
    ):
        first.get("a", lambda: 1)
        second.get("b", lambda: 2)
        second.get("b")
        instrument(first, meter_provider=provider)
        instrument(second, meter_provider=provider)
        points = collect(reader)

        def hits(namespace: str) -> float:
            labels = frozenset({("namespace", namespace), ("tier", "memory")})
            return points[("tiered_cache.tier_hits", labels)]

        assert (hits("first"), hits("second")) == (0, 1)
        again = TieredCache.from_config(namespace="second", bus={"kind": "off"})
        with again, pytest.raises(ValueError, match="second"):
            instrument(again, meter_provider=provider)  # its series would be the other's


def test_one_chain_given_twice_or_in_two_calls_is_collected_once() -> None:
    """A chain named twice (Django's CACHES entries of one settings file share one chain), in
    one call or in two, was refused as two chains of one namespace."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with TieredCache.from_config(namespace="twice", bus={"kind": "off"}) as cache:
        cache.get("a", lambda: 1)
        cache.get("a")
        instrument(cache, cache, meter_provider=provider)
        instrument(cache, meter_provider=provider)
        points = collect(reader)
    labels = frozenset({("namespace", "twice"), ("tier", "memory")})
    assert points[("tiered_cache.tier_hits", labels)] == 1


def test_a_closed_chain_lets_go_of_its_instruments_and_a_rebuilt_one_takes_its_place() -> None:
    """OpenTelemetry has no way to unregister: a chain rebuilt with the namespace of one
    that was closed was refused with ValueError (its series would be the closed one's).
    Closed chains are dropped; two open chains of one namespace are still refused."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    old = TieredCache.from_config(namespace="rebuilt", bus={"kind": "off"})
    old.get("a", lambda: 1)
    old.get("a")
    instrument(old, meter_provider=provider)
    hits = ("tiered_cache.tier_hits", frozenset({("namespace", "rebuilt"), ("tier", "memory")}))
    assert collect(reader)[hits] == 1
    old.close()
    assert old.closed
    with TieredCache.from_config(namespace="rebuilt", bus={"kind": "off"}) as new:
        assert not new.closed
        instrument(new, meter_provider=provider)
        assert collect(reader)[hits] == 0  # the new chain's, alone
        new.get("b", lambda: 2)
        new.get("b")
        new.get("b")
        assert collect(reader)[hits] == 2
        twin = TieredCache.from_config(namespace="rebuilt", bus={"kind": "off"})
        with twin, pytest.raises(ValueError, match="rebuilt"):
            instrument(twin, meter_provider=provider)


def test_a_closed_chain_drops_out_of_the_collection() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    kept = TieredCache.from_config(namespace="kept", bus={"kind": "off"})
    gone = TieredCache.from_config(namespace="gone", bus={"kind": "off"})
    instrument(kept, gone, meter_provider=provider)
    assert {"kept", "gone"} <= namespaces(collect(reader))
    gone.close()
    assert namespaces(collect(reader)) == {"kept"}
    kept.close()


def namespaces(points: Points) -> set[str]:
    return {dict(labels)["namespace"] for _, labels in points if "namespace" in dict(labels)}


#: Run in a child: the global MeterProvider can be set once per process.
_GLOBAL_PROVIDER_SCRIPT = """
import sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from tiered_cache import TieredCache
from tiered_cache.contrib.otel import instrument

early = [TieredCache.from_config(namespace=n, bus={"kind": "off"}) for n in ("e1", "e2")]
for chain in early:
    instrument(chain)  # before the SDK is set: the API's proxy meter
reader = InMemoryMetricReader()
provider = MeterProvider(metric_readers=[reader])
metrics.set_meter_provider(provider)
late = TieredCache.from_config(namespace="late", bus={"kind": "off"})
instrument(late)  # after it: the SDK's meter
named = TieredCache.from_config(namespace="named", bus={"kind": "off"})
instrument(named, meter_provider=provider)  # the global one, named
for chain in (*early, late, named):
    chain.get("k", lambda: 1)
    chain.get("k")
seen = set()
for resource in reader.get_metrics_data().resource_metrics:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            if metric.name == "tiered_cache.tier_hits":
                for point in metric.data.data_points:
                    if point.value == 1:
                        seen.add(point.attributes["namespace"])
print(",".join(sorted(seen)))
"""


def test_chains_instrumented_on_the_global_provider_are_all_collected() -> None:
    """Before an SDK is set, the API hands out a new proxy meter on every get_meter call: the
    instruments were kept per meter, so each instrument() made a second set under the same
    names, which the SDK ignores once set (and so for a call after it is set): only the first
    chain was collected, with no error and no warning."""
    done = subprocess.run(
        [sys.executable, "-c", _GLOBAL_PROVIDER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "e1,e2,late,named"
