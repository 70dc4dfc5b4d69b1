"""Counters the chain keeps, and the plain snapshot ``TieredCache.stats()`` returns."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from .forking import restart_compiled_after_fork
from .hit import HitCount

#: Events counted by name, listed so that a snapshot always has every one of them.
EVENTS = (
    "stale_served",
    "stale_served_on_error",
    "stale_served_on_slow_load",
    "loads_rested",
    "early_refreshes",
    "refreshes",
    "refresh_failures",
    "soft_timeouts",
    "hard_timeouts",
    "abandoned_loads",
    "loads_refused",
    "lease_waits",
    "lease_takeovers",
    "lease_wait_expired",
    "lease_lost",
    "fills_refused",
    "bus_sent",
    "bus_received",
    "bus_gaps",
    "bus_disconnects",
    "bus_errors",
    "bus_down_served",
    "bus_down_bypasses",
    "bus_starting_served",
    "bus_starting_bypasses",
    "bus_publish_errors",
    "bus_publish_skipped",
    "bus_close_abandoned",
    "close_loads_left_running",
    "deletes_owed",
    "deletes_owed_overflows",
    "deletes_owed_payments",
    "deletes_owed_dropped",
)


#: Upper bounds, in seconds, of the load latency histogram's buckets (a last one, ``+Inf``, is
#: implied). Loads are calls to a source -- a millisecond to seconds -- so the buckets start at a
#: millisecond. Fixed so that recording is a short walk (``_bucket``). Typed as a tuple of any
#: length: compiled, a fixed-length tuple type made every load check and rebuild it first (710 ns
#: a count, against 490 ns interpreted).
LOAD_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _bucket(seconds: float) -> int:
    """The histogram bucket of a load of ``seconds``: ``bisect_left(LOAD_BUCKETS, seconds)``
    (a load of exactly a bound's duration belongs to that bound, le; NaN to the first), as a
    walk from the shortest bound: nearly every load is in the first few buckets, and compiled
    this is a few compares of C doubles where the call to bisect cost a quarter of a count."""
    index = 0
    for bound in LOAD_BUCKETS:
        if not bound < seconds:
            return index
        index += 1
    return index


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
        self._fork = restart_compiled_after_fork(self)  # compiled: no weak reference to it

    def after_fork_in_child(self) -> None:
        """A new lock: one the parent's thread held at the fork (adding up, or starting to
        count) would stay held, and each new thread of the child hang at its first count."""
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


class _Cell:
    """One thread's share of a chain's counters (see :class:`CacheMetrics`)."""

    __slots__ = ("counts", "events", "load_seconds")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.load_seconds = 0.0
        self.events: dict[str, int] = {}


class CacheMetrics:
    """Counters for a chain: per tier, and for loads from the source.

    Every thread counts into a cell of its own, without a lock (a miss used to take seven
    locks for its counters); :meth:`snapshot` adds the cells up. A snapshot taken while
    other threads count may see one counter of an event and not yet another (a load's
    ``loads`` but not its ``keys_loaded``); each counter on its own is exact.
    """

    def __init__(self, tier_names: Sequence[str]) -> None:
        self._names = list(tier_names)
        tiers = len(self._names)
        # One list of counts per cell: five per tier (hits, misses, fills, errors, skips,
        # each a block of ``tiers``), then the loads' counters and the histogram's buckets.
        self._misses = tiers
        self._fills = 2 * tiers
        self._errors = 3 * tiers
        self._skips = 4 * tiers
        self._loads = 5 * tiers
        self._buckets = self._loads + 4
        self._size = self._buckets + len(LOAD_BUCKETS) + 1
        self._local = threading.local()
        self._cells: list[_Cell] = []
        self._lock = threading.Lock()
        #: Hits in tier 0, counted apart from the other hits: the hit path adds to its cell
        #: (:class:`~tiered_cache.hit.L1Lookup`).
        self.l1_hits = LocalCounter()
        #: Hits in tier 0 answered by its plain-hit reader (:mod:`tiered_cache.hit`).
        self.plain_l1_hits = HitCount()
        self._fork = restart_compiled_after_fork(self)  # compiled: no weak reference to it

    def after_fork_in_child(self) -> None:
        """A new lock: ``stats()`` adds the cells up under it (a metrics scrape's thread may
        hold it at the fork), and a thread takes it to start counting; left held, every new
        thread of the child (the background pool's, the bus listener's) hung at its first
        count. (:attr:`l1_hits` restarts itself.)"""
        self._lock = threading.Lock()

    def _cell(self) -> _Cell:
        """This thread's cell (made and registered at its first count)."""
        try:
            cell: _Cell = self._local.cell
        except AttributeError:
            cell = self._new_cell()
        return cell

    def _new_cell(self) -> _Cell:
        cell = _Cell(self._size)
        with self._lock:
            self._cells.append(cell)
        self._local.cell = cell
        return cell

    # A miss counts three times (miss, load, fill): each count finds its cell inline rather
    # than through _cell, one Python call fewer each.

    def hit(self, tier: int, count: int = 1) -> None:
        try:
            cell: _Cell = self._local.cell
        except AttributeError:
            cell = self._new_cell()
        cell.counts[tier] += count

    def miss(self, tier: int, count: int = 1) -> None:
        try:
            cell: _Cell = self._local.cell
        except AttributeError:
            cell = self._new_cell()
        cell.counts[self._misses + tier] += count

    def fill(self, tier: int, count: int = 1) -> None:
        try:
            cell: _Cell = self._local.cell
        except AttributeError:
            cell = self._new_cell()
        cell.counts[self._fills + tier] += count

    def error(self, tier: int) -> None:
        self._cell().counts[self._errors + tier] += 1

    def skip(self, tier: int) -> None:
        self._cell().counts[self._skips + tier] += 1

    def load(self, keys: int, seconds: float) -> None:
        try:
            cell: _Cell = self._local.cell
        except AttributeError:
            cell = self._new_cell()
        if not seconds > 0.0:
            # Timed on the chain's clock, the wall clock by default: stepped back during the
            # load, it took less than nothing, and the sum (a counter: rate() reads a drop as
            # a reset) must not go down. NaN likewise.
            seconds = 0.0
        counts = cell.counts
        at = self._loads
        counts[at] += 1
        counts[at + 2] += keys
        cell.load_seconds += seconds
        counts[self._buckets + _bucket(seconds)] += 1

    def load_failure(self) -> None:
        self._cell().counts[self._loads + 1] += 1

    def waited(self) -> None:
        self._cell().counts[self._loads + 3] += 1

    def count(self, event: str, amount: int = 1) -> None:
        events = self._cell().events
        events[event] = events.get(event, 0) + amount

    def _cumulative_buckets(self, counts: Sequence[int]) -> dict[str, int]:
        """Loads at or under each bound, keyed by the bound as text (``"+Inf"``: all of them);
        cumulative, as Prometheus and most dashboards read histograms."""
        buckets: dict[str, int] = {}
        total = 0
        cells = counts[self._buckets : self._size]
        for bound, count in zip((*map(repr, LOAD_BUCKETS), "+Inf"), cells, strict=True):
            total += count
            buckets[bound] = total
        return buckets

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serializable copy of every counter (the sum of every thread's cell)."""
        l1_hits = self.l1_hits.value + self.plain_l1_hits.value
        counts = [0] * self._size
        load_seconds = 0.0
        events: dict[str, int] = dict.fromkeys(EVENTS, 0)
        with self._lock:
            cells = list(self._cells)
        for cell in cells:
            # list(...) copies: another thread may add an event while this one reads.
            for index, value in enumerate(list(cell.counts)):
                counts[index] += value
            load_seconds += cell.load_seconds
            for event, value in list(cell.events.items()):
                events[event] = events.get(event, 0) + value
        tiers = [
            asdict(
                TierCounters(
                    name,
                    hits=counts[index],
                    misses=counts[self._misses + index],
                    fills=counts[self._fills + index],
                    errors=counts[self._errors + index],
                    skips=counts[self._skips + index],
                )
            )
            for index, name in enumerate(self._names)
        ]
        if tiers:
            tiers[0]["hits"] += l1_hits
        at = self._loads
        waits = counts[at + 3]
        served = sum(tier["hits"] for tier in tiers) + waits
        return {
            "tiers": tiers,
            "loads": counts[at],
            "load_failures": counts[at + 1],
            "keys_loaded": counts[at + 2],
            "load_seconds": load_seconds,
            "load_seconds_buckets": self._cumulative_buckets(counts),
            "singleflight_waits": waits,
            # Reads answered without a trip to the source (tier hits and shared loads).
            "source_reads_saved": served,
            **events,
        }
