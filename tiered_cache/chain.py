"""TieredCache: read-through over a chain of tiers, fill-up on the way back, and writes."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .bus import Bus
from .coherence import BusLink, CoherenceHandlers
from .errors import CodecError, LoadTimeout, TieredCacheError, TierUnavailable
from .leases import LeasingTier
from .metrics import CacheMetrics
from .protection import Protection, xfetch_due
from .singleflight import Flight, SingleFlight
from .tier import MISSING, NEVER, Entry, MissingType, Source, Tier
from .units import parse_duration

if TYPE_CHECKING:
    from .settings import CacheSettings

logger = logging.getLogger(__name__)

Loader = Callable[[], Any]
BatchLoader = Callable[[Sequence[str]], Mapping[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: How often (seconds of the chain's clock) a failing tier is logged again.
WARNING_INTERVAL = 10.0


class _RefreshDue:
    """Returned by the L1 lookup instead of a value when XFetch says: refresh this key now."""


_REFRESH_DUE = _RefreshDue()


class _ServeStale(Exception):
    """A timed load gave up on its soft timeout: serve the stale value instead."""


class _Handoff:
    """Between a caller waiting for a timed load and the worker running it: whoever comes
    second (the caller giving up, or the worker finishing) decides who fills the tiers."""

    __slots__ = ("delivered", "flight", "lock", "orphaned", "token")

    def __init__(self, flight: Flight, token: str | None) -> None:
        self.lock = threading.Lock()
        self.flight = flight
        self.token = token
        self.orphaned = False
        self.delivered = False


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
        protection: stale serving, early refresh, load timeouts and leases (see
            :class:`~tiered_cache.protection.Protection`; its defaults suit a throttled source).
        sleep: how to wait between looks while another process holds a key's lease.
        rng: uniform numbers in [0, 1) for the early-refresh draw.
        background: runs a background refresh; by default a small thread pool. Tests pass a
            list's ``append`` to decide themselves when refreshes run.
        bus: announces writes and invalidations to the other processes and applies theirs to
            this chain's in-process tiers (tiers with ``local = True``).
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
        write_policy: Literal["through", "around"] = "through",
    ) -> None:
        self.namespace = namespace
        self._tiers = list(tiers)
        self._l1: Tier | None = self._tiers[0] if self._tiers else None
        self._source = source
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._flights = SingleFlight()
        #: Background refreshes have flights of their own: a reader never joins one (it would
        #: get the refresh's error instead of the stale value), and a refresh never joins a
        #: reader's flight (it would get the stale value back and load nothing).
        self._refresh_flights = SingleFlight()
        self._metrics = CacheMetrics([tier.name for tier in self._tiers])
        self._l1_hits = self._metrics.l1_hits
        self._l1_hit_cells = self._l1_hits.cells
        self._last_warning: dict[int, float] = {}
        self._closed = False
        self._protection = protection = protection or Protection()
        self._sleep = sleep
        self._random = rng
        self._beta = protection.early_refresh_beta
        self._xfetch_window = protection.xfetch_window_factor
        self._leasing = self._find_leasing_tier()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[Future[Any]] = set()
        self._background = background or self._submit
        self._background_lock = threading.Lock()
        #: Keys with a background refresh queued or running (one at a time per key).
        self._refreshing: set[str] = set()
        #: Loads that outlived their caller (soft or hard timeout) and will fill when done.
        self._orphans: dict[str, list[Flight]] = {}
        self._write_policy = write_policy
        #: In-process tiers: the ones the bus keeps coherent, bypassed while it is down.
        self._local = frozenset(
            index for index, tier in enumerate(self._tiers) if getattr(tier, "local", False)
        )
        #: Tiers not used right now (the local ones, while the bus is disconnected).
        self._bypassed: frozenset[int] = frozenset()
        #: Bumped by every invalidation: get_many compares it around its fills.
        self._invalidations = 0
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
        if value is MISSING or value is _REFRESH_DUE:
            return self._get_slow(key, loader, ttl, value is _REFRESH_DUE)
        return value

    def _lookup_l1(self, key: str) -> Any:
        """The fresh value in tier 0, ``MISSING``, or ``_REFRESH_DUE``.

        The path that matters most: one tier call, one clock read, a lock-free hit counter;
        no flight, no allocation. The XFetch draw is only made near the entry's expiry.
        """
        l1 = self._l1
        if l1 is None:
            return MISSING
        try:
            entry = l1.get(key)
        except Exception as exc:
            self._tier_failed(0, exc)
            return MISSING
        if entry is not MISSING:
            now = self._clock()
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
        """
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Entry] = {}
        stale: dict[str, Entry] = {}
        remaining = wanted
        now = self._clock()
        invalidations = self._invalidations
        for index, tier in enumerate(self._tiers):
            if not remaining:
                break
            if index in self._bypassed:
                continue
            hits = self._tier_get_many(index, tier, remaining, now, stale)
            if hits:
                self._fill_many(hits, upto=index)
                found.update(hits)
                remaining = [key for key in remaining if key not in hits]
        if remaining and stale and loader is None and self._protection.stale_while_revalidate:
            # Stale keys are served now and refreshed one by one in the background.
            for key in remaining:
                if key in stale:
                    found[key] = stale[key]
                    self._metrics.count("stale_served")
                    self._refresh_in_background(key, None, ttl, stale[key])
            remaining = [key for key in remaining if key not in stale]
        if remaining:
            try:
                loaded = self._load_many(remaining, loader, ttl)
            except Exception as exc:
                if not self._protection.fail_safe or any(key not in stale for key in remaining):
                    raise
                loaded = {key: self._fail_safe(key, stale[key], exc) for key in remaining}
            else:
                self._fill_many(loaded, upto=len(self._tiers))
            found.update(loaded)
        if self._invalidations != invalidations:
            # An invalidation came while this batch read: some of what it copied into the
            # in-process tiers may predate it. Drop those copies rather than guess which.
            self._delete_local(list(found))
        return {key: found[key].value for key in wanted}

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
                return entry.value
            if stale is None and now < entry.hard_expiry:
                stale = entry
        if stale is not None and self._protection.stale_while_revalidate:
            self._metrics.count("stale_served")
            self._refresh_in_background(key, loader, ttl, stale)
            return stale.value
        return self._load_and_fill(key, flight, loader, ttl, stale).value

    # -- loading ------------------------------------------------------------------------------

    def _load_and_fill(
        self,
        key: str,
        flight: Flight,
        loader: Loader | None,
        ttl: float | str | None,
        stale: Entry | None,
        *,
        background: bool = False,
    ) -> Entry:
        """Load ``key`` under its lease, with timeouts and fail-safe, and fill the tiers.

        Returns the entry to serve: the loaded one, one another process filled while this one
        waited for the lease, or ``stale`` when the source failed or was too slow.
        """
        token: str | None = None
        if self._leasing is not None:
            token, filled = self._lease_or_wait(key)
            if filled is not None:
                return filled
        try:
            entry = self._timed_load(
                key, flight, loader, ttl, stale, token=token, background=background
            )
        except _ServeStale:
            assert stale is not None
            self._metrics.count("stale_served_on_slow_load")
            return stale
        except Exception as exc:
            if token is not None:
                self._release_lease(key, token)
            if stale is None or not self._protection.fail_safe:
                raise
            return self._fail_safe(key, stale, exc)
        self._store_loaded(key, flight, entry, token)
        return entry

    def _fail_safe(self, key: str, stale: Entry, exc: Exception) -> Entry:
        """Serve ``stale`` for a failed load; for ``fail_safe_throttle`` seconds, tier 0 serves
        it as fresh so the failing source is not asked again by every read."""
        self._metrics.count("stale_served_on_error")
        logger.warning(
            "serving a stale value of %r: its load failed (%s: %s)", key, type(exc).__name__, exc
        )
        self._rest_source(key, stale)
        return stale

    def _rest_source(self, key: str, stale: Entry) -> None:
        """For ``fail_safe_throttle`` seconds, tier 0 serves ``stale`` as fresh, so a failing
        source is not asked again by every read."""
        now = self._clock()
        throttle = self._protection.fail_safe_throttle
        if throttle > 0 and self._tiers and now < stale.hard_expiry:
            calm = replace(stale, soft_expiry=min(now + throttle, stale.hard_expiry))
            self._fill(key, calm, range(1))

    def _timed_load(
        self,
        key: str,
        flight: Flight,
        loader: Loader | None,
        ttl: float | str | None,
        stale: Entry | None,
        *,
        token: str | None,
        background: bool,
    ) -> Entry:
        """:meth:`_load`, bounded by the soft timeout (when a stale value can stand in) and
        the hard timeout. A load that outlives its caller keeps running and fills when done."""
        protection = self._protection
        soft = protection.soft_timeout if stale is not None else None
        hard = protection.hard_timeout
        if background or (soft is None and hard is None):
            return self._load(key, loader, ttl)
        handoff = _Handoff(flight, token)
        future = self._run_tracked(self._load_handing_off, key, loader, ttl, handoff)
        if soft is not None:
            try:
                return future.result(timeout=soft)
            except FutureTimeout:
                if self._orphan(key, handoff):
                    self._metrics.count("soft_timeouts")
                    raise _ServeStale() from None
                return future.result()  # it finished just now
        try:
            return future.result(timeout=hard)
        except FutureTimeout:
            if not self._orphan(key, handoff):
                return future.result()
            self._metrics.count("hard_timeouts")
            raise LoadTimeout(
                f"loading {key!r} took longer than the hard timeout of {hard}s; "
                "it goes on in the background and fills the cache when it finishes"
            ) from None

    def _orphan(self, key: str, handoff: _Handoff) -> bool:
        """Hand a running load over to its worker; False if it already delivered."""
        with handoff.lock:
            if handoff.delivered:
                return False
            handoff.orphaned = True
        # The flight ends when its caller gives up, so invalidations from now on must find
        # this load among the orphans to cancel its fill.
        with self._background_lock:
            self._orphans.setdefault(key, []).append(handoff.flight)
        return True

    def _load_handing_off(
        self, key: str, loader: Loader | None, ttl: float | str | None, handoff: _Handoff
    ) -> Entry:
        """Runs on a worker: load, then give the entry to the caller, or, if the caller gave
        up waiting, fill the tiers here."""
        try:
            entry = self._load(key, loader, ttl)
        except BaseException:
            with handoff.lock:
                orphaned = handoff.orphaned
                handoff.delivered = True
            if orphaned:
                self._forget_orphan(key, handoff.flight)
                if handoff.token is not None:
                    self._release_lease(key, handoff.token)
            raise
        with handoff.lock:
            orphaned = handoff.orphaned
            handoff.delivered = True
        if orphaned:
            try:
                self._store_loaded(key, handoff.flight, entry, handoff.token)
            finally:
                self._forget_orphan(key, handoff.flight)
        return entry

    def _forget_orphan(self, key: str, flight: Flight) -> None:
        with self._background_lock:
            flights = self._orphans.get(key, [])
            if flight in flights:
                flights.remove(flight)
            if not flights:
                self._orphans.pop(key, None)

    def _store_loaded(self, key: str, flight: Flight, entry: Entry, token: str | None) -> None:
        """Fill every tier with a loaded entry, unless an invalidation came while it loaded."""
        if flight.cancelled_fill:
            # What we read may predate the write: serve it to the callers that asked before
            # the invalidation, but keep it out of every tier.
            logger.debug("not caching %r: invalidated during its load", key)
            if token is not None:
                self._release_lease(key, token)
            return
        if token is None or self._leasing is None:
            self._fill(key, entry, range(len(self._tiers)))
            return
        index, tier = self._leasing
        self._fill(key, entry, range(index + 1, len(self._tiers)))
        try:
            kept = tier.fill_with_lease(key, entry, token)
        except CodecError:
            self._release_lease(key, token)
            raise
        except Exception as exc:
            self._tier_failed(index, exc)
            kept = True  # the shared tier is down: nothing there to protect
        else:
            self._metrics.fill(index)
        if not kept:
            # The lease was deleted by an invalidation (or expired): a writer came after our
            # read; the old value must not reach any tier.
            self._metrics.count("lease_lost")
            return
        self._fill(key, entry, range(index))

    def _lease_or_wait(self, key: str) -> tuple[str | None, Entry | None]:
        """``(token, None)`` when this process should load; ``(None, entry)`` when the lease
        holder filled the key meanwhile; ``(None, None)`` to load without a lease (the shared
        tier is down, or the holder took longer than ``lease_wait``).

        Each look is one round trip: take the lease if free, and read the key.
        """
        assert self._leasing is not None
        index, tier = self._leasing
        protection = self._protection
        deadline: float | None = None
        try:
            while True:
                token, current = tier.acquire_lease(key, protection.lease_ttl)
                if current is not MISSING and self._clock() < current.soft_expiry:
                    # The previous holder filled it since our last look: no load needed.
                    if token is not None:
                        tier.release_lease(key, token)
                    self._metrics.hit(index)
                    self._fill(key, current, range(index))
                    return None, current
                if token is not None:
                    if deadline is not None:  # a holder that died left its lease to expire
                        self._metrics.count("lease_takeovers")
                    return token, None
                now = self._clock()
                if deadline is None:
                    self._metrics.count("lease_waits")
                    deadline = now + protection.lease_wait
                elif now >= deadline:
                    self._metrics.count("lease_wait_expired")
                    return None, None
                self._sleep(protection.lease_poll)
        except Exception as exc:
            self._tier_failed(index, exc)
            return None, None

    def _release_lease(self, key: str, token: str) -> None:
        assert self._leasing is not None
        index, tier = self._leasing
        try:
            tier.release_lease(key, token)
        except Exception as exc:
            self._tier_failed(index, exc)

    def _find_leasing_tier(self) -> tuple[int, LeasingTier] | None:
        if self._protection.lease == "off":
            return None
        for index, tier in enumerate(self._tiers):
            if isinstance(tier, LeasingTier):
                return index, tier
        return None

    # -- background work ----------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        with self._background_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._protection.refresh_workers,
                    thread_name_prefix="tiered-cache-load",
                )
            return self._executor

    def _refresh_in_background(
        self, key: str, loader: Loader | None, ttl: float | str | None, stale: Entry | None
    ) -> None:
        """Reload ``key`` on a worker thread, once at a time per key."""
        with self._background_lock:
            if key in self._refreshing or self._closed:
                return
            self._refreshing.add(key)
        self._metrics.count("refreshes")
        try:
            self._background(lambda: self._refresh(key, loader, ttl, stale))
        except RuntimeError:  # the pool was shut down by close()
            with self._background_lock:
                self._refreshing.discard(key)

    def _submit(self, task: Callable[[], None]) -> None:
        self._run_tracked(task)

    def _run_tracked(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future = self._pool().submit(fn, *args)
        with self._background_lock:
            self._pending.add(future)
        future.add_done_callback(self._pending_done)
        return future

    def _pending_done(self, future: Future[Any]) -> None:
        with self._background_lock:
            self._pending.discard(future)

    def wait_background(self, timeout: float | None = None) -> bool:
        """Wait until background refreshes and late loads have finished (and filled).

        Returns False if some were still running after ``timeout`` seconds. Useful before a
        graceful shutdown, and in tests.
        """
        with self._background_lock:
            pending = list(self._pending)
        _, not_done = futures_wait(pending, timeout=timeout)
        return not not_done

    def _refresh(
        self, key: str, loader: Loader | None, ttl: float | str | None, stale: Entry | None
    ) -> None:
        try:
            self._refresh_flights.run(
                key,
                lambda flight: (
                    self._load_and_fill(key, flight, loader, ttl, None, background=True).value
                ),
            )
        except Exception as exc:
            self._metrics.count("refresh_failures")
            logger.warning(
                "background refresh of %r failed (%s: %s); the stale value stays",
                key,
                type(exc).__name__,
                exc,
            )
            if stale is not None and self._protection.fail_safe:
                self._rest_source(key, stale)
        finally:
            with self._background_lock:
                self._refreshing.discard(key)

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
        if lifetime is None:
            soft = hard = NEVER
        else:
            soft = now + lifetime
            hard = soft + self._protection.max_stale
        return Entry(
            value=value,
            loaded_at=now,
            soft_expiry=soft,
            hard_expiry=hard,
            load_duration=duration,
        )

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
        self._invalidations += 1
        self._cancel_inflight_fill(key)
        for index in sorted(self._local, reverse=True):
            self._fill(key, entry, range(index, index + 1))
        if self._bus_link is not None:
            self._bus_link.announce([key])

    def invalidate(self, key: str) -> None:
        """Remove ``key`` from every tier and every process's memory (not from the source)."""
        self.invalidate_many([key])

    def invalidate_many(self, keys: Iterable[str]) -> None:
        """Remove ``keys`` from every tier and every process's memory (not from the source).

        Shared tiers go first, then in-flight loads are told not to fill, then the in-process
        tiers, then the bus: a reader that starts after any step cannot bring an old copy back.
        """
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        for index, tier in reversed(list(enumerate(self._tiers))):
            if index in self._local:
                continue
            try:
                tier.delete_many(keys)
            except Exception as exc:
                self._tier_failed(index, exc)
        self._drop_local_keys(keys)
        if self._bus_link is not None:
            self._bus_link.announce(keys)

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

    def clear(self) -> None:
        """Remove every entry of this cache from every tier and every process's memory."""
        for index, tier in reversed(list(enumerate(self._tiers))):
            if index in self._local:
                continue
            try:
                tier.clear()
            except Exception as exc:
                self._tier_failed(index, exc)
        self._drop_local_everything()
        if self._bus_link is not None:
            self._bus_link.announce(clear=True)

    # -- in-process tiers and the bus ---------------------------------------------------------

    def _drop_local_keys(self, keys: Sequence[str]) -> None:
        self._invalidations += 1
        for key in keys:
            self._cancel_inflight_fill(key)
        self._delete_local(keys)

    def _delete_local(self, keys: Sequence[str]) -> None:
        for index in self._local:
            try:
                self._tiers[index].delete_many(keys)
            except Exception as exc:
                self._tier_failed(index, exc)

    def _drop_local_prefixes(self, prefixes: Sequence[str], at: float) -> None:
        self._invalidations += 1
        with self._background_lock:
            pending = [key for key in self._refreshing if key.startswith(tuple(prefixes))]
        for key in pending:
            self._cancel_inflight_fill(key)
        for index in self._local:
            for prefix in prefixes:
                self._delete_prefix(index, self._tiers[index], prefix)

    def _drop_local_everything(self) -> None:
        self._invalidations += 1
        for index in self._local:
            try:
                self._tiers[index].clear()
            except Exception as exc:
                self._tier_failed(index, exc)

    def _delete_prefix(self, index: int, tier: Tier, prefix: str) -> None:
        try:
            delete_prefix = getattr(tier, "delete_prefix", None)
            if callable(delete_prefix):
                delete_prefix(prefix)
            else:
                tier.clear()
        except Exception as exc:
            self._tier_failed(index, exc)

    def _set_bus_connected(self, connected: bool) -> None:
        """Stop using in-process tiers while the bus is down: they would miss invalidations.
        They are cleared both ways: on the way down nothing stale stays for later, on the way
        up nothing from the outage is trusted."""
        if connected:
            self._drop_local_everything()
            self._bypassed = frozenset()
            self._l1 = self._tiers[0] if self._tiers else None
        else:
            self._bypassed = self._local
            if 0 in self._local:
                self._l1 = None
            self._drop_local_everything()

    def _cancel_inflight_fill(self, key: str) -> None:
        for flights in (self._flights, self._refresh_flights):
            flight = flights.in_flight(key)
            if flight is not None:
                flight.cancelled_fill = True
        with self._background_lock:
            for orphan in self._orphans.get(key, ()):
                orphan.cancelled_fill = True

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
        self, index: int, tier: Tier, keys: Sequence[str], now: float, stale: dict[str, Entry]
    ) -> dict[str, Entry]:
        """The fresh entries among ``keys``; stale ones still servable go into ``stale``."""
        try:
            entries = tier.get_many(keys)
        except Exception as exc:
            self._tier_failed(index, exc)
            return {}
        fresh: dict[str, Entry] = {}
        for key, entry in entries.items():
            if now < entry.soft_expiry:
                fresh[key] = entry
            elif now < entry.hard_expiry:
                stale.setdefault(key, entry)
        self._metrics.hit(index, len(fresh))
        self._metrics.miss(index, len(keys) - len(fresh))
        return fresh

    def _fill(self, key: str, entry: Entry, indexes: range) -> None:
        # Deepest first: if a shared tier refuses the value (CodecError), no faster tier
        # holds a copy the others could never see.
        for index in reversed(indexes):
            if index in self._bypassed:
                continue
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
            if index in self._bypassed:
                continue
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
            report = getattr(tier, "hot_keys", None)
            if callable(report):
                result: list[tuple[str, float]] = report(n)
                if result:
                    return result
        return []

    def stats(self) -> dict[str, Any]:
        """A JSON-serializable snapshot: per-tier hits, misses, fills, errors and skips, loads,
        load failures, single-flight waits, and the hottest keys."""
        snapshot = self._metrics.snapshot()
        snapshot["namespace"] = self.namespace
        snapshot["bus"] = (
            None if self._bus_link is None else ("down" if self._bypassed else "connected")
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
