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
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..chain import TieredCache
from .series import Series, check_apart, series

__all__ = ["PREFIX", "TieredCacheCollector", "register"]

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
        check_apart(caches)
        self._caches = caches
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


def register(
    *caches: TieredCache, registry: CollectorRegistry = REGISTRY, raw_hot_keys: bool = False
) -> TieredCacheCollector:
    """Register one :class:`TieredCacheCollector` for ``caches`` (default: on the global
    registry); returns it, for ``registry.unregister`` when the caches close."""
    collector = TieredCacheCollector(*caches, raw_hot_keys=raw_hot_keys)
    registry.register(collector)
    return collector
