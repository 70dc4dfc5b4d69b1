"""prometheus_client's multiprocess mode: the chains' figures copied into its shared files.

Under gunicorn or uwsgi each worker is a process with chains and counters of its own. With
``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported, its metric objects
(``Counter``, ``Gauge``, ``Histogram``) keep their values in files there, one set per process,
and a scrape answered by ``MultiProcessCollector`` adds up those files. It reads nothing else:
a collector such as :class:`~tiered_cache.contrib.prometheus.TieredCacheCollector` is never
asked, so each worker's scrape showed its own figures, or none at all.

In that mode :func:`~tiered_cache.contrib.prometheus.register` makes a
:class:`MultiprocessMirror` instead, which copies each chain's ``stats()`` into such objects:
every ``refresh_every`` seconds on a thread of its own, just before the process forks, and when
it exits. Counters and histograms grow by what the chain's counters grew since the last copy
(kept per chain, for the life of the process), so a process's files only ever grow. A forked
child inherits the chain's counts *and* that record of them, copied just before the fork: it
adds only what it counted itself, and the parent's counts are in the parent's files, once.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from ..chain import TieredCache
from ..forking import restart_after_fork, start_when_restarted
from ..metrics import LOAD_BUCKETS
from .prometheus import PREFIX
from .series import CATALOGUE, Series, apart, series

__all__ = ["GAUGE_MODES", "MultiprocessMirror"]

logger = logging.getLogger(__name__)

GaugeMode = Literal["livesum", "livemax", "livemin", "sum"]

#: How a scrape combines a gauge's values of several processes (prometheus_client's
#: ``multiprocess_mode``), chosen by what the gauge means; ``None``: not mirrored. The ``live``
#: modes drop a process's value once ``mark_process_dead(pid)`` is called for it.
GAUGE_MODES: Mapping[str, GaugeMode | None] = {
    # The entries the live workers hold between them.
    "tier_entries": "livesum",
    # 1 for a state while any live worker's breaker is in it (the single-process 0/1 reading,
    # which the Grafana dashboard takes the max of).
    "tier_breaker_state": "livemax",
    "bus_publish_breaker_state": "livemax",
    # 1 only while every live worker's bus is up (connected, or starting: a deploy is no
    # outage); the dashboard takes the min.
    "bus_connected": "livemin",
    # 1 for a state while any live worker's bus is in it (a worker starting shows here).
    "bus_state": "livemax",
    # Grows with source_reads_saved, a counter: a worker's savings stay after it exits.
    "source_read_units_saved": "sum",
    # Each process's own top k: a key that leaves it cannot leave the files (prometheus_client
    # cannot remove a series in this mode), so the series would only grow. Read per worker.
    "hot_key_reads_per_second": None,
}

_Key = tuple[str, tuple[str, ...]]


class MultiprocessMirror:
    """Copies chains' figures into prometheus_client metrics kept in the shared directory.

    Made by :func:`~tiered_cache.contrib.prometheus.register` when
    :func:`~tiered_cache.contrib.prometheus.multiprocess_mode` is on; one per process at a
    time (register every chain of a process in one call).

    Args:
        caches: the chains to report on; each one's namespace is its ``namespace`` label.
        refresh_every: seconds between copies on the mirror's thread; a scrape shows a
            worker's figures as of its last copy.
    """

    def __init__(self, *caches: TieredCache, refresh_every: float = 5.0) -> None:
        if not (refresh_every > 0 and math.isfinite(refresh_every)):
            raise ValueError(
                f"refresh_every must be a positive number of seconds: {refresh_every!r}"
            )
        caches = self._caches = apart(caches)
        self._every = refresh_every
        self._stop = threading.Event()
        with _HERE.lock:
            if _HERE.open is not None:
                raise ValueError(
                    "this process already mirrors chains into PROMETHEUS_MULTIPROC_DIR: "
                    "register every chain of a process in one call, register(users, tweets)"
                )
            _HERE.copy(caches)
            _HERE.open = self
        restart_after_fork(self)
        self._start()

    def refresh(self) -> None:
        """Copy the chains' figures into the shared directory now."""
        _HERE.copy(self._caches)

    def close(self) -> None:
        """Copy once more and stop; another mirror may then be made in this process."""
        self._stop.set()
        with _HERE.lock:
            if _HERE.open is not self:
                return
            _HERE.open = None
        self.refresh()

    def after_fork_in_child(self) -> None:
        """A thread of its own (a forked child has none of the parent's)."""
        if not self._stop.is_set():
            self._stop = threading.Event()
            start_when_restarted(self._start)

    def _start(self) -> None:
        threading.Thread(
            target=self._run, args=(self._stop,), name="tiered-cache-prometheus", daemon=True
        ).start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self._every):
            try:
                self.refresh()
            except Exception:
                logger.exception("copying the chains' metrics to PROMETHEUS_MULTIPROC_DIR failed")


class _Process:
    """This process's metric objects, what it copied of each chain, and its open mirror."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: MultiprocessMirror | None = None
        #: Held while copying, and from just before a fork until just after it.
        self._copying = threading.Lock()
        #: What each chain's counters (histogram buckets and sums too) had at its last copy.
        self._copied: weakref.WeakKeyDictionary[TieredCache, dict[_Key, float]] = (
            weakref.WeakKeyDictionary()
        )
        self._metrics: dict[str, MetricWrapperBase] = {}

    def copy(self, caches: tuple[TieredCache, ...]) -> None:
        with self._copying:
            self._copy(caches)

    def _copy(self, caches: tuple[TieredCache, ...]) -> None:
        metrics = self._made()
        for cache in caches:
            copied = self._copied.setdefault(cache, {})
            for item in series(cache.stats()):
                metric = metrics.get(item.spec.name)
                if isinstance(metric, Counter):
                    _count(metric, item, copied)
                elif isinstance(metric, Gauge):
                    for labels, value in item.samples:
                        metric.labels(*_values(item, labels)).set(value)
                elif isinstance(metric, Histogram):
                    _histogram(metric, item, copied)
                # None: not copied (GAUGE_MODES)

    def _made(self) -> dict[str, MetricWrapperBase]:
        """The metric objects, made once: two objects of one name would each write their own
        value to the same place in the process's file."""
        if not self._metrics:
            made: dict[str, MetricWrapperBase] = {}
            for spec in CATALOGUE:
                name = PREFIX + spec.name
                labels = list(spec.labels)
                if spec.kind == "counter":
                    made[spec.name] = Counter(name, spec.help, labels, registry=None)
                elif spec.kind == "histogram":
                    made[spec.name] = Histogram(
                        name, spec.help, labels, registry=None, buckets=LOAD_BUCKETS
                    )
                else:
                    mode = GAUGE_MODES[spec.name]  # a new gauge must say how processes add up
                    if mode is not None:
                        made[spec.name] = Gauge(
                            name, spec.help, labels, registry=None, multiprocess_mode=mode
                        )
            self._metrics = made
        return self._metrics

    def before_fork(self) -> None:
        # Copied under the lock, held through the fork: the child starts from exactly what is
        # in the parent's files, and no thread of the parent is inside prometheus_client then
        # (its lock, held at the fork, would stay held in the child for good).
        self._copying.acquire()
        if self.open is not None:
            try:
                self._copy(self.open._caches)
            except Exception:
                logger.exception("copying the chains' metrics before fork() failed")

    def after_fork(self) -> None:
        # The child too: a Lock may be released by another thread than its holder's, and the
        # child's one thread is the one that took it. (A mirror's thread started in the child
        # before this waits for it.)
        self._copying.release()

    def at_exit(self) -> None:
        # A worker's counts since its last copy would be lost with it (gunicorn's workers
        # leave through sys.exit; a process that leaves through os._exit skips this).
        if self.open is not None:
            self.open.refresh()


def _grow(copied: dict[_Key, float], key: _Key, now: float) -> float:
    """How much ``key`` grew since the last copy. A count that went down (none should)
    restarts from there: the metric in the files must never go down."""
    before = copied.get(key, 0.0)
    copied[key] = now
    return max(now - before, 0.0)


def _count(metric: Counter, item: Series, copied: dict[_Key, float]) -> None:
    for labels, value in item.samples:
        values_ = _values(item, labels)
        grown = _grow(copied, (item.spec.name, values_), value)
        if grown:
            metric.labels(*values_).inc(grown)


def _histogram(metric: Histogram, item: Series, copied: dict[_Key, float]) -> None:
    # prometheus_client has no public way to add n observations to a bucket, or to add to the
    # sum alone, which a copy needs; its child keeps one value per bucket (not cumulative) in
    # ``_buckets`` and the sum in ``_sum``, each written to the files.
    for one in item.histograms:
        values_ = _values(item, one.labels)
        child = metric.labels(*values_)
        below = 0
        for bound, cumulative in one.buckets:
            index = _BUCKET_INDEX[bound]
            grown = _grow(copied, (f"{item.spec.name}#{index}", values_), cumulative - below)
            below = cumulative
            if grown:
                child._buckets[index].inc(grown)
        grown = _grow(copied, (f"{item.spec.name}#sum", values_), one.total)
        if grown:
            child._sum.inc(grown)


def _values(item: Series, labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels[name] for name in item.spec.labels)


#: A bucket's place in the histogram, by its upper bound (``LOAD_BUCKETS``, then ``inf``).
_BUCKET_INDEX = {bound: index for index, bound in enumerate((*LOAD_BUCKETS, math.inf))}

_HERE = _Process()
os.register_at_fork(
    before=_HERE.before_fork, after_in_parent=_HERE.after_fork, after_in_child=_HERE.after_fork
)
atexit.register(_HERE.at_exit)
