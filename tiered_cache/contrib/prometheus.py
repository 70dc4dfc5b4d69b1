"""Prometheus metrics for a :class:`~tiered_cache.TieredCache` (extra ``prometheus``).

::

    from prometheus_client import start_http_server
    from tiered_cache.contrib.prometheus import register

    register(cache)          # on prometheus_client's default registry; or register(a, b)
    start_http_server(9100)  # GET /metrics

The collector takes ``cache.stats()`` when Prometheus scrapes, and publishes every metric of
:data:`tiered_cache.contrib.series.CATALOGUE` as ``tiered_cache_<name>`` (counters end in
``_total``). Reads pay nothing for it. The names are listed in docs/metrics.md. Several chains
go into one collector (their ``namespace`` label tells them apart): Prometheus refuses a
scrape in which two collectors describe the same metric.

In prometheus_client's multiprocess mode (gunicorn, uwsgi: ``PROMETHEUS_MULTIPROC_DIR``) a
scrape reads only the files its metric objects write, never a collector: there
:func:`register` copies the figures into such objects instead
(:mod:`tiered_cache.contrib.prometheus_multiprocess`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import values
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..chain import TieredCache
from .series import Series, apart, series

if TYPE_CHECKING:
    from .prometheus_multiprocess import MultiprocessMirror

__all__ = ["PREFIX", "TieredCacheCollector", "multiprocess_mode", "register"]

#: What every metric name starts with.
PREFIX = "tiered_cache_"


class TieredCacheCollector(Collector):
    """A ``prometheus_client`` collector over chains; each scrape takes one ``stats()`` each.

    Args:
        caches: the chains to report on; each one's namespace is its ``namespace`` label.
        raw_hot_keys: label hot keys with the keys themselves rather than a hash of them. Keep
            the default when a key can hold anything private (see :mod:`tiered_cache.logs`).
    """

    def __init__(self, *caches: TieredCache, raw_hot_keys: bool = False) -> None:
        self._caches = apart(caches)
        self._raw_hot_keys = raw_hot_keys

    def describe(self) -> Iterator[Metric]:
        """Every metric, without samples: a registry checks names with it when the collector
        is registered, so a second collector of these names is refused there (a registry of
        one's own does not call ``collect`` for that, and took it: each scrape then described
        every metric twice, which the OpenMetrics format refuses)."""
        for item in series():
            yield _family(item)

    def collect(self) -> Iterator[Metric]:
        """Every metric, from one snapshot of each chain's counters."""
        snapshots = [cache.stats() for cache in self._caches]
        for item in series(*snapshots, raw_hot_keys=self._raw_hot_keys):
            yield _family(item)


def _family(item: Series) -> Metric:
    spec = item.spec
    name = PREFIX + spec.name
    if spec.kind == "histogram":
        histogram = HistogramMetricFamily(name, spec.help, labels=list(spec.labels), unit="")
        for one in item.histograms:
            histogram.add_metric(
                [one.labels[label] for label in spec.labels],
                [(_bound(bound), float(count)) for bound, count in one.buckets],
                sum_value=one.total,
            )
        return histogram
    family: CounterMetricFamily | GaugeMetricFamily
    if spec.kind == "counter":
        family = CounterMetricFamily(name, spec.help, labels=list(spec.labels))
    else:
        family = GaugeMetricFamily(name, spec.help, labels=list(spec.labels))
    for labels, value in item.samples:
        family.add_metric([labels[label] for label in spec.labels], value)
    return family


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps its metrics in ``PROMETHEUS_MULTIPROC_DIR`` (it decides
    once, when first imported). :class:`ValueError` if the variable was set only after that:
    every metric of the process, the application's own too, then stays in its memory, and a
    ``MultiProcessCollector`` scrape shows none of them."""
    in_files: bool = values.ValueClass is not values.MutexValue
    if not in_files and "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        raise ValueError(
            "PROMETHEUS_MULTIPROC_DIR is set, but prometheus_client was imported before it "
            "was, so it keeps every metric in this process's memory: set the variable before "
            "the process starts (gunicorn: in its environment, not in the application)"
        )
    return in_files


def register(
    *caches: TieredCache,
    registry: CollectorRegistry = REGISTRY,
    raw_hot_keys: bool = False,
    refresh_every: float = 5.0,
) -> TieredCacheCollector | MultiprocessMirror:
    """Register one :class:`TieredCacheCollector` for ``caches`` (default: on the global
    registry); returns it, for ``registry.unregister`` when the caches close.

    In multiprocess mode (:func:`multiprocess_mode`) returns a
    :class:`~tiered_cache.contrib.prometheus_multiprocess.MultiprocessMirror` instead (its
    ``close()`` stops it), which copies the figures to ``PROMETHEUS_MULTIPROC_DIR`` every
    ``refresh_every`` seconds, before a fork and at exit; ``registry`` and ``raw_hot_keys`` are
    not used there (the scrape's ``MultiProcessCollector`` reads the files; hot keys are not
    copied)."""
    if multiprocess_mode():
        from .prometheus_multiprocess import MultiprocessMirror

        return MultiprocessMirror(*caches, refresh_every=refresh_every)
    collector = TieredCacheCollector(*caches, raw_hot_keys=raw_hot_keys)
    try:
        registry.register(collector)
    except ValueError as clash:
        # prometheus_client lists every clashing name (about 150 for a second collector of
        # ours), not what to do: one collector describes each metric once for all its chains.
        if not str(clash).startswith("Duplicated timeseries"):
            raise
        raise ValueError(
            "this registry already has a collector with tiered-cache's metrics (a second "
            "register() on it): register every chain in one call, register(first, second, "
            "...), or unregister the first collector (register's return value) before"
        ) from clash
    return collector
