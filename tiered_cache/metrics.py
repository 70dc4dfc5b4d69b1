"""Counters the chain keeps, and the plain snapshot ``TieredCache.stats()`` returns."""

from __future__ import annotations

import threading
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
    "bus_sent",
    "bus_received",
    "bus_gaps",
    "bus_disconnects",
    "bus_publish_errors",
)


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

    def load_failure(self) -> None:
        with self._lock:
            self.load_failures += 1

    def waited(self) -> None:
        with self._lock:
            self.singleflight_waits += 1

    def count(self, event: str, amount: int = 1) -> None:
        with self._lock:
            self.events[event] = self.events.get(event, 0) + amount

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
                "singleflight_waits": self.singleflight_waits,
                # Reads answered without a trip to the source (tier hits and shared loads).
                "source_reads_saved": served,
                **self.events,
            }
