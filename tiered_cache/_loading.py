"""Loading from the source under protection: leases, timeouts, fail-safe, background refresh.

:class:`ChainLoading` is the second layer of :class:`tiered_cache.TieredCache`, on top of
:class:`~tiered_cache._tiers.ChainTiers`: everything between "no tier has a fresh value" and
"the loaded value is in the tiers".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from dataclasses import replace
from typing import Any, TypeVar

from ._tiers import ChainTiers
from .errors import CodecError, LoadTimeout, TieredCacheError
from .forking import restart_after_fork
from .leases import LeasingTier, PartialFill
from .logs import fields, key_hash, logger_for
from .protection import Protection
from .singleflight import Flight, SingleFlight
from .tier import MISSING, NEVER, Entry, Source, Tier
from .units import parse_duration

logger = logger_for("chain")

Loader = Callable[[], Any]
BatchLoader = Callable[[Sequence[str]], Mapping[str, Any]]
T = TypeVar("T")


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


class ChainLoading(ChainTiers):
    """Loads for the chain: one per key at a time here, one per fleet with a lease."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        source: Source | None,
        *,
        ttl: float | None,
        negative_ttl: float,
        clock: Callable[[], float],
        protection: Protection | None,
        sleep: Callable[[float], None],
        background: Callable[[Callable[[], None]], object] | None,
    ) -> None:
        super().__init__(tiers, clock)
        self._source = source
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._flights = SingleFlight()
        #: Background refreshes have flights of their own: a reader never joins one (it would
        #: get the refresh's error instead of the stale value), and a refresh never joins a
        #: reader's flight (it would get the stale value back and load nothing).
        self._refresh_flights = SingleFlight()
        self._protection = protection or Protection()
        self._sleep = sleep
        self._leasing = self._find_leasing_tier()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[Future[Any]] = set()
        self._background = background or self._submit
        self._background_lock = threading.Lock()
        self._closed = False
        #: Keys with a background refresh queued or running (one at a time per key).
        self._refreshing: set[str] = set()
        #: Loads that outlived their caller (soft or hard timeout) and will fill when done.
        self._orphans: dict[str, list[Flight]] = {}
        #: The running load of each key whose caller gave up on it (bounded in number).
        self._abandoned: dict[str, Future[Entry]] = {}
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """In a forked child the parent's workers and in-flight loads do not exist: start with
        no pool (a new one is made on the next background task) and no flights to wait for."""
        self._background_lock = threading.Lock()
        self._executor = None
        self._pending = set()
        self._refreshing = set()
        self._orphans = {}
        self._abandoned = {}
        self._flights = SingleFlight()
        self._refresh_flights = SingleFlight()

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
            "serving a stale value of key %s: its load failed (%s: %s)",
            key_hash(key),
            type(exc).__name__,
            exc,
            extra=fields("fail_safe", key=key),
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
        with self._background_lock:
            running = self._abandoned.get(key)
            hung = len(self._abandoned)
        if running is not None:
            # This key's earlier load still runs: wait for it rather than start another.
            return self._await_abandoned(
                key, running, soft if soft is not None else hard, serve_stale=soft is not None
            )
        if hung >= protection.max_abandoned_loads:
            self._metrics.count("loads_refused")
            raise LoadTimeout(
                f"{hung} loads are still running after their callers stopped waiting "
                f"(max_abandoned_loads); {key!r} was not loaded"
            )
        handoff = _Handoff(flight, token)
        future = self._start_timed(self._load_handing_off, key, loader, ttl, handoff)
        if soft is not None:
            try:
                return future.result(timeout=soft)
            except FutureTimeout:
                if self._orphan(key, handoff, future):
                    self._metrics.count("soft_timeouts")
                    raise _ServeStale() from None
                return future.result()  # it finished just now
        try:
            return future.result(timeout=hard)
        except FutureTimeout:
            if not self._orphan(key, handoff, future):
                return future.result()
            self._metrics.count("hard_timeouts")
            raise LoadTimeout(
                f"loading {key!r} took longer than the hard timeout of {hard}s; "
                "it goes on in the background and fills the cache when it finishes"
            ) from None

    def _await_abandoned(
        self, key: str, running: Future[Entry], timeout: float | None, *, serve_stale: bool
    ) -> Entry:
        """Wait up to ``timeout`` for a load of ``key`` that an earlier caller gave up on."""
        try:
            return running.result(timeout=timeout)
        except FutureTimeout:
            if serve_stale:
                self._metrics.count("soft_timeouts")
                raise _ServeStale() from None
            self._metrics.count("hard_timeouts")
            raise LoadTimeout(
                f"an earlier load of {key!r} is still running past the hard timeout; it goes "
                "on in the background and fills the cache when it finishes"
            ) from None

    def _start_timed(self, fn: Callable[..., Entry], *args: Any) -> Future[Entry]:
        """Run a timed load on a thread of its own: loads that hang hold up no other load
        (a shared pool would be full of them); their number is bounded separately."""
        future: Future[Entry] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        with self._background_lock:
            self._pending.add(future)
        future.add_done_callback(self._pending_done)
        threading.Thread(target=run, name="tiered-cache-timed-load", daemon=True).start()
        return future

    def _orphan(self, key: str, handoff: _Handoff, future: Future[Entry]) -> bool:
        """Hand a running load over to its worker; False if it already delivered."""
        with handoff.lock:
            if handoff.delivered:
                return False
            handoff.orphaned = True
        # The flight ends when its caller gives up, so invalidations from now on must find
        # this load among the orphans to cancel its fill.
        with self._background_lock:
            self._orphans.setdefault(key, []).append(handoff.flight)
            self._abandoned[key] = future
        self._metrics.count("abandoned_loads")
        future.add_done_callback(lambda done: self._abandoned_done(key, done))
        return True

    def _abandoned_done(self, key: str, future: Future[Entry]) -> None:
        with self._background_lock:
            if self._abandoned.get(key) is future:
                del self._abandoned[key]

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
            logger.debug(
                "not caching key %s: invalidated during its load",
                key_hash(key),
                extra=fields("fill_cancelled", key=key),
            )
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
        if not tier.can_lease(key):
            return None, None
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

    # -- batches (get_many) -------------------------------------------------------------------

    def _load_batch_entries(
        self,
        flights: Mapping[str, Flight],
        loader: BatchLoader | None,
        ttl: float | str | None,
        stale: Mapping[str, Entry],
        ready: Callable[[Mapping[str, Entry]], None],
    ) -> None:
        """Get an entry for every key of ``flights`` and hand each batch of them to ``ready``
        as soon as it is there: filled by another process's lease holder, or loaded here in
        batches and filled into the tiers.

        The leases of all the keys are asked for in one round trip; the keys this process
        got are loaded at once, before it waits for the others' holders (so that two
        processes holding each other's keys never wait on each other, and callers of the
        keys already loaded do not wait either). Keys whose holder takes longer than
        ``lease_wait`` are loaded without a lease, in one more batch.
        """
        if self._leasing is None:
            ready(self._load_and_fill_many(list(flights), flights, loader, ttl, stale, tokens={}))
            return
        protection = self._protection
        pending = list(flights)
        deadline: float | None = None
        while pending:
            tokens, filled, waiting = self._leases_for(pending)
            if filled:
                ready(filled)
            if tokens:
                if deadline is not None:  # holders that died left their leases to expire
                    self._metrics.count("lease_takeovers", sum(1 for t in tokens.values() if t))
                ready(
                    self._load_and_fill_many(
                        list(tokens), flights, loader, ttl, stale, tokens=tokens
                    )
                )
            if not waiting:
                return
            now = self._clock()
            if deadline is None:
                self._metrics.count("lease_waits", len(waiting))
                deadline = now + protection.lease_wait
            elif now >= deadline:
                self._metrics.count("lease_wait_expired", len(waiting))
                ready(self._load_and_fill_many(waiting, flights, loader, ttl, stale, tokens={}))
                return
            pending = waiting
            self._sleep(protection.lease_poll)

    def _leases_for(
        self, keys: Sequence[str]
    ) -> tuple[dict[str, str | None], dict[str, Entry], list[str]]:
        """One look at the shared tier for ``keys``: ``(to load, with the token or None for no
        lease; filled meanwhile by a holder; held by another process)``."""
        assert self._leasing is not None
        index, tier = self._leasing
        tokens: dict[str, str | None] = {key: None for key in keys if not tier.can_lease(key)}
        if tokens:
            keys = [key for key in keys if key not in tokens]
            if not keys:
                return tokens, {}, []
        try:
            looks = tier.acquire_leases(keys, self._protection.lease_ttl)
        except Exception as exc:
            self._tier_failed(index, exc)
            tokens.update(dict.fromkeys(keys))  # load them all without leases
            return tokens, {}, []
        now = self._clock()
        filled: dict[str, Entry] = {}
        waiting: list[str] = []
        unneeded: dict[str, str] = {}
        for key in keys:
            token, current = looks[key]
            if current is not MISSING and now < current.soft_expiry:
                filled[key] = current  # the holder filled it since our last look
                if token is not None:
                    unneeded[key] = token
            elif token is not None:
                tokens[key] = token
            else:
                waiting.append(key)
        if unneeded:
            self._release_leases(unneeded)
        if filled:
            self._metrics.hit(index, len(filled))
            self._fill_many(filled, upto=index)
        return tokens, filled, waiting

    def _load_and_fill_many(
        self,
        keys: list[str],
        flights: Mapping[str, Flight],
        loader: BatchLoader | None,
        ttl: float | str | None,
        stale: Mapping[str, Entry],
        *,
        tokens: Mapping[str, str | None],
    ) -> dict[str, Entry]:
        """Load ``keys`` in one batch and fill them into the tiers (under their leases)."""
        held = {key: token for key, token in tokens.items() if token is not None}
        try:
            loaded = self._load_many(keys, loader, ttl)
        except Exception as exc:
            self._release_leases(held)
            if not self._protection.fail_safe or any(key not in stale for key in keys):
                raise
            return {key: self._fail_safe(key, stale[key], exc) for key in keys}
        except BaseException:
            self._release_leases(held)
            raise
        # Keys invalidated while the batch loaded stay out of every tier.
        keep = {key: entry for key, entry in loaded.items() if not flights[key].cancelled_fill}
        dropped = {key: token for key, token in held.items() if key not in keep}
        if dropped:
            self._release_leases(dropped)
        leased = {key: (entry, held[key]) for key, entry in keep.items() if key in held}
        try:
            self._fill_many(
                {key: entry for key, entry in keep.items() if key not in leased},
                upto=len(self._tiers),
            )
            if leased:
                self._fill_many_with_leases(leased)
        except CodecError:  # a value a tier refuses: nothing of it was written under a lease
            self._release_leases({key: token for key, (_, token) in leased.items()})
            raise
        return loaded

    def _fill_many_with_leases(self, leased: Mapping[str, tuple[Entry, str]]) -> None:
        """:meth:`_store_loaded` for a batch: deeper tiers, then the leasing tier while the
        leases hold, then the faster tiers with what was not lost to a writer."""
        assert self._leasing is not None
        index, tier = self._leasing
        entries = {key: entry for key, (entry, _) in leased.items()}
        self._fill_many(entries, upto=len(self._tiers), start=index + 1)
        try:
            kept = tier.fill_with_leases(leased)
        except CodecError:
            raise
        except PartialFill as exc:
            # Redis answered, so a writer may have come for the keys whose fill failed:
            # keep those out of the faster tiers too.
            self._tier_failed(index, exc)
            kept = exc.kept
        except Exception as exc:
            self._tier_failed(index, exc)
            kept = set(leased)  # the shared tier is down: nothing there to protect
        else:
            self._metrics.fill(index, len(kept))
            if len(kept) < len(leased):
                # Their leases were deleted by invalidations (or expired): writers came
                # after our read; the old values must not reach any tier.
                self._metrics.count("lease_lost", len(leased) - len(kept))
        self._fill_many({key: entries[key] for key in kept}, upto=index)

    def _release_leases(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            return
        assert self._leasing is not None
        index, tier = self._leasing
        try:
            tier.release_leases(tokens)
        except Exception as exc:
            self._tier_failed(index, exc)

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
                "background refresh of key %s failed (%s: %s); the stale value stays",
                key_hash(key),
                type(exc).__name__,
                exc,
                extra=fields("refresh_failed", key=key),
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

    def _cancel_inflight_fill(self, key: str) -> None:
        for flights in (self._flights, self._refresh_flights):
            flight = flights.in_flight(key)
            if flight is not None:
                flight.cancelled_fill = True
        with self._background_lock:
            for orphan in self._orphans.get(key, ()):
                orphan.cancelled_fill = True
