"""The Prometheus collector, scraped over HTTP from a chain of memory and a real Redis."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tiered_cache import TieredCache
from tiered_cache.contrib.prometheus import register
from tiered_cache.contrib.series import CATALOGUE
from tiered_cache.memory import MemoryTier
from tiered_cache.testing import FakeClock
from tiered_cache.testing.servers import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> tuple[str, Samples]:
    """Serve ``registry`` on a free port, GET /metrics once, and parse the answer."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def test_a_scrape_finds_hits_misses_and_loads_of_a_known_sequence(
    cache: TieredCache, run_known_reads: Callable[[], None], namespace: str
) -> None:
    registry = CollectorRegistry()
    register(cache, registry=registry)
    run_known_reads()

    text, samples = scrape(registry)

    def tier(name: str, tier_name: str) -> float:
        labels = frozenset({("namespace", namespace), ("tier", tier_name)})
        return samples[(f"tiered_cache_{name}", labels)]

    def chain(name: str, **labels: str) -> float:
        return samples[
            (f"tiered_cache_{name}", frozenset({"namespace": namespace, **labels}.items()))
        ]

    assert tier("tier_hits_total", "memory") == 2
    assert tier("tier_misses_total", "memory") == 3
    assert tier("tier_fills_total", "memory") == 3
    assert tier("tier_hits_total", "redis") == 1
    assert tier("tier_misses_total", "redis") == 2
    assert tier("tier_fills_total", "redis") == 2
    assert tier("tier_errors_total", "redis") == 0
    assert tier("tier_entries", "memory") == 2
    assert tier("tier_evictions_total", "memory") == 0
    assert chain("loads_total") == 2
    assert chain("keys_loaded_total") == 2
    assert chain("load_failures_total") == 0
    assert chain("source_reads_saved_total") == 3
    # The loads took 3 ms and 200 ms on the chain's (fake) clock.
    assert chain("load_duration_seconds_bucket", le="0.0025") == 0
    assert chain("load_duration_seconds_bucket", le="0.005") == 1
    assert chain("load_duration_seconds_bucket", le="0.1") == 1
    assert chain("load_duration_seconds_bucket", le="0.25") == 2
    assert chain("load_duration_seconds_bucket", le="+Inf") == 2
    assert chain("load_duration_seconds_count") == 2
    assert chain("load_duration_seconds_sum") == pytest.approx(0.203)
    # Every catalogued metric is published (some with no sample: no breaker, no bus here).
    for spec in CATALOGUE:
        suffix = "_total" if spec.kind == "counter" else ""
        assert f"# TYPE tiered_cache_{spec.name}{suffix} {spec.kind}" in text


def test_each_scrape_reads_the_counters_afresh(cache: TieredCache, namespace: str) -> None:
    registry = CollectorRegistry()
    register(cache, registry=registry)
    key = (
        "tiered_cache_tier_hits_total",
        frozenset({("namespace", namespace), ("tier", "memory")}),
    )
    cache.get("k", lambda: 1)
    assert scrape(registry)[1][key] == 0
    cache.get("k")
    assert scrape(registry)[1][key] == 1


def test_two_chains_share_one_collector_and_one_family_per_metric(
    cache: TieredCache, namespace: str
) -> None:
    other = TieredCache([MemoryTier(name="memory")], namespace=f"{namespace}-other")
    registry = CollectorRegistry()
    register(cache, other, registry=registry)
    cache.get("k", lambda: 1)
    cache.get("k")
    other.get("k", lambda: 1)
    text, samples = scrape(registry)
    # Prometheus refuses a scrape that describes a metric twice.
    assert text.count("# TYPE tiered_cache_tier_hits_total counter") == 1
    assert text.count("# TYPE tiered_cache_load_duration_seconds histogram") == 1
    hits = "tiered_cache_tier_hits_total"
    assert samples[(hits, frozenset({("namespace", namespace), ("tier", "memory")}))] == 1
    other_labels = frozenset({("namespace", f"{namespace}-other"), ("tier", "memory")})
    assert samples[(hits, other_labels)] == 0
    loads = "tiered_cache_load_duration_seconds_count"
    assert samples[(loads, frozenset({("namespace", f"{namespace}-other")}))] == 1


def test_chains_whose_series_would_collide_are_refused_when_registered(namespace: str) -> None:
    # Two chains of one namespace gave a scrape the same series twice
    # (tiered_cache_tier_hits_total{namespace, tier} with two values), of which Prometheus
    # keeps one: each scrape showed one chain's figures as the other's. (Two tiers of one name
    # in a chain are refused when the chain is built: tests/test_chain_labels.py.)
    caches = [TieredCache([MemoryTier()], namespace=namespace) for _ in range(2)]
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match=f"namespace {namespace!r}"):
        register(*caches, registry=registry)
    assert list(registry.collect()) == []  # nothing was registered
    # Named apart, they register.
    named = TieredCache([MemoryTier(), MemoryTier(name="l1b")], namespace=f"{namespace}-b")
    register(named, registry=registry)
    assert list(registry.collect())


def test_register_without_a_chain_is_refused_and_registers_nothing(namespace: str) -> None:
    # register(*caches) of an empty list (chains not built yet) took the registry's names
    # for a collector of nothing: the real register() after it was refused as "a second
    # register() on it", which the caller never made.
    registry = CollectorRegistry()
    with pytest.raises(TypeError, match="no chain"):
        register(registry=registry)
    assert list(registry.collect()) == []
    register(TieredCache([MemoryTier()], namespace=namespace), registry=registry)
    assert list(registry.collect())


def test_one_chain_given_twice_is_registered_once(cache: TieredCache, namespace: str) -> None:
    """Django's backend gives every CACHES entry of one settings file one chain, so
    ``register(*(caches[name].chain for name in CACHES))`` names a chain twice: it was refused
    as "two chains of namespace ...: give each chain a namespace of its own"."""
    registry = CollectorRegistry()
    register(cache, cache, registry=registry)
    cache.get("k", lambda: 1)
    cache.get("k")
    text, samples = scrape(registry)
    labels = frozenset({("namespace", namespace), ("tier", "memory")})
    assert samples[("tiered_cache_tier_hits_total", labels)] == 1
    assert (
        text.count('tiered_cache_tier_hits_total{namespace="' + namespace + '",tier="memory"}') == 1
    )


def test_a_raw_hot_key_utf8_cannot_encode_does_not_break_the_scrape(
    clock: FakeClock, namespace: str
) -> None:
    """raw_hot_keys labels hot keys with the keys themselves: one holding a lone surrogate (a
    path decoded with surrogateescape, which a chain without a UTF-8 tier takes) made every
    scrape of the registry fail (UnicodeEncodeError: surrogates not allowed), so /metrics
    answered nothing for any collector. Its label shows the surrogate escaped."""
    hostile = "path:caf\udce9"
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[{"kind": "memory", "max_entries": 100}],
        bus={"kind": "off"},
        clock=clock,
    )
    with cache:
        for i in range(300):
            cache.get(hostile, lambda: "v")
            cache.get(f"path:{i}", lambda: "cold")  # one-off keys: misses the sketch counts
            clock.advance(0.01)
        assert cache.hot_keys(1)[0][0] == hostile
        registry = CollectorRegistry()
        register(cache, registry=registry, raw_hot_keys=True)
        _, samples = scrape(registry)
    labels = frozenset({("namespace", namespace), ("rank", "1"), ("key", "path:caf\\udce9")})
    assert samples[("tiered_cache_hot_key_reads_per_second", labels)] > 0


def test_a_second_collector_on_one_registry_is_refused_when_registered(namespace: str) -> None:
    # register(users) then register(tweets) on a CollectorRegistry() (no auto_describe, the
    # default for a registry of one's own) was accepted: every scrape then described each
    # metric twice, which the OpenMetrics format (what Prometheus asks for) refuses, so the
    # whole /metrics, the application's own metrics too, could not be read.
    first = TieredCache([MemoryTier()], namespace=namespace)
    second = TieredCache([MemoryTier()], namespace=f"{namespace}-b")
    registry = CollectorRegistry()
    register(first, registry=registry)
    with pytest.raises(ValueError, match="register every chain in one call") as refused:
        register(second, registry=registry)
    # The message names the way out; prometheus_client's own (its ~150 names) is the cause.
    assert "register(first, second" in str(refused.value)
    assert "Duplicated timeseries" in str(refused.value.__cause__)
    text = openmetrics_latest(registry).decode()
    families = list(openmetrics_families(text))
    assert len(families) == len(CATALOGUE)
