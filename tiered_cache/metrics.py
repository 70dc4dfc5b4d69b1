"""Counters the chain keeps, and the plain snapshot ``TieredCache.stats()`` returns."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Events counted by name, listed so that a snapshot always has every one of them.
EVENTS = (
    "stale_served",
    "stale_served_on_error",
    "stale_served_on_slow_load",
    "early_refreshes",
    "refreshes",
    "refresh_failures",
    "soft_timeouts",
    "hard_timeouts",
    "lease_waits",
    "lease_takeovers",
    "lease_wait_expired",
    "lease_lost",
    "fills_refused",
    "bus_sent",
    "bus_received",
    "bus_gaps",
    "bus_disconnects",
    "bus_publish_errors",
)


#: Upper bounds, in seconds, of the load latency histogram's buckets (a last one, ``+Inf``, is
#: implied). Loads are calls to a source -- a millisecond to seconds -- so the buckets start at a
#: millisecond. Fixed so that recording is one bisect under the lock the load already takes.
LOAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class TierCounters:
    """What happened at one tier."""

    name: str
    hits: int = 0
    misses: int = 0
    fills: int = 0
    #: Calls that failed with an unexpected exception (the tier was skipped for that call).
    errors: int = 0
    #: Calls not made or abandoned because the tier was unavailable (circuit open, timeout).
    skips: int = 0


class LocalCounter:
    """A counter that threads increment without a lock: each thread adds to its own cell.

    Used for the L1 hit count, which sits on the hottest path; :meth:`value` sums the cells.
    """

    def __init__(self) -> None:
        #: This thread's cell is ``cells.cell``; a one-item list so ``+=`` needs no lookup.
        self.cells = threading.local()
        self._cells: list[list[int]] = []
        self._lock = threading.Lock()

    def add(self, amount: int = 1) -> None:
        try:
            self.cells.cell[0] += amount
        except AttributeError:
            cell = [amount]
            with self._lock:
                self._cells.append(cell)
            self.cells.cell = cell

    @property
    def value(self) -> int:
        with self._lock:
            return sum(cell[0] for cell in self._cells)


class CacheMetrics:
    """Thread-safe counters for a chain: per tier, and for loads from the source."""

    def __init__(self, tier_names: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self.tiers = [TierCounters(name) for name in tier_names]
        #: Hits in tier 0, counted apart from ``tiers[0].hits`` to keep the hit path lock-free.
        self.l1_hits = LocalCounter()
        self.loads = 0
        self.load_failures = 0
        self.keys_loaded = 0
        self.singleflight_waits = 0
        self.load_seconds = 0.0
        #: Successful loads per bucket of :data:`LOAD_BUCKETS` (not cumulative; the last cell
        #: counts loads slower than the last bound).
        self.load_buckets = [0] * (len(LOAD_BUCKETS) + 1)
        #: Named events of source protection (stale_served, soft_timeouts, lease_waits, ...).
        self.events: dict[str, int] = dict.fromkeys(EVENTS, 0)

    def hit(self, tier: int, count: int = 1) -> None:
        with self._lock:
            self.tiers[tier].hits += count

    def miss(self, tier: int, count: int = 1) -> None:
        with self._lock:
            self.tiers[tier].misses += count

    def fill(self, tier: int, count: int = 1) -> None:
        with self._lock:
            self.tiers[tier].fills += count

    def error(self, tier: int) -> None:
        with self._lock:
            self.tiers[tier].errors += 1

    def skip(self, tier: int) -> None:
        with self._lock:
            self.tiers[tier].skips += 1

    def load(self, keys: int, seconds: float) -> None:
        with self._lock:
            self.loads += 1
            self.keys_loaded += keys
            self.load_seconds += seconds
            # bisect_left: a load of exactly a bound's duration belongs to that bound (le).
            self.load_buckets[bisect_left(LOAD_BUCKETS, seconds)] += 1

    def load_failure(self) -> None:
        with self._lock:
            self.load_failures += 1

    def waited(self) -> None:
        with self._lock:
            self.singleflight_waits += 1

    def count(self, event: str, amount: int = 1) -> None:
        with self._lock:
            self.events[event] = self.events.get(event, 0) + amount

    def _cumulative_buckets(self) -> dict[str, int]:
        """Loads at or under each bound, keyed by the bound as text (``"+Inf"``: all of them);
        cumulative, as Prometheus and most dashboards read histograms. Called under the lock."""
        buckets: dict[str, int] = {}
        total = 0
        for bound, count in zip((*map(repr, LOAD_BUCKETS), "+Inf"), self.load_buckets, strict=True):
            total += count
            buckets[bound] = total
        return buckets

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serializable copy of every counter."""
        l1_hits = self.l1_hits.value
        with self._lock:
            tiers = [asdict(counters) for counters in self.tiers]
            if tiers:
                tiers[0]["hits"] += l1_hits
            served = sum(tier["hits"] for tier in tiers) + self.singleflight_waits
            return {
                "tiers": tiers,
                "loads": self.loads,
                "load_failures": self.load_failures,
                "keys_loaded": self.keys_loaded,
                "load_seconds": self.load_seconds,
                "load_seconds_buckets": self._cumulative_buckets(),
                "singleflight_waits": self.singleflight_waits,
                # Reads answered without a trip to the source (tier hits and shared loads).
                "source_reads_saved": served,
                **self.events,
            }
