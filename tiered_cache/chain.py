"""TieredCache: read-through over a chain of tiers, fill-up on the way back, and writes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import CodecError, TieredCacheError, TierUnavailable
from .metrics import CacheMetrics
from .singleflight import Flight, SingleFlight
from .tier import MISSING, NEVER, Entry, MissingType, Source, Tier
from .units import parse_duration

if TYPE_CHECKING:
    from .settings import CacheSettings

logger = logging.getLogger(__name__)

Loader = Callable[[], Any]
BatchLoader = Callable[[Sequence[str]], Mapping[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])

#: How often (seconds of the chain's clock) a failing tier is logged again.
WARNING_INTERVAL = 10.0


class TieredCache:
    """A chain of tiers, fastest first, in front of an optional source of truth.

    A read walks the tiers in order. A hit in tier ``i`` fills tiers ``0..i-1``; a miss in
    every tier loads from the source (or the loader passed to :meth:`get`) once per key at a
    time in this process, and fills every tier. A tier that fails is skipped with a warning and
    a counter; the caller only sees an error when the load itself fails.

    Args:
        tiers: the tiers, fastest first.
        source: the system of record; may be omitted when every read passes a loader.
        namespace: keeps this cache's keys apart in shared tiers (used by the tiers' builders).
        ttl: how long a loaded value stays fresh, in seconds; ``None`` leaves it to the tiers.
        negative_ttl: how long a "not found" (``None``) is cached.
        clock: seconds; stamps entries and decides freshness. Wall-clock by default because
            entries are shared between processes through tiers such as Redis.
    """

    def __init__(
        self,
        tiers: Sequence[Tier],
        source: Source | None = None,
        *,
        namespace: str = "default",
        ttl: float | None = None,
        negative_ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.namespace = namespace
        self._tiers = list(tiers)
        self._l1: Tier | None = self._tiers[0] if self._tiers else None
        self._source = source
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._flights = SingleFlight()
        self._metrics = CacheMetrics([tier.name for tier in self._tiers])
        self._l1_hits = self._metrics.l1_hits
        self._l1_hit_cells = self._l1_hits.cells
        self._last_warning: dict[int, float] = {}
        self._closed = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        path: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **overrides: Any,
    ) -> TieredCache:
        """Build from the ``[tiered_cache]`` table of a TOML file, with ``TIERED_CACHE_*``
        environment variables and ``overrides`` taking precedence. Raises ``ConfigError``."""
        from .build import build_cache
        from .settings import load_settings

        return build_cache(load_settings(path, **overrides), clock=clock)

    @classmethod
    def from_settings(
        cls, settings: CacheSettings, *, clock: Callable[[], float] = time.time
    ) -> TieredCache:
        """Build from a settings object."""
        from .build import build_cache

        return build_cache(settings, clock=clock)

    # -- reads --------------------------------------------------------------------------------

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """The tiers, fastest first."""
        return tuple(self._tiers)

    @property
    def source(self) -> Source | None:
        """The source of truth, if the chain has one."""
        return self._source

    def get(self, key: str, loader: Loader | None = None, *, ttl: float | str | None = None) -> Any:
        """The value for ``key``, read through the tiers down to the source.

        Args:
            loader: called (with no arguments) instead of the source on a miss in every tier.
                Its return value is cached; ``None`` is cached for ``negative_ttl``.
            ttl: how long the loaded value stays fresh, overriding the cache's ``ttl``.

        Returns ``None`` when the source has no such item.
        """
        value = self._lookup_l1(key)
        if value is not MISSING:
            return value
        return self._get_slow(key, loader, ttl)

    def _lookup_l1(self, key: str) -> Any:
        """The fresh value in tier 0, or ``MISSING``. The path that matters most: one tier
        call, one clock read, a lock-free hit counter; no flight, no allocation."""
        l1 = self._l1
        if l1 is None:
            return MISSING
        try:
            entry = l1.get(key)
        except Exception as exc:
            self._tier_failed(0, exc)
            return MISSING
        if entry is not MISSING and self._clock() < entry.soft_expiry:
            try:  # LocalCounter.add, inlined: this is the hit path
                self._l1_hit_cells.cell[0] += 1
            except AttributeError:
                self._l1_hits.add()
            return entry.value
        self._metrics.miss(0)
        return MISSING

    def _get_slow(self, key: str, loader: Loader | None, ttl: float | str | None) -> Any:
        """Everything after an L1 miss: the other tiers and the source, one flight per key."""
        value, shared = self._flights.run(
            key, lambda flight: self._read_through(key, flight, loader, ttl)
        )
        if shared:
            self._metrics.waited()
        return value

    def get_many(
        self,
        keys: Iterable[str],
        loader: BatchLoader | None = None,
        *,
        ttl: float | str | None = None,
    ) -> dict[str, Any]:
        """Values for ``keys`` (``None`` for keys the source does not have).

        Each tier is asked once for the keys still missing; what remains is loaded with one
        call to the source's ``load_many`` (or ``loader(keys)``), and filled into every tier.
        """
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Entry] = {}
        remaining = wanted
        now = self._clock()
        for index, tier in enumerate(self._tiers):
            if not remaining:
                break
            hits = self._tier_get_many(index, tier, remaining, now)
            if hits:
                self._fill_many(hits, upto=index)
                found.update(hits)
                remaining = [key for key in remaining if key not in hits]
        if remaining:
            loaded = self._load_many(remaining, loader, ttl)
            self._fill_many(loaded, upto=len(self._tiers))
            found.update(loaded)
        return {key: found[key].value for key in wanted}

    def _read_through(
        self, key: str, flight: Flight, loader: Loader | None, ttl: float | str | None
    ) -> Any:
        now = self._clock()
        for index, tier in enumerate(self._tiers):
            # Tier 0 was just missed by the caller; look again, quietly, because another
            # flight for this key may have filled it between that miss and this flight.
            entry = self._tier_get(index, tier, key, count=index > 0)
            if entry is not MISSING and now < entry.soft_expiry:
                if index > 0:
                    self._metrics.hit(index)
                    self._fill(key, entry, upto=index)
                return entry.value
        entry = self._load(key, loader, ttl)
        if flight.cancelled_fill:
            # Invalidated while loading: what we read may predate the write; serve it to the
            # callers that asked before the invalidation, but keep it out of every tier.
            logger.debug("not caching %r: invalidated during its load", key)
        else:
            self._fill(key, entry, upto=len(self._tiers))
        return entry.value

    # -- loading ------------------------------------------------------------------------------

    def _load(self, key: str, loader: Loader | None, ttl: float | str | None) -> Entry:
        started = self._clock()
        try:
            if loader is not None:
                value = loader()
            elif self._source is not None:
                value = self._source.load(key)
            else:
                raise TieredCacheError(
                    f"cannot load {key!r}: the cache has no source and no loader was given"
                )
        except BaseException:
            self._metrics.load_failure()
            raise
        finished = self._clock()
        self._metrics.load(1, finished - started)
        return self._new_entry(value, finished, finished - started, ttl)

    def _load_many(
        self, keys: Sequence[str], loader: BatchLoader | None, ttl: float | str | None
    ) -> dict[str, Entry]:
        started = self._clock()
        try:
            if loader is not None:
                values = dict(loader(keys))
            elif self._source is not None:
                values = self._source.load_many(keys)
            else:
                raise TieredCacheError(
                    "cannot load keys: the cache has no source and no loader was given"
                )
        except BaseException:
            self._metrics.load_failure()
            raise
        finished = self._clock()
        duration = finished - started
        self._metrics.load(len(keys), duration)
        return {
            key: self._new_entry(values.get(key, MISSING), finished, duration, ttl) for key in keys
        }

    def _new_entry(self, value: Any, now: float, duration: float, ttl: float | str | None) -> Entry:
        if value is MISSING or value is None:
            lifetime: float | None = self._negative_ttl
            value = None
        elif ttl is not None:
            lifetime = parse_duration(ttl)
        else:
            lifetime = self._ttl
        expiry = NEVER if lifetime is None else now + lifetime
        return Entry(
            value=value,
            loaded_at=now,
            soft_expiry=expiry,
            hard_expiry=expiry,
            load_duration=duration,
        )

    # -- writes -------------------------------------------------------------------------------

    def set(self, key: str, value: Any, *, ttl: float | str | None = None) -> None:
        """Write ``value``: to the source first (if the chain has one), then to every tier.

        If the source write fails, no tier changes. A value a tier cannot encode raises
        :class:`~tiered_cache.CodecError` before anything is written to that tier.
        """
        if self._source is not None:
            self._source.store(key, value)
        now = self._clock()
        entry = self._new_entry(value, now, 0.0, ttl)
        self._cancel_inflight_fill(key)
        self._fill(key, entry, upto=len(self._tiers))

    def invalidate(self, key: str) -> None:
        """Remove ``key`` from every tier (the source is not touched)."""
        self.invalidate_many([key])

    def invalidate_many(self, keys: Iterable[str]) -> None:
        """Remove ``keys`` from every tier (the source is not touched)."""
        keys = list(dict.fromkeys(keys))
        for key in keys:
            self._cancel_inflight_fill(key)
        for index, tier in enumerate(self._tiers):
            try:
                tier.delete_many(keys)
            except Exception as exc:
                self._tier_failed(index, exc)

    def clear(self) -> None:
        """Remove every entry of this cache from every tier."""
        for index, tier in enumerate(self._tiers):
            try:
                tier.clear()
            except Exception as exc:
                self._tier_failed(index, exc)

    def _cancel_inflight_fill(self, key: str) -> None:
        flight = self._flights.in_flight(key)
        if flight is not None:
            flight.cancelled_fill = True

    # -- the decorator ------------------------------------------------------------------------

    def cached(self, key: str, *, ttl: float | str | None = None) -> Callable[[F], F]:
        """Cache a function's results under a key template such as ``"tweet:{tweet_id}"``.

        The template's names must be parameters of the function; the function body is the
        loader. The wrapped function gains ``invalidate(**names)`` and ``key_for(**names)``.
        """
        from .decorator import cached

        return cached(self, key, ttl=ttl)

    # -- tiers --------------------------------------------------------------------------------

    def _tier_get(
        self, index: int, tier: Tier, key: str, *, count: bool = True
    ) -> Entry | MissingType:
        try:
            entry = tier.get(key)
        except Exception as exc:
            self._tier_failed(index, exc)
            return MISSING
        if count and entry is MISSING:
            self._metrics.miss(index)
        return entry

    def _tier_get_many(
        self, index: int, tier: Tier, keys: Sequence[str], now: float
    ) -> dict[str, Entry]:
        try:
            entries = tier.get_many(keys)
        except Exception as exc:
            self._tier_failed(index, exc)
            return {}
        fresh = {key: entry for key, entry in entries.items() if now < entry.soft_expiry}
        self._metrics.hit(index, len(fresh))
        self._metrics.miss(index, len(keys) - len(fresh))
        return fresh

    def _fill(self, key: str, entry: Entry, *, upto: int) -> None:
        # Deepest first: if a shared tier refuses the value (CodecError), no faster tier
        # holds a copy the others could never see.
        for index in range(upto - 1, -1, -1):
            try:
                self._tiers[index].set(key, entry)
            except CodecError:
                raise
            except Exception as exc:
                self._tier_failed(index, exc)
            else:
                self._metrics.fill(index)

    def _fill_many(self, entries: Mapping[str, Entry], *, upto: int) -> None:
        if not entries:
            return
        for index in range(upto - 1, -1, -1):
            try:
                self._tiers[index].set_many(entries)
            except CodecError:
                raise
            except Exception as exc:
                self._tier_failed(index, exc)
            else:
                self._metrics.fill(index, len(entries))

    def _tier_failed(self, index: int, exc: Exception) -> None:
        if isinstance(exc, TierUnavailable):
            self._metrics.skip(index)
        else:
            self._metrics.error(index)
        now = self._clock()
        last = self._last_warning.get(index)
        if last is None or now - last >= WARNING_INTERVAL:
            self._last_warning[index] = now
            logger.warning(
                "tier %r failed (%s: %s); reading through to the next tier",
                self._tiers[index].name,
                type(exc).__name__,
                exc,
            )

    # -- reporting and lifecycle -------------------------------------------------------------

    def hot_keys(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` hottest keys with their estimated rate per second, if a tier tracks them."""
        for tier in self._tiers:
            policy = getattr(tier, "policy", None)
            report = getattr(policy, "hot_keys", None)
            if callable(report):
                result: list[tuple[str, float]] = report(n)
                return result
        return []

    def stats(self) -> dict[str, Any]:
        """A JSON-serializable snapshot: per-tier hits, misses, fills, errors and skips, loads,
        load failures, single-flight waits, and the hottest keys."""
        snapshot = self._metrics.snapshot()
        snapshot["namespace"] = self.namespace
        snapshot["hot_keys"] = [[key, rate] for key, rate in self.hot_keys(10)]
        return snapshot

    def close(self) -> None:
        """Close every tier and the source. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for tier in self._tiers:
            try:
                tier.close()
            except Exception:
                logger.exception("closing tier %r failed", tier.name)
        if self._source is not None:
            try:
                self._source.close()
            except Exception:
                logger.exception("closing the source failed")

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = " -> ".join(tier.name for tier in self._tiers) or "no tiers"
        source = self._source.name if self._source is not None else "loader"
        return f"<TieredCache {self.namespace!r}: {names} -> {source}>"
