"""OpenTelemetry metrics for a :class:`~tiered_cache.TieredCache` (extra ``otel``).

::

    from tiered_cache.contrib.otel import instrument

    instrument(cache)  # on the global MeterProvider your OpenTelemetry SDK set up; or (a, b)

Every metric of :data:`tiered_cache.contrib.series.CATALOGUE` becomes an observable instrument
named ``tiered_cache.<name>`` (counters: ``ObservableCounter``; gauges: ``ObservableGauge``),
read from ``cache.stats()`` when the SDK collects: reads pay nothing for it. Several chains
share one set of instruments (their ``namespace`` attribute tells them apart): a meter keeps
one instrument per name.

The OpenTelemetry API has no asynchronous histogram, so the load latency histogram is published
as three observable counters: ``tiered_cache.load_duration_seconds.bucket`` (cumulative, with
the bucket's upper bound as attribute ``le``, as Prometheus reads histograms),
``.sum`` and ``.count``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from ..chain import TieredCache
from .series import CATALOGUE, Series, Spec, apart, series

__all__ = ["PREFIX", "TieredCacheInstruments", "instrument"]

#: What every instrument name starts with.
PREFIX = "tiered_cache."


class TieredCacheInstruments:
    """The observable instruments of some chains, all read from one shared snapshot.

    The SDK calls one callback per instrument. The first instrument's callback takes a fresh
    ``stats()``; the others reuse it, unless it is older than ``max_age`` seconds (which only
    happens if an SDK calls callbacks out of their registration order), so one collection costs
    one snapshot.

    Args:
        caches: the chains to report on; each one's namespace is its ``namespace`` attribute.
        meter: the meter to create the instruments on.
        raw_hot_keys: attribute hot keys with the keys themselves rather than a hash of them.
        clock: seconds, monotonic; decides a snapshot's age.
    """

    def __init__(
        self,
        caches: Sequence[TieredCache],
        meter: Meter,
        *,
        raw_hot_keys: bool = False,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caches = apart(caches)
        self._raw_hot_keys = raw_hot_keys
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._taken_at = -float("inf")
        self._series: dict[str, Series] = {}
        first = True
        for spec in CATALOGUE:
            if spec.kind == "histogram":
                self._histogram(meter, spec, first)
            else:
                create = (
                    meter.create_observable_counter
                    if spec.kind == "counter"
                    else meter.create_observable_gauge
                )
                create(
                    PREFIX + spec.name,
                    callbacks=[self._samples(spec.name, first)],
                    unit=_unit(spec),
                    description=spec.help,
                )
            first = False

    def add(self, caches: Sequence[TieredCache], *, raw_hot_keys: bool) -> None:
        """Report on ``caches`` too, from the next collection on."""
        if raw_hot_keys != self._raw_hot_keys:
            raise ValueError(
                f"these instruments label hot keys {'raw' if self._raw_hot_keys else 'hashed'}: "
                "instrument every chain of one meter provider with the same raw_hot_keys"
            )
        with self._lock:
            kept = self._open()
            self._caches = apart([*kept, *caches])
            self._taken_at = -float("inf")  # the next collection takes every chain

    def _open(self) -> tuple[TieredCache, ...]:
        """The chains not closed yet (with the lock held). OpenTelemetry has no way to
        unregister: a closed chain is let go here, so that one rebuilt with its namespace
        can be added (and the closed one is no longer reported, nor kept alive)."""
        return tuple(cache for cache in self._caches if not cache.closed)

    def _current(self, name: str, fresh: bool) -> Series:
        with self._lock:
            now = self._clock()
            if fresh or now - self._taken_at > self._max_age or name not in self._series:
                self._caches = self._open()
                snapshots = [cache.stats() for cache in self._caches]
                taken = series(*snapshots, raw_hot_keys=self._raw_hot_keys)
                self._series = {item.spec.name: item for item in taken}
                self._taken_at = now
            return self._series[name]

    def _samples(
        self, name: str, fresh: bool
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(value, labels) for labels, value in self._current(name, fresh).samples
            ]

        return callback

    def _histogram(self, meter: Meter, spec: Spec, fresh: bool) -> None:
        name = PREFIX + spec.name

        def buckets(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(count, {**one.labels, "le": _bound(bound)})
                for one in self._current(spec.name, fresh).histograms
                for bound, count in one.buckets
            ]

        def total(options: CallbackOptions) -> Iterable[Observation]:
            histograms = self._current(spec.name, False).histograms
            return [Observation(one.total, one.labels) for one in histograms]

        def count(options: CallbackOptions) -> Iterable[Observation]:
            histograms = self._current(spec.name, False).histograms
            return [Observation(one.count, one.labels) for one in histograms]

        help_text = spec.help
        meter.create_observable_counter(
            f"{name}.bucket", [buckets], unit="{load}", description=f"{help_text} (by bucket)"
        )
        meter.create_observable_counter(
            f"{name}.sum", [total], unit="s", description=f"{help_text} (sum)"
        )
        meter.create_observable_counter(
            f"{name}.count", [count], unit="{load}", description=f"{help_text} (count)"
        )


def _unit(spec: Spec) -> str:
    return "s" if spec.unit == "seconds" else ""


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _GlobalProvider:
    """The key of the instruments made on the global provider, whichever it is at the time."""


_GLOBAL = _GlobalProvider()

#: The instruments made for each provider. A meter keeps one instrument per name: instruments
#: made again under the same names are ignored by the SDK (their callbacks never called), so a
#: second instrument() adds its chains to the first one's instruments instead. Kept per
#: provider, not per meter: before an SDK is set, the API hands out a new proxy meter on every
#: get_meter call, and the proxies' instruments all land on the SDK's one meter once it is set.
_made: weakref.WeakKeyDictionary[MeterProvider | _GlobalProvider, TieredCacheInstruments] = (
    weakref.WeakKeyDictionary()
)
_made_lock = threading.Lock()


def instrument(
    *caches: TieredCache,
    meter_provider: MeterProvider | None = None,
    raw_hot_keys: bool = False,
) -> TieredCacheInstruments:
    """Create the instruments of ``caches`` on a meter named ``tiered_cache`` of
    ``meter_provider`` (default: the global one, set before or after this call); a later call
    for the same provider adds its ``caches`` to them (ValueError if a chain's series would be
    another's)."""
    named_global = meter_provider is not None and meter_provider is metrics.get_meter_provider()
    key = _GLOBAL if meter_provider is None or named_global else meter_provider
    with _made_lock:
        made = _made.get(key)
        if made is None:
            meter = metrics.get_meter("tiered_cache", meter_provider=meter_provider)
            made = _made[key] = TieredCacheInstruments(caches, meter, raw_hot_keys=raw_hot_keys)
        else:
            made.add(caches, raw_hot_keys=raw_hot_keys)
        return made
