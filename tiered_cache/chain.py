"""TieredCache: read-through over a chain of tiers, fill-up on the way back, and writes."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from ._loading import BatchLoader, ChainLoading, Loader
from .bus import Bus
from .coherence import BusLink, CoherenceHandlers
from .errors import InvalidationIncomplete
from .invalidation_log import InvalidationLog
from .protection import Protection, xfetch_due
from .reporting import report_of, source_report
from .singleflight import Flight
from .tier import MISSING, Entry, MissingType, Source, Tier

if TYPE_CHECKING:
    from .decorator import CachedFunction
    from .settings import CacheSettings

logger = logging.getLogger(__name__)

__all__ = ["BatchLoader", "Loader", "TieredCache"]

P = ParamSpec("P")
R = TypeVar("R")


class _RefreshDue:
    """Returned by the L1 lookup instead of a value when XFetch says: refresh this key now."""


_REFRESH_DUE = _RefreshDue()


class TieredCache(ChainLoading):
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
        protection: stale serving, early refresh, load timeouts and leases (see
            :class:`~tiered_cache.protection.Protection`; its defaults suit a throttled source).
        sleep: how to wait between looks while another process holds a key's lease.
        rng: uniform numbers in [0, 1) for the early-refresh draw.
        background: runs a background refresh; by default a small thread pool. Tests pass a
            list's ``append`` to decide themselves when refreshes run.
        bus: announces writes and invalidations to the other processes and applies theirs to
            this chain's in-process tiers (tiers with ``local = True``).
        max_stale_when_disconnected: while the bus is down, in-process tiers serve only what
            was filled during the outage, for at most this many seconds; 0: not at all.
        write_policy: ``"through"``: :meth:`set` writes the source, then every tier;
            ``"around"``: it writes the source, then invalidates every tier.
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
        protection: Protection | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        background: Callable[[Callable[[], None]], object] | None = None,
        bus: Bus | None = None,
        max_stale_when_disconnected: float = 1.0,
        write_policy: Literal["through", "around"] = "through",
    ) -> None:
        super().__init__(
            tiers,
            source,
            ttl=ttl,
            negative_ttl=negative_ttl,
            clock=clock,
            protection=protection,
            sleep=sleep,
            background=background,
        )
        self.namespace = namespace
        self._disconnected_bound = max_stale_when_disconnected
        self._set_l1(self._tiers[0] if self._tiers else None)
        self._l1_hits = self._metrics.l1_hits
        self._l1_hit_cells = self._l1_hits.cells
        self._random = rng
        self._beta = self._protection.early_refresh_beta
        self._xfetch_window = self._protection.xfetch_window_factor
        self._write_policy = write_policy
        #: Every invalidation, so that get_many can drop the copies one overtook.
        self._invalidation_log = InvalidationLog()
        self._bus_link: BusLink | None = None
        if bus is not None:
            handlers = CoherenceHandlers(
                drop_keys=self._drop_local_keys,
                drop_prefixes=self._drop_local_prefixes,
                drop_everything=self._drop_local_everything,
                set_connected=self._set_bus_connected,
            )
            self._bus_link = BusLink(bus, handlers, self._metrics)

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
        environment variables and ``overrides`` taking precedence. Raises ``ConfigError``.

        Args:
            path: the TOML file; ``None`` builds from the environment (and ``overrides``) alone.
            clock: wall-clock seconds, for expiries (tests pass a fake clock).
            **overrides: fields of the ``[tiered_cache]`` table, highest priority of all:
                ``TieredCache.from_config("tiered_cache.toml", namespace="test", ttl="5s")``.
                A wrong name or value raises ``ConfigError`` naming the field.
        """
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
        if value is MISSING or value is _REFRESH_DUE:
            return self._get_slow(key, loader, ttl, value is _REFRESH_DUE)
        return value

    def _lookup_l1(self, key: str) -> Any:
        """The fresh value in tier 0, ``MISSING``, or ``_REFRESH_DUE``.

        The path that matters most: one clock read, one tier call, a lock-free hit counter;
        no flight, no allocation. The XFetch draw is only made near the entry's expiry.
        """
        get_at = self._l1_get_at
        if get_at is None:
            return MISSING
        now = self._clock()
        try:
            entry = get_at(key, now)
        except Exception as exc:
            self._tier_failed(0, exc)
            return MISSING
        if entry is not MISSING:
            soft = entry.soft_expiry
            if now < soft:
                try:  # LocalCounter.add, inlined: this is the hit path
                    self._l1_hit_cells.cell[0] += 1
                except AttributeError:
                    self._l1_hits.add()
                if now >= soft - entry.load_duration * self._xfetch_window and xfetch_due(
                    now, soft, entry.load_duration, self._beta, self._random()
                ):
                    return _REFRESH_DUE
                return entry.value
        self._metrics.miss(0)
        return MISSING

    def _set_l1(self, tier: Tier | None) -> None:
        """Make ``tier`` the one :meth:`_lookup_l1` reads (``None``: no L1 lookup). A tier
        with ``get_at`` (the memory tier) is handed the chain's clock reading."""
        self._l1 = tier
        self._l1_get_at: Callable[[str, float], Entry | MissingType] | None = None
        if tier is not None:
            get = tier.get
            self._l1_get_at = getattr(tier, "get_at", None) or (lambda key, now: get(key))

    def _get_slow(
        self, key: str, loader: Loader | None, ttl: float | str | None, early: bool = False
    ) -> Any:
        """Everything after an L1 miss: the other tiers and the source, one flight per key.

        ``early``: the L1 entry is fresh but XFetch picked this read to refresh it; serve the
        entry and refresh in the background.
        """
        if early and self._l1 is not None:
            self._metrics.count("early_refreshes")
            self._refresh_in_background(key, loader, ttl, None)
            entry = self._tier_get(0, self._l1, key, count=False)
            if entry is not MISSING and not entry.is_expired(self._clock()):
                return entry.value
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

        Args:
            keys: the keys to read; duplicates are read once.
            loader: called instead of the source with the list of keys no tier had; returns a
                mapping of the keys it found to their values (a key it leaves out, or maps to
                ``None``, is cached as not found for ``negative_ttl``).
            ttl: how long the loaded values stay fresh, overriding the cache's ``ttl``.

        Returns a dict with every requested key.
        """
        wanted = list(dict.fromkeys(keys))
        stale: dict[str, Entry] = {}
        mark = self._invalidation_log.mark()
        found = self._read_tiers(wanted, stale)
        remaining = [key for key in wanted if key not in found]
        if remaining and stale and loader is None and self._protection.stale_while_revalidate:
            # Stale keys are served now and refreshed one by one in the background.
            for key in remaining:
                if key in stale:
                    found[key] = stale[key]
                    self._metrics.count("stale_served")
                    self._refresh_in_background(key, None, ttl, stale[key])
            remaining = [key for key in remaining if key not in stale]
        values = {key: entry.value for key, entry in found.items()}
        if remaining:
            # One batch for the keys no other caller is loading; wait for the others' loads.
            led, joined = self._flights.claim(remaining)
            if led:
                values.update(self._load_batch(led, loader, ttl, stale))
            for key, flight in joined.items():
                values[key] = flight.wait()
                self._metrics.waited()
        overtaken = self._invalidation_log.overtaken(mark, list(values))
        if overtaken:
            # Invalidated while this batch read: what it copied of them into the in-process
            # tiers may predate the invalidation.
            self._delete_local(overtaken)
        return {key: values[key] for key in wanted}

    def lookup_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The fresh entries the tiers hold for ``keys``, without loading anything: keys no
        tier holds fresh are left out. A hit fills the faster tiers, as a read does.

        For callers that own the values themselves (Django's cache API): nothing is loaded,
        refreshed or served stale.
        """
        wanted = list(dict.fromkeys(keys))
        mark = self._invalidation_log.mark()
        found = self._read_tiers(wanted, {})
        overtaken = self._invalidation_log.overtaken(mark, list(found))
        if overtaken:
            self._delete_local(overtaken)  # as in get_many
        return found

    def _read_tiers(self, keys: list[str], stale: dict[str, Entry]) -> dict[str, Entry]:
        """One ``get_many`` per tier for the keys still missing, fastest tier first; hits fill
        the faster tiers. Stale entries still servable go into ``stale``."""
        found: dict[str, Entry] = {}
        remaining = keys
        now = self._clock()
        for index, tier in enumerate(self._tiers):
            if not remaining:
                break
            if index in self._bypassed:
                continue
            hits = self._tier_get_many(index, tier, remaining, now, stale)
            if hits and index in self._bounded:
                self._metrics.count("bus_down_served", len(hits))
            if hits:
                self._fill_many(hits, upto=index)
                found.update(hits)
                remaining = [key for key in remaining if key not in hits]
        return found

    def _load_batch(
        self,
        flights: dict[str, Flight],
        loader: BatchLoader | None,
        ttl: float | str | None,
        stale: dict[str, Entry],
    ) -> dict[str, Any]:
        """Load the keys this caller leads (in batches, under their leases), fill the tiers,
        land each key's flight as soon as its value is there."""
        values: dict[str, Any] = {}

        def ready(entries: Mapping[str, Entry]) -> None:
            landed = {key: entry.value for key, entry in entries.items()}
            self._flights.land({key: flights[key] for key in landed}, landed, None)
            values.update(landed)

        try:
            self._load_batch_entries(flights, loader, ttl, stale, ready)
        except BaseException as exc:
            self._flights.land({k: f for k, f in flights.items() if k not in values}, {}, exc)
            raise
        return values

    def _read_through(
        self, key: str, flight: Flight, loader: Loader | None, ttl: float | str | None
    ) -> Any:
        now = self._clock()
        stale: Entry | None = None
        for index, tier in enumerate(self._tiers):
            if index in self._bypassed:
                continue
            # Tier 0 was just missed by the caller; look again, quietly, because another
            # flight for this key may have filled it between that miss and this flight.
            entry = self._tier_get(index, tier, key, count=index > 0)
            if entry is MISSING:
                continue
            if now < entry.soft_expiry:
                if index > 0:
                    self._metrics.hit(index)
                    self._fill(key, entry, range(index))
                    if flight.cancelled_fill:
                        # Invalidated (here or on the bus) while we copied it up: the copy may
                        # be older than the write. Fill first, check second: no window left.
                        self._delete_local([key])
                if self._bounded:
                    self._count_bus_down(index)
                return entry.value
            if stale is None and now < entry.hard_expiry:
                stale = entry
        if self._bounded:
            self._count_bus_down(len(self._tiers))
        if stale is not None and self._protection.stale_while_revalidate:
            self._metrics.count("stale_served")
            self._refresh_in_background(key, loader, ttl, stale)
            return stale.value
        return self._load_and_fill(key, flight, loader, ttl, stale).value

    # -- writes -------------------------------------------------------------------------------

    def set(self, key: str, value: Any, *, ttl: float | str | None = None) -> None:
        """Write ``value`` for ``key`` and make every process see it.

        With a source, the source is written first; if that fails, no tier changes. Then, with
        the ``"through"`` write policy, every tier gets the new value; with ``"around"``, every
        tier drops the key. Other processes drop their in-process copy (the bus). A value a tier
        cannot encode raises :class:`~tiered_cache.CodecError` before that tier is written.
        """
        if self._source is not None:
            self._source.store(key, value)
        if self._write_policy == "around" and self._source is not None:
            self.invalidate_many([key])
            return
        entry = self._new_entry(value, self._clock(), 0.0, ttl)
        shared = [index for index in range(len(self._tiers)) if index not in self._local]
        for index in reversed(shared):
            self._fill(key, entry, range(index, index + 1))
        # Loads in flight read the source before this write: none of them may fill now.
        self._invalidation_log.record_keys([key])
        self._cancel_inflight_fill(key)
        for index in sorted(self._local, reverse=True):
            self._fill(key, entry, range(index, index + 1))
        if self._bus_link is not None:
            self._bus_link.announce([key])

    def invalidate(self, key: str) -> None:
        """Remove ``key`` from every tier and every process's memory (not from the source)."""
        self.invalidate_many([key])

    def invalidate_many(self, keys: Iterable[str], *, strict: bool = False) -> None:
        """Remove ``keys`` from every tier and every process's memory (not from the source).

        Shared tiers go first, then in-flight loads are told not to fill, then the in-process
        tiers, then the bus: a reader that starts after any step cannot bring an old copy back.
        A tier or bus that fails is logged and counted; with ``strict`` (the stream follower,
        which must not move past a change it could not announce) it then raises
        :class:`~tiered_cache.InvalidationIncomplete`.
        """
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        failed: list[str] = []
        for index, tier in reversed(list(enumerate(self._tiers))):
            if index in self._local:
                continue
            try:
                tier.delete_many(keys)
            except Exception as exc:
                self._tier_failed(index, exc)
                failed.append(f"tier {tier.name!r} ({type(exc).__name__}: {exc})")
        self._drop_local_keys(keys)
        if self._bus_link is not None and not self._bus_link.announce(keys):
            failed.append("the invalidation bus")
        if strict and failed:
            raise InvalidationIncomplete(
                f"invalidating {len(keys)} key(s) did not reach {', '.join(failed)}"
            )

    def invalidate_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix`` ("drop everything about user 42":
        ``invalidate_prefix("user:42:")``), in every tier and every process's memory.

        A tier that can delete by prefix does (Redis: SCAN and UNLINK, proportional to the
        keys of this cache's namespace); any other tier is cleared whole, which is always safe.
        """
        if not prefix:
            raise ValueError("an empty prefix would drop everything: use clear()")
        for index, tier in reversed(list(enumerate(self._tiers))):
            if index not in self._local:
                self._delete_prefix(index, tier, prefix)
        self._drop_local_prefixes([prefix], self._clock())
        if self._bus_link is not None:
            self._bus_link.announce(prefixes=[prefix], at=self._clock())

    def clear(self, *, strict: bool = False) -> None:
        """Remove every entry of this cache from every tier and every process's memory;
        ``strict`` as for :meth:`invalidate_many`."""
        failed: list[str] = []
        for index, tier in reversed(list(enumerate(self._tiers))):
            if index in self._local:
                continue
            try:
                tier.clear()
            except Exception as exc:
                self._tier_failed(index, exc)
                failed.append(f"tier {tier.name!r} ({type(exc).__name__}: {exc})")
        self._drop_local_everything()
        if self._bus_link is not None and not self._bus_link.announce(clear=True):
            failed.append("the invalidation bus")
        if strict and failed:
            raise InvalidationIncomplete(f"clearing did not reach {', '.join(failed)}")

    # -- in-process tiers and the bus ---------------------------------------------------------

    def _drop_local_keys(self, keys: Sequence[str]) -> None:
        self._invalidation_log.record_keys(keys)
        for key in keys:
            self._cancel_inflight_fill(key)
        self._delete_local(keys)

    def _drop_local_prefixes(self, prefixes: Sequence[str], at: float) -> None:
        self._invalidation_log.record_prefixes(prefixes)
        with self._background_lock:
            pending = [key for key in self._refreshing if key.startswith(tuple(prefixes))]
        for key in pending:
            self._cancel_inflight_fill(key)
        for index in self._local:
            for prefix in prefixes:
                self._delete_prefix(index, self._tiers[index], prefix)

    def _drop_local_everything(self) -> None:
        self._invalidation_log.record_everything()
        for index in self._local:
            try:
                self._tiers[index].clear()
            except Exception as exc:
                self._tier_failed(index, exc)

    def _count_bus_down(self, index: int) -> None:
        """A read while the bus is down: answered by a bounded in-process tier, or not."""
        self._metrics.count("bus_down_served" if index in self._bounded else "bus_down_bypasses")

    def _set_bus_connected(self, connected: bool) -> None:
        """While the bus is down in-process tiers would miss invalidations: they serve only
        copies filled during the outage, each for at most ``max_stale_when_disconnected``
        (or are bypassed when that is 0), so the source sees about one load per key per
        bound instead of one per read. They are cleared both ways: on the way down nothing
        stale stays for later, on the way up nothing from the outage is trusted."""
        self._bus_down = not connected
        if connected:
            self._drop_local_everything()
            self._bypassed = self._bounded = frozenset()
            self._set_l1(self._tiers[0] if self._tiers else None)
        else:
            if self._disconnected_bound > 0:
                self._bounded_for = self._disconnected_bound
                self._bounded = self._local
            else:
                self._bypassed = self._local
            if 0 in self._local:
                # Reads take the slow path while the bus is down: it counts bounded serves.
                self._set_l1(None)
            self._drop_local_everything()

    # -- the decorator ------------------------------------------------------------------------

    def cached(
        self, key: str, *, ttl: float | str | None = None
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Cache a function's results under a key template such as ``"tweet:{tweet_id}"``.

        The template's names must be parameters of the function; the function body is the
        loader. The wrapped function gains ``invalidate(**names)`` and ``key_for(**names)``.
        """
        from .decorator import cached

        return cached(self, key, ttl=ttl)

    # -- reporting and lifecycle -------------------------------------------------------------

    def hot_keys(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` hottest keys with their estimated rate per second, if a tier tracks them."""
        for tier in self._tiers:
            report = getattr(tier, "hot_keys", None)
            if callable(report):
                result: list[tuple[str, float]] = report(n)
                if result:
                    return result
        return []

    def stats(self) -> dict[str, Any]:
        """A JSON-serializable snapshot: per-tier hits, misses, fills, errors and skips (and what
        a tier reports itself: evictions, breaker state), loads, load failures, the load latency
        histogram, single-flight waits, the source's report, and the hottest keys."""
        snapshot = self._metrics.snapshot()
        for tier, counters in zip(self._tiers, snapshot["tiers"], strict=True):
            counters.update(report_of(tier))  # evictions, breaker state: what tiers know
        snapshot["source"] = (
            None
            if self._source is None
            else {
                "name": self._source.name,
                **source_report(self._source, snapshot["source_reads_saved"]),
            }
        )
        snapshot["namespace"] = self.namespace
        snapshot["bus"] = (
            None if self._bus_link is None else ("down" if self._bus_down else "connected")
        )
        snapshot["hot_keys"] = [[key, rate] for key, rate in self.hot_keys(10)]
        return snapshot

    def close(self) -> None:
        """Close every tier and the source. Idempotent."""
        with self._background_lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if self._bus_link is not None:
            try:
                self._bus_link.close()
            except Exception:
                logger.exception("closing the invalidation bus failed")
        if executor is not None:
            # Queued refreshes are dropped; running ones finish against still-open tiers.
            executor.shutdown(wait=True, cancel_futures=True)
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
