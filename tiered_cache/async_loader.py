"""Calls to the source under protection, for the asyncio chain.

The decisions are the threaded loader's own -- the lease wait
(:class:`~tiered_cache.lease_wait.LeaseWait`), batches and fail-safe
(:class:`~tiered_cache.batch_load.BatchLoad`), the fence's fills, entry stamping
(:class:`~tiered_cache.stamp.EntryMaker`) -- run by the async driver. What is asyncio's own
lives here: single-flight across coroutines (and loops), background refreshes as tasks, and
loads that outlive their callers: a timed load runs as a task of its own, which fills the
tiers itself when it finishes, so a caller that stops waiting (soft timeout: it serves the
stale value; hard timeout: :class:`~tiered_cache.LoadTimeout`) leaves nothing undone; an
untimed one runs in its caller's task, and is begun again in a task of its own when that
caller is cancelled (:meth:`AsyncSourceLoader._leave`). Either is joined by the key's next
miss while the fence allows.
"""

from __future__ import annotations

import asyncio
import warnings
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from .async_accessor import AsyncTierAccessor, BlockingTierWarning, is_async_part
from .async_flight import AsyncFlight, async_flights, within_join_timeout
from .async_tier import AsyncSource
from .batch_load import BatchLoad, Stale
from .errors import TieredCacheError
from .fence import Fence
from .forking import restart_after_fork
from .held_leases import HeldLeases, Holdings
from .lease_wait import LeaseWait
from .logs import fields, logger_for
from .loop_end import in_final_sweep, when_closed
from .loops import all_end_within, cancel, ends_within, past_first_step, stalled
from .metrics import CacheMetrics
from .protection import Protection
from .singleflight import (
    BEHIND,
    LEAD,
    Behalf,
    Leading,
    Wait,
    act_for,
    hand_over,
    own_work,
    recursive_load,
    refresh_failed,
)
from .stale_copy import StaleCopy
from .stamp import CheckedTtl, EntryMaker, loaded, loaded_many
from .steps import arun
from .tier import Entry, Source
from .timed_slots import Claim, TimedSlots, after_wait, may_join_left

logger = logger_for("chain")


#: A loader for one key: a coroutine function of no arguments.
AsyncLoader = Callable[[], Awaitable[Any]]
#: A loader for a batch: ``await loader(keys)`` returns the values it found.
AsyncBatchLoader = Callable[[Sequence[str]], Awaitable[Mapping[str, Any]]]


class AsyncSourceLoader:
    """Loads for one asyncio chain: one per key at a time in this process (across its event
    loops), one per fleet with a lease. Arguments as :class:`~tiered_cache.loader.SourceLoader`;
    ``sleep`` is ``asyncio.sleep`` (tests may pass another coroutine function)."""

    def __init__(
        self,
        tiers: Sequence[AsyncTierAccessor],
        source: Source | AsyncSource | None,
        *,
        fence: Fence,
        metrics: CacheMetrics,
        make_entry: EntryMaker,
        clock: Callable[[], float],
        protection: Protection,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._tiers = list(tiers)
        self._source = source
        #: The source, by the kind of its calls (at most one is set).
        self._async_source: AsyncSource | None = None
        self._sync_source: Source | None = None
        if source is not None and is_async_part(source):
            self._async_source = cast(AsyncSource, source)
        elif source is not None:
            self._sync_source = cast(Source, source)
            warnings.warn(
                f"source {source.name!r} has no asyncio interface: the asyncio chain reads it "
                "in threads",
                BlockingTierWarning,
                stacklevel=4,
            )
        self._fence = fence
        self._metrics = metrics
        self._clock = clock
        self._protection = protection
        # The load's timeouts, read once (a frozen pydantic model: each field read of one goes
        # through BaseModel.__getattr__'s hook, as :class:`~tiered_cache.loader.SourceLoader`).
        self._soft_timeout = protection.soft_timeout
        self._hard_timeout = protection.hard_timeout
        #: One flight per key being loaded: by a read through the chain, or by a background
        #: refresh (the threaded loader's rule).
        self.flights = async_flights()
        leasing = fence.leasing(self._tiers)
        self._lease_wait = (
            None
            if leasing is None
            else LeaseWait(leasing, fence, metrics, protection, clock, sleep)
        )
        #: How long a reader waits for another caller's load of its key.
        self.join_timeout = protection.join_timeout(leasing is not None)
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
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The close of each loop a task was spawned on, watched (:meth:`_loop_closed`).
        self._closes: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, weakref.ref[asyncio.TimerHandle]
        ] = weakref.WeakKeyDictionary()
        #: The leases of the loads and writes in flight, for :meth:`aclose` to give back.
        self.holdings = Holdings(leasing)
        self._refreshing: set[str] = set()
        #: The running load of each key whose caller gave up on it, with its fence mark.
        self._abandoned: dict[str, tuple[asyncio.Task[Entry], int, Behalf]] = {}
        self._timed_slots()
        self._closed = False
        restart_after_fork(self)

    def _timed_slots(self) -> None:
        #: Timed loads running (to wait for one to end), and their slots: the threaded
        #: loader's rule (:mod:`tiered_cache.timed_slots`).
        self._timed: dict[asyncio.Task[Entry], Claim] = {}
        #: Of those, the ones their callers stopped waiting for (with their keys).
        self._hung: dict[asyncio.Task[Entry], str] = {}
        self._slots = TimedSlots(self._protection, self._metrics)

    def after_fork_in_child(self) -> None:
        """A forked child runs none of the parent's coroutines or tasks: a flight one of them
        led has no leader here (a read of its key joined it, and waited for ever), and a
        thread of the parent may have held a flight table's lock. New tables, and no tasks,
        refreshes or abandoned loads to wait for (as the threaded loader's restart)."""
        self.flights = async_flights()
        self._tasks = set()
        self._closes = weakref.WeakKeyDictionary()  # the parent's loops never run here
        self.holdings.forget_all()
        self._refreshing = set()
        self._abandoned = {}
        self._timed_slots()

    # -- one key

    async def load(
        self,
        key: str,
        mark: int,
        loader: AsyncLoader | None,
        ttl: CheckedTtl | None,
        stale: StaleCopy | None,
        *,
        background: bool = False,
    ) -> Entry:
        """As :meth:`SourceLoader.load`: under the key's lease, with timeouts and fail-safe;
        the entry to serve."""
        resting = self._batching.rested_one(key, mark, stale)  # the source throttled it lately
        if resting is not None:
            return await arun(resting)
        lease_wait = self._lease_wait
        held = None if lease_wait is None else self.holdings.hold()
        try:
            token: str | None = None
            if lease_wait is not None and held is not None:
                token, filled = await arun(lease_wait.one(key, mark, held))
                if filled is not None:
                    return filled
            soft = None if background or stale is None else self._soft_timeout
            hard = None if background else self._hard_timeout
            try:
                if soft is None and hard is None:
                    # An earlier caller's load left running (a dict look-up, empty but for
                    # impatient callers), else this caller's own, in its task.
                    joined = self._joinable(key, token, held) if self._abandoned else None
                    if joined is None:
                        # The caller's own load, in its task: a miss pays for nothing more
                        # (a frame of its own here cost the miss a coroutine).
                        try:
                            entry = await self._load(key, loader, ttl)
                        except asyncio.CancelledError:
                            if not background and self._may_leave(key, mark):
                                await self._leave(key, mark, loader, ttl, token=token, held=held)
                            raise
                    else:
                        task, mark, wait = joined
                        return await self._await_timed(
                            key, task, mark, None, None, wait=wait, earlier=True
                        )
                else:
                    task, mark, waited, wait, earlier = await self._timed_task(
                        key, mark, loader, ttl, token, held=held, soft=soft, hard=hard
                    )
                    soft, hard = after_wait(soft, hard, waited)
                    return await self._await_timed(
                        key, task, mark, soft, hard, wait=wait, earlier=earlier
                    )
            except BaseException as caught:
                # As the threaded loader's: whatever stopped the load (it failed, was refused
                # a slot, the caller was cancelled or interrupted), its lease goes back before
                # the caller is served, unless the load's task took it.
                if held is not None:
                    await self._give_back(held, caught)
                return await arun(self._batching.load_failed(key, mark, stale, caught))
            await self._fill(key, mark, entry, token)
            return entry
        except BaseException as stopped:
            # From the step the lease's answer came back in (an interrupt raised into the
            # loop in the instant after it, a cancelled fill): what is still held goes back.
            if held is not None:
                await self._give_back(held, stopped)
            raise
        finally:
            self.holdings.let_go(held)

    async def _give_back(self, held: HeldLeases, stopped: BaseException) -> None:
        """Give back what ``held`` still holds (:mod:`tiered_cache.held_leases`), in a task
        of its own that the caller waits for. Its own task: a caller cancelled again meanwhile
        stops waiting, not the give-back. Waited for: an interrupt raised into the loop (or
        asyncio.run's Ctrl-C, a cancellation) ends the loop once this caller ends, and a task
        not begun by then was cancelled before its first step (the lease stayed until
        ``lease_ttl``)."""
        if not held.tokens():
            return
        give_back = self.spawn(arun(self.holdings.give_back(held)))
        try:
            await asyncio.shield(give_back)
        except asyncio.CancelledError:
            if isinstance(stopped, Exception):
                raise  # cancelled while it gave back after a failure: the cancel wins
            # else stopped already: the caller raises that; the give-back goes on

    async def _fill(self, key: str, mark: int, entry: Entry, token: str | None) -> None:
        tokens = {key: token} if token is not None else None
        await self._fence.afill(mark, {key: entry}, self._tiers, tokens=tokens)

    async def _timed_task(
        self,
        key: str,
        mark: int,
        loader: AsyncLoader | None,
        ttl: CheckedTtl | None,
        token: str | None,
        *,
        held: HeldLeases | None,
        soft: float | None,
        hard: float | None,
    ) -> tuple[asyncio.Task[Entry], int, float, Wait, bool]:
        """The task loading ``key`` (and filling when done): an earlier one its caller gave
        up on, if the fence lets a miss join it (:meth:`Fence.may_join`), else a new one,
        once a slot is free (:meth:`_take_slot`). Returns it with the fence mark its fill is
        judged by, the seconds waited for the slot, this caller's wait for it (the task works
        for the callers waiting for it: :class:`~tiered_cache.singleflight.Behalf`) and
        whether it is an earlier caller's. The caller's lease (``token``, in ``held``) is the
        task's from its spawn (:meth:`_hand_on`), or given back if it joins an earlier one."""
        joined = self._joinable(key, token, held)
        if joined is not None:
            return joined[0], joined[1], 0.0, joined[2], True
        timeout = soft if soft is not None else hard
        assert timeout is not None  # load() times a load only with a timeout
        # The slot is the claim's from the step it is counted (TimedSlots.try_take), and the
        # claim the task's once it runs: an interrupt raised into the loop in between gives
        # it back (the slot stayed taken for the life of the cache). A task already spawned
        # then runs without it; its end gives back nothing more (a claim gives back once).
        claim = self._slots.claim()
        try:
            waited = await self._take_slot(key, timeout, soft is not None, claim)  # or raises
            # The task works for this caller (its loader reading the key this caller's
            # flight loads is a recursive load) until the caller stops waiting for it.
            wait = hand_over(asyncio.current_task())
            left = self._hand_on(held, key, token)
            task = self.spawn(
                self._load_and_fill(key, mark, loader, ttl, token=token, work=wait.work, held=left)
            )
            self._timed[task] = claim
            task.add_done_callback(self._timed_done)
        except BaseException:
            claim.give_back()
            raise
        return task, mark, waited, wait, False

    def _joinable(
        self, key: str, token: str | None, held: HeldLeases | None
    ) -> tuple[asyncio.Task[Entry], int, Wait] | None:
        """The load of ``key`` an earlier caller left running, if the fence lets a miss join
        it (:func:`~tiered_cache.timed_slots.may_join_left`), with the fence mark its fill
        is judged by and this caller's wait for it; the caller's lease (``token``, in
        ``held``) is given back, the left load filling under its own. None: this caller
        loads."""
        running = self._abandoned.get(key)
        if running is not None and stalled(running[0]):
            self._give_back_stalled()  # it may never end: load anew
            running = None
        if running is None or not may_join_left(running[0], key, running[1], self._fence.may_join):
            return None
        joined, older, work = running
        if own_work(work):  # its own loader awaits its key: it would wait for itself
            raise recursive_load(key)
        if token is not None:
            if held is not None:
                held.hand_on((key,))
            self.spawn(self._release(key, token))
        return joined, older, work.waited_by(asyncio.current_task())

    def _may_leave(self, key: str, mark: int) -> bool:
        """Whether an untimed load, run in its caller's task and cancelled with it (the
        cancellation reaches the loader's await before the loader sees it), is begun again,
        left running (:meth:`_leave`): else impatient callers (``asyncio.wait_for`` around a
        ``get``, clients gone) each began a load, and none ended. Its price: a second call
        to the source for each cancelled caller whose load was its own (the key's later
        misses join the left one). Only for the caller's own cancellation (its task is
        cancelling: not a ``CancelledError`` the loader raised itself), while the loader is
        open, while the fence would let a miss
        join it and fill from it (no invalidation of ``key`` since ``mark``: its fill would
        be refused), below ``max_abandoned_loads`` (:meth:`TimedSlots.may_leave`), and not
        in the sweep of every task at the end of ``asyncio.run``
        (:func:`~tiered_cache.loop_end.in_final_sweep`): a task begun there is left pending
        as the loop closes, its lease held until ``lease_ttl``."""
        task = asyncio.current_task()
        return (
            task is not None
            and task.cancelling() > 0
            and not self._closed
            and self._fence.may_join(key, mark)
            and self._slots.may_leave()
            and not in_final_sweep()
        )

    async def _leave(
        self,
        key: str,
        mark: int,
        loader: AsyncLoader | None,
        ttl: CheckedTtl | None,
        *,
        token: str | None,
        held: HeldLeases | None,
    ) -> None:
        """Begin the load of ``key`` again in a task of the loader, left running as a timed
        load its caller stopped waiting for (:meth:`_abandon`: counted ``abandoned_loads``,
        toward ``max_abandoned_loads``, joined by the key's next miss). It fills under the
        caller's fence ``mark`` and its lease ``token``, handed on from the caller's
        ``held`` (:meth:`_hand_on`): given back by the task however it ends
        (:meth:`_load_and_fill`), by :meth:`aclose` if it never gets there. Bounded as the
        caller's load was: by the source's own timeouts (untimed: no ``hard_timeout``).

        The caller waits for the task's first step (a turn of the loop): cancelled by hand
        in the turn its service returned in, the caller met its cancellation as the loop
        stopped, and the sweep at the end of ``asyncio.run`` cancelled the task before it
        began: it ran nothing, and its lease stayed until ``lease_ttl``. The caller, which
        the sweep waits for, gives it back then."""
        left = self._hand_on(held, key, token)
        wait = hand_over(asyncio.current_task())
        task = self.spawn(
            self._load_and_fill(key, mark, loader, ttl, token=token, work=wait.work, held=left)
        )
        self._abandon(key, task, mark, wait)
        if left is not None:
            await past_first_step(task)
            if task.done() and left.tokens():
                await self._give_back(left, asyncio.CancelledError())
                self.holdings.let_go(left)

    def _hand_on(self, held: HeldLeases | None, key: str, token: str | None) -> HeldLeases | None:
        """The lease ``token`` of ``key``, handed on from a caller's ``held`` to leases of
        a task's own in the loader's holdings (None: no lease), in one step: the task owns
        its give-back from here, and :meth:`aclose` gives it back should the task never
        get there."""
        if held is None or token is None:
            return None
        held.hand_on((key,))
        left = self.holdings.hold()
        left.took({key: token})
        return left

    def _timed_done(self, task: asyncio.Task[Entry]) -> None:
        claim = self._timed.pop(task, None)
        if claim is not None:  # else given back already (its loop was found stalled)
            claim.give_back()

    def _give_back_stalled(self) -> None:
        """Give back the slots of timed loads whose event loops were closed under them, or
        left not running (a loop run by hand, then closed or left): they run again only if
        someone runs that loop, nor do their done callbacks, which would give the slots back.
        One that does run again ends without its slot (its callbacks find it given back).
        The same for the untimed loads left running (:meth:`_leave`), which take no slot."""
        for task in list(self._hung):  # a copy: other loops' callbacks change it
            if stalled(task):
                self._abandoned_done(task)
        for task in list(self._timed):
            if stalled(task):
                self._timed_done(task)

    async def _take_slot(self, key: str, timeout: float, serve_stale: bool, claim: Claim) -> float:
        """Wait (within ``timeout``) for a slot for ``claim`` (:meth:`TimedSlots.try_take`,
        which raises when refused); returns the seconds waited."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            if self._slots.crowded():
                self._give_back_stalled()
            waited = loop.time() - start
            if self._slots.try_take(key, timeout, waited, serve_stale=serve_stale, claim=claim):
                return loop.time() - start
            remaining = timeout - (loop.time() - start)
            # Tasks of another event loop cannot be awaited here: look again shortly.
            here = {task for task in list(self._timed) if task.get_loop() is loop}
            if here:
                await asyncio.wait(here, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(min(remaining, 0.01))

    async def _release(self, key: str, token: str) -> None:
        if self._lease_wait is not None:
            await self._lease_wait.tier.release_leases({key: token})

    async def _load_and_fill(
        self,
        key: str,
        mark: int,
        loader: AsyncLoader | None,
        ttl: CheckedTtl | None,
        *,
        token: str | None,
        work: Behalf,
        held: HeldLeases | None,
    ) -> Entry:
        """A load in a task of its own (a timed load, or one begun again for a cancelled
        caller), filling when it ends, under the lease ``token`` that ``held`` holds
        (:meth:`_hand_on`). The one owner of its give-back: whatever stops it -- the source
        failed, the fill failed or was stopped on its way to Redis after the source
        answered, the task was cancelled (:meth:`aclose`, the sweep at the end of
        ``asyncio.run``) -- what ``held`` still holds goes back (token-checked: a fill that
        landed used its lease). Given back only when the source failed, a fill stopped on
        the wire let go of its lease without giving it back: held until ``lease_ttl``,
        every reader of the key waiting ``lease_wait``. ``held`` stays in the holdings
        while it holds anything, for :meth:`aclose` should the give-back itself be
        stopped. Ending once the close has begun (it ignored its cancellation), it fills
        nothing: the tiers are closing or closed (the Redis tier refused the fill, a tier
        failure logged for a closed chain); its lease goes back, unless the close gave it
        back already (past ``close_wait``)."""
        act_for(work)  # a task runs in a copy of its spawner's context: nothing to restore
        try:
            entry = await self._load(key, loader, ttl)
            if not self._closed:  # else its tiers are closing, or closed: no fill
                await self._fill(key, mark, entry, token)
                if held is not None:
                    held.hand_on((key,))  # the fill used it, or gave it back
        finally:
            if held is not None:
                # However it ended: what it still holds goes back (nothing once the close
                # gave it back), and it is let go of once nothing is left in it.
                await arun(self.holdings.give_back(held))
                if not held.tokens():
                    self.holdings.let_go(held)
        return entry

    async def _await_timed(
        self,
        key: str,
        task: asyncio.Task[Entry],
        mark: int,
        soft: float | None,
        hard: float | None,
        *,
        wait: Wait,
        earlier: bool,
    ) -> Entry:
        """The entry of the load ``task`` (``earlier``: an earlier caller's, which this miss
        joined), if it comes within the timeout (neither ``soft`` nor ``hard``: an untimed
        load left running, however long it takes); else ServeStale or LoadTimeout. The task
        works for this caller while it waits (``wait``)."""
        timeout = soft if soft is not None else hard
        try:
            try:
                done = await ends_within(task, timeout)
            except asyncio.CancelledError:
                # The caller went away: its load goes on, and the next miss joins it rather
                # than start another (impatient clients would otherwise each add a load).
                self._abandon(key, task, mark, wait)
                raise
            if done:
                return task.result()
            self._abandon(key, task, mark, wait)
            raise self._slots.timed_out(key, hard, serve_stale=soft is not None, earlier=earlier)
        finally:
            wait.ended()

    def _abandon(self, key: str, task: asyncio.Task[Entry], mark: int, wait: Wait) -> None:
        """Keep ``task`` as the key's load whose caller stopped waiting (timed out or was
        cancelled), for the next miss to join (:meth:`_joinable`); counted once, however
        many of its callers stop waiting. The task no longer works for this caller."""
        wait.ended()
        if task not in self._hung:
            self._hung[task] = key
            self._abandoned[key] = (task, mark, wait.work)
            self._slots.abandoned()
            task.add_done_callback(self._abandoned_done)

    def _abandoned_done(self, task: asyncio.Task[Entry]) -> None:
        key = self._hung.pop(task, None)
        if key is None:  # not abandoned, or given back already (its loop was found closed)
            return
        self._slots.abandoned_done()
        running = self._abandoned.get(key)
        if running is not None and running[0] is task:
            del self._abandoned[key]

    # -- batches (get_many)

    async def load_batch(
        self,
        leading: Leading[AsyncFlight],
        mark: int,
        loader: AsyncBatchLoader | None,
        ttl: CheckedTtl | None,
        stale: Mapping[str, StaleCopy],
    ) -> tuple[dict[str, Any], dict[str, BaseException]]:
        """As :meth:`SourceLoader.load_batch`."""
        held = self.holdings.hold()
        try:
            batch = self._batching.for_flights(leading, mark, loader, ttl, stale=stale, held=held)
            return await arun(batch)
        finally:
            self.holdings.let_go(held)

    # -- background work

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coroutine`` as a task this loader keeps (and :meth:`wait_background` awaits)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        loop = task.get_loop()
        if loop not in self._closes:
            self._closes[loop] = when_closed(loop, self._loop_closed)
        return task

    def _loop_closed(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop`` was closed (:func:`~tiered_cache.loop_end.when_closed`, on the thread
        that closed it). A task of this loader still pending there (a load its caller
        stopped waiting for, a refresh) never runs again: dropped now, its slot given back,
        and said here, once, in the loader's words. Left to the collector, asyncio said
        ``Task was destroyed but it is pending!`` whenever it freed the task (in a later
        test's output, at exit), naming the loader's internals. A loop ended by
        ``asyncio.run`` cancelled them first: nothing is left, nothing said."""
        left = [t for t in list(self._tasks) if t.get_loop() is loop and not t.done()]
        if not left:
            return
        for task in left:
            self._tasks.discard(task)
            # The one way to keep asyncio from saying it again as the task is freed: the
            # attribute asyncio's own run_until_complete sets for the same reason.
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._give_back_stalled()
        logger.warning(
            "%d load(s) of the cache were still running when their event loop was closed "
            "by hand (their callers had stopped waiting: a timeout or a cancellation): they "
            "never end. End a loop with asyncio.run or asyncio.Runner, which cancel what is "
            "left",
            len(left),
        )

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its caller (if any) has seen or dropped it

    def refresh_in_background(
        self, key: str, loader: AsyncLoader | None, ttl: CheckedTtl | None, stale: Stale | None
    ) -> None:
        """Reload ``key`` in a task, once at a time per key; ``stale`` as for
        :meth:`SourceLoader.refresh_in_background`."""
        if key in self._refreshing or self._closed:
            return
        self._refreshing.add(key)
        self._metrics.count("refreshes")
        self.spawn(self._refresh(key, loader, ttl, stale))

    async def _refresh(
        self, key: str, loader: AsyncLoader | None, ttl: CheckedTtl | None, stale: Stale | None
    ) -> None:
        try:
            # A refresh is a load of its key: it leads a flight of the key in the readers'
            # table, after any flight in progress (the threaded loader's rule).
            while True:
                mark = self._fence.mark()  # before the refresh reads anything
                # The flight it leads if the key has none, made before the claim and claimed
                # inside the try that lands it (SingleFlight.run's rule).
                mine = AsyncFlight(mark)
                try:
                    flight, role = self.flights.lead_after(key, tag=mark, lead=mine)
                    if role == BEHIND:
                        await self._settle(key, flight)
                        continue
                    assert role == LEAD  # a refresh is a task of its own: it led no flight before
                    entry = await self.load(key, mark, loader, ttl, None, background=True)
                    self.flights.land_one(key, mine, entry.value, None)
                except BaseException as exc:
                    self.flights.land_one(key, mine, None, refresh_failed(exc))
                    raise
                return
        except Exception as exc:
            await arun(self._batching.refresh_failure(key, exc, stale))
        finally:
            self._refreshing.discard(key)

    async def _settle(self, key: str, flight: AsyncFlight) -> None:
        """Wait for the key's flight in progress to land, as a reader waits to join one."""
        await within_join_timeout(flight.settle(), key, self.join_timeout)

    async def wait_background(self, timeout: float | None = None) -> bool:
        """Wait until background refreshes and late loads have finished (and filled);
        False if some were still running after ``timeout`` seconds."""
        tasks = self._live_tasks()
        if not tasks:
            return True
        return await all_end_within(tasks, timeout)

    def _live_tasks(self) -> list[asyncio.Task[Any]]:
        """The loader's tasks, less the stalled ones (:func:`~tiered_cache.loops.stalled`:
        their loops closed, or left not running): nothing to wait for, and their slots are
        given back; those of closed loops are dropped (they never run again)."""
        self._give_back_stalled()
        live: list[asyncio.Task[Any]] = []
        for task in list(self._tasks):  # a copy: other loops' callbacks change the set
            if task.get_loop().is_closed():
                self._tasks.discard(task)
            elif not stalled(task):
                live.append(task)
        return live

    async def aclose(self) -> None:
        """Stop taking background work and cancel what runs, waiting for it to end
        ``protection.close_wait`` at most: a load that ignores its cancellation (a source
        client that swallows it, or whose cleanup waits on a dead server) held the close
        for good. Past it the close logs a warning and counts ``close_loads_left_running``;
        those loads end by themselves, filling nothing (:meth:`_load_and_fill`). A task of
        a loop left not running is cancelled (if that loop ever runs again), not waited
        for: aclose waited for it for ever. Then the leases of the loads and writes still in
        flight are given back (those loads' among them), as :meth:`SourceLoader.close` does
        (the tiers close next). Harmless twice: the chain's close runs it again if a sweep
        of every task stopped it (:meth:`AsyncTieredCache.aclose`)."""
        self._closed = True
        tasks = self._live_tasks()
        for task in list(self._tasks):
            cancel(task)
        within = self._protection.close_wait
        if not await all_end_within(tasks, within):
            left = sum(not task.done() for task in tasks)
            self._metrics.count("close_loads_left_running", left)
            logger.warning(
                "the close stopped waiting for %d load(s) of the cache still running after "
                "their cancellation (protection.close_wait, %s s): their leases are given "
                "back, and each ends by itself, filling nothing",
                left,
                within,
                extra=fields("close_loads_left_running"),
            )
        await arun(self.holdings.give_back_all())
        self._unwatch_loops()

    def _unwatch_loops(self) -> None:
        """At the close: the close watch (:meth:`spawn`) of each loop none of this loader's
        tasks is left pending on is cancelled. Each is a timer held by its loop, which a loop
        that lives on (an application's, building and closing chains) kept for ever, one per
        chain closed there. A loop left not running keeps its watch while a task cancelled
        there is pending: closed by hand, that task is still dropped and said once
        (:meth:`_loop_closed`)."""
        pending = {task.get_loop() for task in list(self._tasks) if not task.done()}
        for loop, watch in list(self._closes.items()):
            if loop in pending:
                continue
            del self._closes[loop]
            timer = watch()
            if timer is not None:
                timer.cancel()

    # -- the source itself

    async def _load(self, key: str, loader: AsyncLoader | None, ttl: CheckedTtl | None) -> Entry:
        started = self._clock()
        try:
            if loader is not None:
                value = await loader()
            elif self._async_source is not None:
                value = await self._async_source.load(key)
            elif self._sync_source is not None:
                value = await asyncio.to_thread(self._sync_source.load, key)
            else:
                raise TieredCacheError(
                    f"cannot load {key!r}: the cache has no source and no loader was given"
                )
            value = loaded(value, key)
        except BaseException:
            self._metrics.load_failure()
            raise
        finished = self._clock()
        self._metrics.load(1, finished - started)
        return self._batching.entry(key, value, finished, finished - started, ttl)

    async def _load_many(
        self, keys: Sequence[str], loader: AsyncBatchLoader | None, ttl: CheckedTtl | None
    ) -> dict[str, Entry]:
        started = self._clock()
        try:
            if loader is not None:
                values = dict(await loader(keys))
            elif self._async_source is not None:
                values = await self._async_source.load_many(keys)
            elif self._sync_source is not None:
                values = await asyncio.to_thread(self._sync_source.load_many, keys)
            else:
                raise TieredCacheError(
                    "cannot load keys: the cache has no source and no loader was given"
                )
            loaded_many(values)
        except BaseException:
            self._metrics.load_failure()
            raise
        finished = self._clock()
        self._metrics.load(len(keys), finished - started)
        return self._batching.entries(values, keys, ttl, finished, finished - started)

    # -- writes to the source

    async def store(self, key: str, value: Any) -> None:
        """Write the source (write-through)."""
        if self._async_source is not None:
            await self._async_source.store(key, value)
        elif self._sync_source is not None:
            await asyncio.to_thread(self._sync_source.store, key, value)

    async def close_source(self) -> None:
        try:
            if self._async_source is not None:
                await self._async_source.aclose()
            elif self._sync_source is not None:
                await asyncio.to_thread(self._sync_source.close)
        except Exception:
            logger.exception("closing the source failed")
