"""The metrics every exporter publishes, computed from one ``TieredCache.stats()`` snapshot.

This module is the catalogue (:data:`CATALOGUE`: each metric's name, kind, labels and help) and
the one function that turns a snapshot into samples (:func:`series`). The Prometheus collector
and the OpenTelemetry instruments only translate its output, so both publish the same figures
under the same names, and both take them when scraped: nothing is added to the read path.

Names are given without prefix or suffix; exporters add theirs (Prometheus:
``tiered_cache_<name>`` and ``_total`` on counters; OpenTelemetry: ``tiered_cache.<name>``).
It imports nothing outside the standard library and the core.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..logs import key_hash
from ..metrics import EVENTS

if TYPE_CHECKING:
    from ..async_chain import AsyncTieredCache
    from ..chain import TieredCache

Kind = Literal["counter", "gauge", "histogram"]
#: A chain of either face.
C = TypeVar("C", bound="TieredCache | AsyncTieredCache")
Labels = dict[str, str]

#: The states a tier's circuit breaker can be in (the label values of ``tier_breaker_state``).
BREAKER_STATES = ("closed", "half-open", "open")
#: The states of a chain's bus (``stats()["bus"]``, :attr:`tiered_cache.coherence.BusLink.state`;
#: the label values of ``bus_state``).
BUS_STATES = ("starting", "connected", "down", "closed")
#: The bus states ``bus_connected`` reads 1 for: a start is not an outage (every worker of a
#: deploy starts; one whose first subscription fails is down within the bus's timeout).
BUS_UP = ("starting", "connected")


@dataclass(frozen=True)
class Spec:
    """One metric: its name (without exporter prefix), kind, label names and help text."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    unit: str = ""


@dataclass
class Histogram:
    """One label set of a histogram: ``buckets`` (cumulative, by upper bound, the last one
    ``inf``), ``total`` (the sum of the observations) and ``count``."""

    labels: Labels
    buckets: list[tuple[float, int]]
    total: float
    count: int


@dataclass
class Series:
    """A metric's samples (a histogram's: ``histograms``) in one or more snapshots."""

    spec: Spec
    samples: list[tuple[Labels, float]] = field(default_factory=list)
    histograms: list[Histogram] = field(default_factory=list)


_NS = ("namespace",)
_TIER = ("namespace", "tier")

#: What each protection and bus event counts (events come from ``tiered_cache.metrics.EVENTS``).
EVENT_HELP: Mapping[str, str] = {
    "stale_served": "Reads answered with a stale entry while it was refreshed.",
    "stale_served_on_error": "Fail-safe serves: a stale entry served because the load failed.",
    "stale_served_on_slow_load": "A stale entry served because the load passed its soft timeout.",
    "loads_rested": "Loads not made: the source throttled the key lately (throttle_backoff).",
    "early_refreshes": "Refreshes started early by XFetch before the entry went stale.",
    "refreshes": "Background refreshes started.",
    "refresh_failures": "Background refreshes that failed.",
    "soft_timeouts": "Loads that passed their soft timeout.",
    "hard_timeouts": "Loads abandoned at their hard timeout.",
    "abandoned_loads": "Timed loads left running after their caller stopped waiting.",
    "loads_refused": "Timed loads not started for want of a slot (too many running or hung).",
    "lease_waits": "Reads that waited for another process's lease on the key.",
    "lease_takeovers": "Leases taken over after their holder's lease expired.",
    "lease_wait_expired": "Lease waits that ended without the holder's value.",
    "lease_lost": "Fills refused because the lease was lost (an invalidation overtook the load).",
    "bus_sent": "Invalidation messages published on the bus.",
    "bus_received": "Invalidation messages received from the bus.",
    "bus_gaps": "Gaps detected in the bus's message sequence (in-process tiers were cleared).",
    "bus_disconnects": "Periods the bus was down for this chain (a fork counts one).",
    "bus_errors": "Listening attempts that failed for a reason other than the network.",
    "bus_down_served": "Reads memory answered within max_stale_when_disconnected, bus down.",
    "bus_down_bypasses": "Reads that went past memory while the bus was down.",
    "bus_starting_served": "Reads memory answered within the bound while the bus was starting.",
    "bus_starting_bypasses": "Reads that went past memory while the bus was starting.",
    "bus_publish_errors": "Invalidation messages the bus failed to publish.",
    "bus_close_abandoned": "Closes of the bus that stopped waiting for a stuck listener.",
    "close_loads_left_running": "Loads an asyncio close stopped waiting for (close_wait).",
    "deletes_owed": "Deletes a shared tier failed (keys, prefixes, clears), made when it works.",
    "deletes_owed_overflows": "Times owed deletes passed their bound: the tier will be cleared.",
    "deletes_owed_payments": "Payments of owed deletes made (each announced again on the bus).",
    "deletes_owed_dropped": "Owed deletes a closing chain could not make (left to Redis's ttl).",
}


def _event_specs() -> tuple[Spec, ...]:
    return tuple(
        Spec(event, "counter", _NS, EVENT_HELP.get(event, f"Events counted as {event!r}."))
        for event in EVENTS
    )


#: Every metric the exporters publish, in publishing order.
CATALOGUE: tuple[Spec, ...] = (
    Spec("tier_hits", "counter", _TIER, "Reads a tier answered with a fresh entry."),
    Spec("tier_misses", "counter", _TIER, "Reads a tier could not answer."),
    Spec("tier_fills", "counter", _TIER, "Entries written into a tier (read-through and writes)."),
    Spec("tier_errors", "counter", _TIER, "Tier calls that failed; the tier was skipped."),
    Spec("tier_skips", "counter", _TIER, "Tier calls not made: breaker open, tier unavailable."),
    Spec("tier_evictions", "counter", _TIER, "Entries a tier pushed out to make room."),
    Spec(
        "tier_undecodable",
        "counter",
        _TIER,
        "Entries a tier read but could not decode (another format or codec, corrupt bytes); "
        "each was a miss.",
    ),
    Spec(
        "tier_too_large",
        "counter",
        _TIER,
        "Values a tier did not keep for their size (over the Redis tier's max_value_size); "
        "the key's older copy was deleted there.",
    ),
    Spec("tier_entries", "gauge", _TIER, "Entries a tier holds now."),
    Spec(
        "tier_breaker_state",
        "gauge",
        (*_TIER, "state"),
        "1 for the state a tier's circuit breaker is in, 0 for the others.",
    ),
    Spec("tier_breaker_opened", "counter", _TIER, "Times a tier's circuit breaker opened."),
    Spec(
        "tier_loops_left_open",
        "counter",
        _TIER,
        "Times an asyncio tier moved off an event loop left open (run by hand, never closed), "
        "closing that loop's connections.",
    ),
    Spec("loads", "counter", _NS, "Successful calls to the source (a batch counts once)."),
    Spec("load_failures", "counter", _NS, "Calls to the source that failed."),
    Spec("keys_loaded", "counter", _NS, "Keys read from the source."),
    Spec(
        "load_duration_seconds",
        "histogram",
        _NS,
        "Duration of successful calls to the source.",
        unit="seconds",
    ),
    Spec(
        "singleflight_waits",
        "counter",
        _NS,
        "Reads that waited for another thread's load of the same key instead of loading.",
    ),
    *_event_specs(),
    Spec(
        "bus_connected",
        "gauge",
        _NS,
        "1 while the invalidation bus is connected or starting (its first subscription not yet "
        "confirmed), 0 while it is down or closed.",
    ),
    Spec(
        "bus_state",
        "gauge",
        (*_NS, "state"),
        "1 for the invalidation bus's state (starting, connected, down, closed), 0 for the others.",
    ),
    Spec(
        "bus_publish_breaker_state",
        "gauge",
        (*_NS, "state"),
        "1 for the bus publish breaker's current state (open: announcements are skipped).",
    ),
    Spec(
        "hot_key_reads_per_second",
        "gauge",
        (*_NS, "rank", "key"),
        "Estimated reads per second of the hottest keys (top k; key is a hash unless raw).",
    ),
    Spec(
        "source_reads_saved",
        "counter",
        _NS,
        "Reads answered without a call to the source (tier hits and shared loads).",
    ),
    Spec(
        "source_loops_left_open",
        "counter",
        _NS,
        "Times an asyncio source moved off an event loop left open (run by hand, never "
        "closed), closing that loop's client.",
    ),
    Spec(
        "source_read_units_saved",
        "gauge",
        _NS,
        "Estimated read capacity units the saved reads would have cost (DynamoDB source).",
    ),
)

SPECS: Mapping[str, Spec] = {spec.name: spec for spec in CATALOGUE}

#: The tier snapshot field each per-tier metric publishes.
_TIER_FIELDS = {
    "tier_hits": "hits",
    "tier_misses": "misses",
    "tier_fills": "fills",
    "tier_errors": "errors",
    "tier_skips": "skips",
    "tier_evictions": "evictions",
    "tier_undecodable": "undecodable",
    "tier_too_large": "too_large",
    "tier_entries": "entries",
    "tier_breaker_opened": "breaker_opened",
    "tier_loops_left_open": "loops_left_open",
}


def apart(caches: Iterable[C]) -> tuple[C, ...]:
    """``caches``, each chain once, or :class:`ValueError` unless every series of them has
    labels of its own: one namespace per chain (a chain refuses two tiers of one name when
    built: :func:`~tiered_cache.keys.check_chain_labels`). Two alike made one scrape show a
    series twice, with two values, of which Prometheus keeps one (the other chain's). One
    chain given twice is one chain: Django's backend gives every ``CACHES`` entry of one
    settings file the same chain, and registering each entry's was refused as two chains of
    one namespace. No chain at all is a :class:`TypeError`: an exporter of nothing (a
    ``register(*caches)`` of a list not filled yet) took the registry's names, and the real
    registration after it was refused as a second one."""
    once = tuple({id(cache): cache for cache in caches}.values())
    if not once:
        raise TypeError("no chain given: pass the chains to report on, register(users, tweets)")
    namespaces: set[str] = set()
    for cache in once:
        if cache.namespace in namespaces:
            raise ValueError(
                f"two chains of namespace {cache.namespace!r}: their series would be one; "
                "give each chain a namespace of its own"
            )
        namespaces.add(cache.namespace)
    return once


def series(*snapshots: Mapping[str, Any], raw_hot_keys: bool = False) -> list[Series]:
    """Every metric of :data:`CATALOGUE` with its samples in ``snapshots`` (``stats()`` of one
    or more chains, told apart by their ``namespace`` label).

    A metric the snapshots have nothing for (no breaker, no bus, a source without read units)
    comes out with no samples. ``raw_hot_keys``: label hot keys with the keys themselves
    instead of their :func:`~tiered_cache.logs.key_hash` (only if keys hold nothing secret).
    """
    out = {spec.name: Series(spec) for spec in CATALOGUE}
    for snapshot in snapshots:
        _add(out, snapshot, raw_hot_keys)
    return list(out.values())


def _add(out: dict[str, Series], snapshot: Mapping[str, Any], raw_hot_keys: bool) -> None:
    namespace = {"namespace": str(snapshot.get("namespace", ""))}
    for tier in snapshot.get("tiers", ()):
        labels = {**namespace, "tier": str(tier["name"])}
        for name, field_name in _TIER_FIELDS.items():
            if field_name in tier:
                out[name].samples.append((labels, float(tier[field_name])))
        _states(out["tier_breaker_state"], labels, tier.get("breaker"))
    for name in ("loads", "load_failures", "keys_loaded", "singleflight_waits"):
        out[name].samples.append((namespace, float(snapshot.get(name, 0))))
    for event in EVENTS:
        out[event].samples.append((namespace, float(snapshot.get(event, 0))))
    _histogram(out["load_duration_seconds"], snapshot, namespace)
    bus = snapshot.get("bus")
    if bus is not None:
        out["bus_connected"].samples.append((namespace, 1.0 if bus in BUS_UP else 0.0))
    _states(out["bus_state"], namespace, bus, BUS_STATES)
    _states(out["bus_publish_breaker_state"], namespace, snapshot.get("bus_publish_breaker"))
    for rank, (key, rate) in enumerate(snapshot.get("hot_keys", ()), start=1):
        # A key may hold a lone surrogate (a path decoded with surrogateescape): no exporter
        # can encode it, and one such label failed the whole scrape. Shown escaped.
        label = key.encode("utf-8", "backslashreplace").decode() if raw_hot_keys else key_hash(key)
        out["hot_key_reads_per_second"].samples.append(
            ({**namespace, "rank": str(rank), "key": label}, float(rate))
        )
    out["source_reads_saved"].samples.append(
        (namespace, float(snapshot.get("source_reads_saved", 0)))
    )
    source = snapshot.get("source") or {}
    if "loops_left_open" in source:
        out["source_loops_left_open"].samples.append((namespace, float(source["loops_left_open"])))
    if "read_units_saved" in source:
        out["source_read_units_saved"].samples.append(
            (namespace, float(source["read_units_saved"]))
        )


def _states(
    target: Series, labels: Labels, state: str | None, states: tuple[str, ...] = BREAKER_STATES
) -> None:
    """One sample per state (a breaker's by default), 1 for the current one (none without
    a breaker, or a bus)."""
    if state is not None:
        for candidate in states:
            target.samples.append(
                ({**labels, "state": candidate}, 1.0 if state == candidate else 0.0)
            )


def _histogram(target: Series, snapshot: Mapping[str, Any], labels: Labels) -> None:
    counts: Mapping[str, int] = snapshot.get("load_seconds_buckets", {})
    buckets = [(float(bound), int(count)) for bound, count in counts.items()]
    count = int(counts.get("+Inf", 0))
    if not buckets or not math.isinf(buckets[-1][0]):
        buckets.append((math.inf, count))
    target.histograms.append(
        Histogram(labels, buckets, float(snapshot.get("load_seconds", 0.0)), count)
    )
