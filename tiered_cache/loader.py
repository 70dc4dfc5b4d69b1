"""Calls to the source under protection: single-flight, leases, timeouts, fail-safe, refreshes.

:class:`SourceLoader` holds everything between "no tier has a fresh value" and "the loaded
value is in the tiers". It reads the source (or the caller's loader) once per key at a time in
this process and, with a leasing tier, about once per fleet; it bounds slow loads, serves a
stale value when the source fails, refreshes in the background, and hands every value it
loaded to the :class:`~tiered_cache.fence.Fence`, which decides whether it may be filled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from typing import Any, TypeVar

from .accessor import TierAccessor
from .batch_load import BatchLoad, Stale
from .errors import LoadTimeout, TieredCacheError, caused
from .fence import Fence
from .forking import restart_compiled_after_fork
from .held_leases import HeldLeases, Holdings
from .lease_wait import LeaseWait
from .metrics import CacheMetrics
from .protection import Protection
from .singleflight import (
    BEHIND,
    LEAD,
    Behalf,
    Flight,
    Leading,
    SingleFlight,
    WaitExpired,
    act_for,
    hand_over,
    own_work,
    recursive_load,
    refresh_failed,
    waited_too_long,
)
from .stale_copy import StaleCopy
from .stamp import CheckedTtl, EntryMaker, loaded, loaded_many
from .steps import run
from .tier import Entry, Source
from .timed_slots import TimedSlots, after_wait, may_join_left

Loader = Callable[[], Any]
BatchLoader = Callable[[Sequence[str]], Mapping[str, Any]]
T = TypeVar("T")


def _stop_iteration_escaped(exc: StopIteration) -> RuntimeError:
    """What a loader's (or the source's) ``StopIteration`` leaves the cache as: let out as it
    is, it would end the caller's own iteration (``map`` over keys) as if there were no more
    keys (PEP 479's reason). Made here, where the source is called, for every read path alike
    (plain calls, steps, a worker thread's timed load)."""
    return RuntimeError("the loader raised StopIteration")


class _Handoff:
    """Between a caller waiting for a timed load and the worker running it: whoever comes
    second (the caller giving up, or the worker finishing) decides who fills the tiers, and
    so who holds the key's lease: the worker once ``orphaned`` (it fills under the lease, or
    gives it back if the load fails), else the caller."""

    __slots__ = ("delivered", "held", "lock", "orphaned", "wait")

    def __init__(self, held: HeldLeases | None) -> None:
        self.lock = threading.Lock()
        self.orphaned = False
        self.delivered = False
        #: The caller's lease, the worker's once orphaned (it then lets go of it when done).
        self.held = held
        #: Made on the caller's thread: the worker works for it (its loader reading the key
        #: the caller's flight loads is a recursive load), until the caller gives up.
        self.wait = hand_over(threading.get_ident())


class SourceLoader:
    """Loads for one chain: one per key at a time here, one per fleet with a lease.

    Args:
        tiers: the chain's tier accessors, fastest first.
        source: the system of record, if the chain has one.
        fence: decides which loaded values may be filled.
        metrics: the chain's counters.
        make_entry: turns a loaded value into an entry.
        clock, sleep: injected time.
        protection: the source-protection options.
        background: runs a background refresh (by default on this loader's thread pool).
    """

    def __init__(
        self,
        tiers: Sequence[TierAccessor],
        source: Source | None,
        *,
        fence: Fence,
        metrics: CacheMetrics,
        make_entry: EntryMaker,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        protection: Protection,
        background: Callable[[Callable[[], None]], object] | None,
    ) -> None:
        self._tiers = list(tiers)
        self._source = source
        self._fence = fence
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._protection = protection
        # The load's timeouts, read once: Protection is a pydantic model, and every read of a
        # field of one goes through BaseModel.__getattr__'s hook (about 230 instructions of a
        # miss's, compiled); it is frozen, so these never change.
        self._soft_timeout = protection.soft_timeout
        self._hard_timeout = protection.hard_timeout
        #: One flight per key being loaded: by a read through the chain, or by a background
        #: refresh (:meth:`FlightTable.lead_after`).
        self.flights = SingleFlight()
        self._leasing: TierAccessor | None = fence.leasing(self._tiers)
        self._lease_wait = (
            None
            if self._leasing is None
            else LeaseWait(self._leasing, fence, metrics, protection, clock, sleep)
        )
        #: How long a reader waits for another caller's load of its key.
        self.join_timeout = protection.join_timeout(self._leasing is not None)
        self._batching = BatchLoad(
            self._tiers,
            fence,
            metrics,
            protection,
            clock,
            make_entry,
            self._load_many,
            sleep,
            self._lease_wait,
        )
        self._executor: ThreadPoolExecutor | None = None
        #: The pool's threads, for :meth:`on_a_worker`: the threads, not their idents, which
        #: CPython gives the next threads started once the pool's have ended (after close).
        self._workers: set[threading.Thread] = set()
        self._pending: set[Future[Any]] = set()
        #: The leases of the loads and writes in flight, for :meth:`close` to give back.
        self.holdings = Holdings(self._leasing)
        self._background = background or self._submit
        self._lock = threading.Lock()
        self._closed = False
        #: Late fills running: those of timed loads that outlived their callers
        #: (:meth:`_late_fill`); :meth:`close` waits for them, as the tiers close next.
        self._late_fills = 0
        self._late_done = threading.Condition(self._lock)
        #: Keys with a background refresh queued or running (one at a time per key).
        self._refreshing: set[str] = set()
        #: The running load of each key whose caller gave up on it, with the fence mark it
        #: read under and its work (for whoever waits for it): the key's next miss may join it.
        self._abandoned: dict[str, tuple[Future[Entry], int, Behalf]] = {}
        self._timed_slots()
        self._fork = restart_compiled_after_fork(self)  # compiled: no weak reference to it

    def _timed_slots(self) -> None:
        #: Timed loads running on threads of their own, and how many of them their callers
        #: gave up on (a key may have several: an invalidation lets its next miss start
        #: another); a slot is taken before a load starts (:mod:`tiered_cache.timed_slots`).
        self._slots = TimedSlots(self._protection, self._metrics)

    def after_fork_in_child(self) -> None:
        """In a forked child the parent's workers and in-flight loads do not exist: start with
        no pool (a new one is made on the next background task) and no flights to wait for."""
        self._lock = threading.Lock()
        self._late_fills = 0
        self._late_done = threading.Condition(self._lock)
        self._executor = None
        self._workers = set()
        self._pending = set()
        self.holdings.forget_all()
        self._refreshing = set()
        self._abandoned = {}
        self._timed_slots()
        self.flights = SingleFlight()

    # -- one key

    def load(
        self,
        key: str,
        mark: int,
        loader: Loader | None,
        ttl: CheckedTtl | None,
        stale: StaleCopy | None,
        *,
        background: bool = False,
    ) -> Entry:
        """Load ``key`` under its lease, with timeouts and fail-safe, and fill the tiers
        (if the fence allows: ``mark`` was taken before anything was read).

        Returns the entry to serve: the loaded one, one another process filled while this one
        waited for the lease, or ``stale`` when the source failed or was too slow.
        """
        resting = self._batching.rested_one(key, mark, stale)  # the source throttled it lately
        if resting is not None:
            return run(resting)
        held = None if self._lease_wait is None else self.holdings.hold()
        handoff: _Handoff | None = None
        try:
            token: str | None = None
            if held is not None:
                token, filled = self._lease_or_wait(key, mark, held)
                if filled is not None:
                    return filled
            # Timed by the soft timeout when a stale value can stand in, and by the hard
            # timeout; neither applies to a background refresh. Untimed (the common miss), the
            # load runs here, without _timed_load's frame.
            soft = self._soft_timeout if stale is not None else None
            hard = self._hard_timeout
            try:
                if background or (soft is None and hard is None):
                    entry = self._load(key, loader, ttl)
                else:
                    handoff = _Handoff(held)
                    entry, mark = self._timed_load(
                        key, mark, loader, ttl, soft=soft, hard=hard, token=token, handoff=handoff
                    )
            except BaseException as caught:
                # Whatever stopped the load (it failed, timed out, was refused a slot, or the
                # caller was interrupted), its lease goes back before the caller is served,
                # unless the load was handed to its worker, which fills under it or gives it
                # back.
                self._give_back(self._callers(held, handoff))
                return run(self._batching.load_failed(key, mark, stale, caught))
            if token is None:  # _fill without its frame: the fill after every plain miss
                self._fence.fill_one(mark, key, entry, self._tiers)
                return entry
            self._fill(key, mark, entry, token)
            return entry
        except BaseException:
            # Whatever stopped this call from the step its lease's answer came back in (an
            # interrupt in the instant after it, or during the fill): the lease it still holds
            # goes back (held_leases.py; one the fill used releases nothing).
            self._give_back(self._callers(held, handoff))
            raise
        finally:
            self.holdings.let_go(self._callers(held, handoff))

    def _fill(self, key: str, mark: int, entry: Entry, token: str | None) -> None:
        if token is None:
            self._fence.fill_one(mark, key, entry, self._tiers)
        else:
            self._fence.fill(mark, {key: entry}, self._tiers, tokens={key: token})

    @staticmethod
    def _callers(held: HeldLeases | None, handoff: _Handoff | None) -> HeldLeases | None:
        """``held``, unless the load was handed to its worker, which fills under its lease
        or gives it back (and lets go of it)."""
        return None if handoff is not None and handoff.orphaned else held

    def _give_back(self, held: HeldLeases | None) -> None:
        if held is not None:
            run(self.holdings.give_back(held))

    def _timed_load(
        self,
        key: str,
        mark: int,
        loader: Loader | None,
        ttl: CheckedTtl | None,
        *,
        soft: float | None,
        hard: float | None,
        token: str | None,
        handoff: _Handoff,
    ) -> tuple[Entry, int]:
        """:meth:`_load`, bounded by ``soft`` (given when a stale value can stand in) and
        ``hard`` (one of them given: :meth:`load` decides); returns the entry and the fence
        mark its fill is judged by. A load that outlives its caller keeps running on a thread
        of its own and fills when done (through the fence, with the caller's mark: an
        invalidation meanwhile refuses it); the key's next miss waits for it rather than start
        another."""
        timeout = soft if soft is not None else hard
        with self._lock:
            running = self._abandoned.get(key)
        if running is not None and may_join_left(running[0], key, running[1], self._fence.may_join):
            # This key's earlier load still runs and the fence lets a miss join it: wait for
            # it. Its fill is judged by its own (older) mark.
            joined, older, work = running
            if own_work(work):  # its own loader reads its key: it would wait for itself
                raise recursive_load(key)
            entry = self._await_abandoned(key, joined, work, timeout, serve_stale=soft is not None)
            return entry, older
        assert timeout is not None  # load() times a load only with a timeout
        # The slot is the future's from the step it is taken (the claim is marked in that
        # step): given back when the future is done or cancelled, whatever stops the caller
        # from then on, an interrupt as the slot is granted included.
        claim = self._slots.claim()
        future: Future[Entry] = Future()
        future.add_done_callback(lambda _: claim.give_back())
        try:
            waited = self._slots.take(key, timeout, serve_stale=soft is not None, claim=claim)
            self._start_timed(
                future,
                lambda: self._load_handing_off(
                    key, mark, loader, ttl, token=token, handoff=handoff
                ),
            )
            soft, hard = after_wait(soft, hard, waited)
            return self._await_timed(key, mark, future, handoff, soft=soft, hard=hard), mark
        except BaseException:
            # Whatever stops the caller (refused a slot, its thread could not start, the load
            # failed, timed out, or the caller was interrupted): a load not started yet never
            # will be (its slot, if taken, comes back); one running is handed to its worker,
            # if not done already.
            if not future.cancel():
                self._orphan(key, mark, handoff, future)
            raise

    def _await_timed(
        self,
        key: str,
        mark: int,
        future: Future[Entry],
        handoff: _Handoff,
        *,
        soft: float | None,
        hard: float | None,
    ) -> Entry:
        """The entry of the timed load ``future``, if it comes within the timeout (``soft``
        when given, else ``hard``); else the load is handed to its worker and ServeStale or
        :class:`~tiered_cache.LoadTimeout` raised."""
        try:
            return future.result(timeout=soft if soft is not None else hard)
        except FutureTimeout:
            if not self._orphan(key, mark, handoff, future):
                return future.result()  # it finished just now
        raise self._slots.timed_out(key, hard, serve_stale=soft is not None)

    def _await_abandoned(
        self,
        key: str,
        running: Future[Entry],
        work: Behalf,
        timeout: float | None,
        *,
        serve_stale: bool,
    ) -> Entry:
        """Wait up to ``timeout`` for a load of ``key`` that an earlier caller gave up on;
        meanwhile its worker works for this caller (its loader reading the key this caller's
        flight loads is a recursive load)."""
        wait = work.waited_by(threading.get_ident())
        try:
            return running.result(timeout=timeout)
        except FutureTimeout:
            raise caused(
                self._slots.timed_out(key, timeout, serve_stale=serve_stale, earlier=True), None
            ) from None
        finally:
            wait.ended()

    def _start_timed(self, future: Future[Entry], fn: Callable[[], Entry]) -> None:
        """Run a timed load on a thread of its own: loads that hang hold up no other load
        (a shared pool would be full of them); their number is bounded apart. If the thread
        cannot start, the caller cancels ``future`` (:meth:`_timed_load`)."""

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._pending_done)
        threading.Thread(target=run, name="tiered-cache-timed-load", daemon=True).start()

    def _orphan(self, key: str, mark: int, handoff: _Handoff, future: Future[Entry]) -> bool:
        """Hand a running load over to its worker (once); False if it already delivered."""
        with handoff.lock:
            if handoff.delivered:
                return False
            if handoff.orphaned:
                return True
            handoff.orphaned = True
        handoff.wait.ended()
        with self._lock:
            self._abandoned[key] = (future, mark, handoff.wait.work)
        self._slots.abandoned()
        future.add_done_callback(lambda done: self._abandoned_done(key, done))
        return True

    def _abandoned_done(self, key: str, future: Future[Entry]) -> None:
        self._slots.abandoned_done()
        with self._lock:
            running = self._abandoned.get(key)
            if running is not None and running[0] is future:
                del self._abandoned[key]

    def _load_handing_off(
        self,
        key: str,
        mark: int,
        loader: Loader | None,
        ttl: CheckedTtl | None,
        *,
        token: str | None,
        handoff: _Handoff,
    ) -> Entry:
        """Runs on a worker: load, then give the entry to the caller, or, if the caller gave
        up waiting, fill the tiers here."""
        act_for(handoff.wait.work)  # the worker's thread is its own: nothing to restore after
        try:
            entry = self._load(key, loader, ttl)
        except BaseException:
            with handoff.lock:
                orphaned = handoff.orphaned
                handoff.delivered = True
            if orphaned:
                self._give_back(handoff.held)
                self.holdings.let_go(handoff.held)
            raise
        with handoff.lock:
            orphaned = handoff.orphaned
            handoff.delivered = True
        if orphaned:
            try:
                self._late_fill(key, mark, entry, token)
            finally:
                self.holdings.let_go(handoff.held)
        return entry

    def _late_fill(self, key: str, mark: int, entry: Entry, token: str | None) -> None:
        """The fill of a load whose caller gave up on it, unless the loader is closed: its
        tiers are closed then, or about to be (the memory tier kept the value, though closed;
        the Redis tier refused the call, a tier failure logged and counted on a closed
        chain). A fill begun before :meth:`close` is waited for by it."""
        with self._lock:
            if self._closed:
                return
            self._late_fills += 1
        try:
            self._fill(key, mark, entry, token)
        finally:
            with self._lock:
                self._late_fills -= 1
                if not self._late_fills:
                    self._late_done.notify_all()

    def _lease_or_wait(
        self, key: str, mark: int, held: HeldLeases
    ) -> tuple[str | None, Entry | None]:
        """See :meth:`~tiered_cache.lease_wait.LeaseWait.one`."""
        assert self._lease_wait is not None
        return run(self._lease_wait.one(key, mark, held))

    # -- batches (get_many)

    def load_batch(
        self,
        leading: Leading[Flight],
        mark: int,
        loader: BatchLoader | None,
        ttl: CheckedTtl | None,
        stale: Mapping[str, StaleCopy],
    ) -> tuple[dict[str, Any], dict[str, BaseException]]:
        """Get a value for every key of ``leading`` (the flights this caller leads): filled
        by another process's lease holder, or loaded here in batches and filled into the
        tiers. Each key's flight lands as soon as its value (or its error) is there; the
        others, if the batch is stopped, as the caller's ``with leading`` block ends.

        Returns ``(values, errors)``: a key the source failed for gets its stale value under
        fail-safe, else its error.

        The leases of all the keys are asked for in one round trip; the keys this process got
        are loaded at once, before it waits for the others' holders (so that two processes
        holding each other's keys never wait on each other). Keys whose holder takes longer
        than ``lease_wait`` are loaded without a lease, in one more batch.
        """
        held = self.holdings.hold()
        try:
            return run(
                self._batching.for_flights(leading, mark, loader, ttl, stale=stale, held=held)
            )
        finally:
            self.holdings.let_go(held)

    # -- background work

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._protection.refresh_workers,
                    thread_name_prefix="tiered-cache-load",
                    initializer=self._worker_started,
                )
            return self._executor

    def _worker_started(self) -> None:
        with self._lock:
            self._workers.add(threading.current_thread())

    def on_a_worker(self) -> bool:
        """Whether the calling thread is one of the pool's workers, which :meth:`close` waits
        for (a refresh's loader closing the chain must not wait for that close)."""
        return threading.current_thread() in self._workers

    def refresh_in_background(
        self, key: str, loader: Loader | None, ttl: CheckedTtl | None, stale: Stale | None
    ) -> None:
        """Reload ``key`` on a worker thread, once at a time per key. ``stale``: the copy
        the read that asks served, with the fence mark it was read under (None: none): if
        the refresh fails, the source rests on it (fail-safe) unless an invalidation came
        since that mark. Not since the refresh's own, taken when it runs: a write in between
        removed that copy, and the rest put it back."""
        with self._lock:
            if key in self._refreshing or self._closed:
                return
            self._refreshing.add(key)
        self._metrics.count("refreshes")
        try:
            self._background(lambda: self._refresh(key, loader, ttl, stale))
        except RuntimeError:  # the pool was shut down by close()
            with self._lock:
                self._refreshing.discard(key)

    def _submit(self, task: Callable[[], None]) -> None:
        self._run_tracked(task)

    def _run_tracked(self, fn: Callable[[], T]) -> Future[T]:
        future = self._pool().submit(fn)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._pending_done)
        return future

    def _pending_done(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait_background(self, timeout: float | None = None) -> bool:
        """Wait until background refreshes and late loads have finished (and filled)."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = futures_wait(pending, timeout=timeout)
        return not not_done

    def _refresh(
        self, key: str, loader: Loader | None, ttl: CheckedTtl | None, stale: Stale | None
    ) -> None:
        try:
            # A refresh is a load of its key: it leads a flight of the key in the readers'
            # table, after any flight in progress (one load of a key at a time).
            while True:
                mark = self._fence.mark()  # before the refresh reads anything
                # The flight it leads if the key has none, made before the claim and claimed
                # inside the try that lands it (SingleFlight.run's rule).
                mine = Flight(mark)
                try:
                    flight, role = self.flights.lead_after(key, tag=mark, lead=mine)
                    if role == BEHIND:
                        self._settle(key, flight)
                        continue
                    # OWN: run inline by the read leading the key's flight, it loads inside it.
                    entry = self.load(key, mark, loader, ttl, None, background=True)
                    if role == LEAD:
                        self.flights.land_one(key, mine, entry.value, None)
                except BaseException as exc:
                    self.flights.land_one(key, mine, None, refresh_failed(exc))
                    raise
                return
        except Exception as exc:
            run(self._batching.refresh_failure(key, exc, stale))
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _settle(self, key: str, flight: Flight) -> None:
        """Wait for the key's flight in progress to land, as a reader waits to join one."""
        wait = self.join_timeout
        try:
            flight.settle(wait)
        except WaitExpired:
            assert wait is not None
            raise caused(LoadTimeout(waited_too_long(key, wait)), None) from None

    def close(self) -> bool:
        """Stop taking background work; False if it was closed already. Queued refreshes are
        dropped; running ones finish against still-open tiers. Then the leases of the loads
        still in flight (callers' loads, timed loads left to their workers) are given back:
        the tiers close next, and those loads' fills and give-backs could not reach them,
        so their leases held until ``lease_ttl`` and every other process reading the keys
        waited ``lease_wait``. Their sources are not waited for (a hung one would hang the
        shutdown); a caller's fill, if it comes, finds the lease gone, and a timed load left
        to its worker fills nothing once closed (:meth:`_late_fill`)."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            executor, self._executor = self._executor, None
            # A late fill begun before now writes tiers that close after this returns; one
            # not begun will not (_late_fill). Each is bounded by its tiers' timeouts.
            while self._late_fills:
                self._late_done.wait()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        run(self.holdings.give_back_all())
        return True

    # -- the source itself

    def _load(self, key: str, loader: Loader | None, ttl: CheckedTtl | None) -> Entry:
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
            value = loaded(value, key)
        except StopIteration as exc:
            self._metrics.load_failure()
            raise caused(_stop_iteration_escaped(exc), exc) from exc
        except BaseException:
            self._metrics.load_failure()
            raise
        finished = self._clock()
        self._metrics.load(1, finished - started)
        return self._batching.entry(key, value, finished, finished - started, ttl)

    def _load_many(
        self, keys: Sequence[str], loader: BatchLoader | None, ttl: CheckedTtl | None
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
            loaded_many(values)
        except StopIteration as exc:
            self._metrics.load_failure()
            raise caused(_stop_iteration_escaped(exc), exc) from exc
        except BaseException:
            self._metrics.load_failure()
            raise
        finished = self._clock()
        self._metrics.load(len(keys), finished - started)
        return self._batching.entries(values, keys, ttl, finished, finished - started)
