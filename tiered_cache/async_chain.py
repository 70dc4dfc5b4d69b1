"""AsyncTieredCache: the chain for asyncio services, on the same parts as the threaded one.

Its decisions are not a second copy: the L1 hit is :class:`~tiered_cache.l1.L1Reader`'s, every
path after it is a :class:`~tiered_cache.paths.ChainPaths` step sequence, fills and
invalidations go through the same :class:`~tiered_cache.fence.Fence`, loads through the
shared lease-wait and batch steps, entries are stamped by the same
:class:`~tiered_cache.stamp.EntryMaker`. This module holds what only asyncio has: coroutine
single-flight (a cancelled leader hands its flight over), tasks for background work, and the
``async`` face. See docs/async.md.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from .async_accessor import AsyncTierAccessor
from .async_flight import AsyncFlight, within_join_timeout
from .async_loader import AsyncBatchLoader, AsyncLoader, AsyncSourceLoader
from .async_tier import AsyncSource, AsyncTier
from .bus import AsyncBus, Bus, close_wait
from .closed import ClosedPaths, Paths, is_closed
from .coherence import DEFAULT_BUS_BREAKER, BusLink, publish_breaker
from .fence import Fence
from .forking import restart_after_fork
from .hit import NOT_FRESH
from .keys import check_chain_labels, key_list
from .l1 import L1Reader
from .logs import fields, logger_for
from .loop_owner import LoopOwner, loop_bound
from .loops import all_end_within, ends_within, stalled
from .metrics import CacheMetrics
from .not_data import NotData
from .own_thread import OwnThreads
from .paths import ChainPaths
from .protection import REFRESH_DUE, Protection
from .read_state import CONNECTED, ReadState
from .reporting import chain_stats, first_hot_keys
from .settings import check_chain_options
from .singleflight import BEHIND, BESIDE, LEAD, LeaderGone
from .stamp import EntryMaker, check_ttl
from .steps import Steps, arun, run
from .tier import MISSING, Entry, Source, Tier
from .units import DurationLike
from .write_tasks import WriteTasks, undo_of

if TYPE_CHECKING:
    from .decorator import AsyncCachedFunction
    from .settings import BreakerSettings, CacheSettings

logger = logger_for("chain")

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["AsyncBatchLoader", "AsyncLoader", "AsyncTieredCache"]


class LoopLock:
    """An ``asyncio.Lock`` for each event loop the chain runs on: one belongs to the loop it
    first waited on, and waiting for it on another loop (a chain kept across ``asyncio.run``
    calls) raises. Orders the bus announcements of one loop (:class:`BusLink`)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def _here(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def acquire(self) -> bool:
        return await self._here().acquire()

    def release(self) -> None:
        self._here().release()


class AsyncTieredCache(L1Reader, NotData):
    """A chain of tiers for asyncio code: :class:`~tiered_cache.TieredCache`'s behaviour with
    coroutine methods.

    Tiers may be native async tiers (:class:`~tiered_cache.async_tier.AsyncTier`, such as the
    Redis adapter's ``AsyncRedisTier``), the memory tier (used as it is: its calls do no I/O)
    or any other sync tier (run in threads, with a
    :class:`~tiered_cache.async_accessor.BlockingTierWarning`). The same holds for the
    source. Loaders passed to :meth:`get` are coroutine functions.

    The arguments are :class:`~tiered_cache.TieredCache`'s, but ``sleep`` (a coroutine
    function, ``asyncio.sleep``) and ``background`` (refreshes are tasks of the chain).
    """

    def __init__(
        self,
        tiers: Sequence[Tier | AsyncTier],
        source: Source | AsyncSource | None = None,
        *,
        namespace: str = "default",
        ttl: DurationLike | None = None,
        negative_ttl: DurationLike = 30.0,
        clock: Callable[[], float] = time.time,
        protection: Protection | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        bus: Bus | AsyncBus | None = None,
        max_stale_when_disconnected: DurationLike = 1.0,
        write_policy: Literal["through", "around"] = "through",
        bus_breaker: BreakerSettings | None = DEFAULT_BUS_BREAKER,
    ) -> None:
        self.namespace = check_chain_labels(namespace, [tier.name for tier in tiers])
        ttl, negative_ttl, write_policy, max_stale_when_disconnected, protection = (
            check_chain_options(
                ttl, negative_ttl, write_policy, max_stale_when_disconnected, protection
            )
        )
        self._given = tuple(tiers)
        self._source = source
        self._clock = clock
        self._protection = protection or Protection()
        self._metrics = CacheMetrics([tier.name for tier in tiers])
        #: Writes running to their end, finished should their loop end first; a write
        #: stopped so waits for each of its calls the bus's close_wait at most.
        self._writes = WriteTasks(None if bus is None else close_wait(bus))
        self._tiers = [
            AsyncTierAccessor(
                index,
                tier,
                self._metrics,
                clock,
                bounded=self._writes.bounded,
                stopping=self._writes.stopping,
            )
            for index, tier in enumerate(tiers)
        ]
        # The fence drops in-process copies itself: those are sync tiers (memory), no I/O.
        self._fence = Fence(
            [tier.sync for tier in self._tiers],
            self._metrics,
            leases=self._protection.lease != "off",
            fill_targets=self._tiers,
        )
        self._entry = EntryMaker(ttl, negative_ttl, self._protection.max_stale)
        self._loader = AsyncSourceLoader(
            self._tiers,
            source,
            fence=self._fence,
            metrics=self._metrics,
            make_entry=self._entry,
            clock=clock,
            protection=self._protection,
            sleep=sleep,
        )
        self._bus_link: BusLink | None = None
        #: Every path after the L1 lookup; a :class:`ClosedPaths` once the chain is closed.
        paths = ChainPaths(
            self._tiers,
            fence=self._fence,
            metrics=self._metrics,
            protection=self._protection,
            make_entry=self._entry,
            clock=clock,
            loader=self._loader,
            store=self._loader.store if source is not None else None,
            announce=self._announce if bus is not None else None,
            write_policy=write_policy,
        )
        self._paths: Paths = paths
        for tier in self._tiers:  # a delete a shared tier owes is announced again once made
            tier.pay_with(paths.paid)
        #: What a miss that joins another's load counts (kept once the chain is closed).
        self._joined = paths.joined
        self._setup_l1(self._metrics, self._protection, rng)
        self._use_l1(self._tiers, None)
        self._follow_l1_debts(self._tiers)
        self._disconnected_bound = max_stale_when_disconnected
        #: The close, once begun (:meth:`aclose`).
        self._closing: asyncio.Task[None] | None = None
        bound = loop_bound([tier.name for tier in self._tiers if tier.one_loop], source, bus)
        #: One running event loop at a time, for a chain with loop-bound parts.
        self._loop_owner = LoopOwner(bound) if bound else None
        #: The async bus, asked to listen on the chain's loop (see :meth:`_listen_here`).
        self._async_bus: AsyncBus | None = None
        #: The bus publishes natively (an :class:`AsyncBus`), not in a thread.
        self._native_bus = isinstance(bus, AsyncBus)
        #: Where a sync bus publishes (a blocking call kept off the loop): threads the loop's
        #: end does not join (a publish stuck there held it), started on the first publish.
        self._publishers = OwnThreads(f"tiered-cache-publish:{self.namespace}")
        # A chain dropped without aclose() (forgotten, built again by a framework's reload)
        # left its idle publishing threads waiting until their idle end: collected, it ends
        # them. (Over a bus whose listener thread holds the chain, it is never collected.)
        weakref.finalize(self, self._publishers.close)
        if bus is not None:
            self._bus_link = BusLink(
                bus,
                self._fence,
                self._metrics,
                self._set_bus_connected,
                lock=LoopLock() if self._native_bus else None,
                breaker=publish_breaker(bus_breaker, clock),
            )
        if isinstance(bus, AsyncBus):
            self._async_bus = bus
            self._listen_here()
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """The writes running to their end at the fork are tasks of the parent's loop, which
        never runs in a forked child: :meth:`aclose` and :meth:`wait_background` waited for
        them for ever there. Until the child's async bus listens (a bus listening in a task
        of the parent's loop, from the child's next miss; the Redis bus, on a thread it
        restarts in the child) and is subscribed, the bus is down for it, and the memory it
        inherited is not trusted (its parts restarted before it: their locks are the
        child's). The loop that held a chain with loop-bound
        tiers looks running in the child (it runs in the parent): forgotten, or the child's
        every call was refused."""
        self._writes.forget()
        self._publishers.after_fork_in_child()
        if self._loop_owner is not None:
            self._loop_owner.forget()
        if self._async_bus is not None and self._bus_link is not None:
            self._bus_link.on_disconnect()  # and again when the child's listener starts

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        path: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **overrides: Any,
    ) -> AsyncTieredCache:
        """Build from the same settings file as :meth:`TieredCache.from_config`; each kind
        uses its async plugin when its adapter has one (entry-point group
        ``tiered_cache.async_tiers`` / ``tiered_cache.async_sources``), else its sync one."""
        from .build import build_async_cache
        from .settings import load_settings

        return build_async_cache(load_settings(path, **overrides), clock=clock)

    @classmethod
    def from_settings(
        cls, settings: CacheSettings, *, clock: Callable[[], float] = time.time
    ) -> AsyncTieredCache:
        """Build from a settings object."""
        from .build import build_async_cache

        return build_async_cache(settings, clock=clock)

    @property
    def tiers(self) -> tuple[Tier | AsyncTier, ...]:
        """The tiers, fastest first (as given)."""
        return self._given

    @property
    def closed(self) -> bool:
        """Whether the chain was closed (every call but reporting then raises
        :class:`~tiered_cache.ChainClosedError`)."""
        return is_closed(self._paths)

    @property
    def source(self) -> Source | AsyncSource | None:
        """The source of truth, if the chain has one."""
        return self._source

    # -- reads --------------------------------------------------------------------------------

    async def get(
        self, key: str, loader: AsyncLoader | None = None, *, ttl: DurationLike | None = None
    ) -> Any:
        """The value for ``key``, read through the tiers down to the source (see
        :meth:`TieredCache.get`); ``loader`` is a coroutine function of no arguments."""
        value = self.l1_hit(key)  # one call for a plain hit (L1Reader.l1_hit)
        if value is NOT_FRESH:
            value = self.lookup_l1(key)
            if value is MISSING or value is REFRESH_DUE or type(value) is ReadState:
                return await self.get_after_l1(key, loader, ttl, value)
        return value

    async def get_after_l1(
        self,
        key: str,
        loader: AsyncLoader | None,
        ttl: DurationLike | None,
        looked: Any = MISSING,
    ) -> Any:
        """Everything after an L1 miss (for the decorator): one flight per key, shared by the
        coroutines of every event loop of this process (of one loop at a time, for a chain
        with loop-bound tiers: :mod:`tiered_cache.loop_owner`).

        The first caller leads the flight in its own task (no task is spawned: a miss costs
        no extra hop); if it is cancelled (its client went away), the waiters do not inherit
        its cancellation: the next one leads a new flight. ``looked``: what the L1 lookup
        returned (see :meth:`TieredCache.get_after_l1`): the read's one decision of the bus
        is taken from it, before anything here (listening on this loop) may change the bus.
        """
        self._admit()
        lifetime = check_ttl(ttl)
        state = looked if type(looked) is ReadState else self._paths.looked()
        if looked is REFRESH_DUE and self._tiers:
            self._metrics.count("early_refreshes")
            self._loader.refresh_in_background(key, loader, lifetime, None)
            entry = await self._tiers[0].get(key, False)
            if entry is not MISSING and not entry.is_expired(self._clock()):
                return entry.value
        if self._async_bus is not None:
            self._listen_here()
        fence = self._fence
        flights = self._loader.flights
        beside = True
        # An I/O tier 0 is counted by the first step of this read that reads it, or its first
        # join (ChainPaths.first_awaited): once per read, as the threaded lookup counts it.
        first_counted = False
        while True:
            mark = fence.mark()
            # The flight this caller leads if the key has none: made before the claim, and the
            # claim inside the try that lands it (FlightTable.land_one), as SingleFlight.run's.
            mine = AsyncFlight(mark)
            try:
                flight, role = flights.join_or_lead(
                    key, tag=mark, may_join=fence.may_join, beside=beside, lead=mine
                )
                if role == LEAD:
                    value = await arun(
                        self._paths.read_through(
                            key, mark, loader, lifetime, state, first_counted=first_counted
                        )
                    )
                    flights.land_one(key, mine, value, None)
                    return value
            except BaseException as exc:
                # Cancelled, its waiters are told LeaderGone (FlightTable.land_one).
                flights.land_one(key, mine, None, exc)
                raise
            if role == BESIDE:
                # A background refresh leads the key's flight: the tiers read beside it,
                # under this caller's mark, without loading; joined only if nothing is there
                # to serve.
                beside = False
                value = await arun(
                    self._paths.read_through(
                        key, mark, loader, lifetime, state, beside=True, first_counted=first_counted
                    )
                )
                first_counted = True
                if value is not MISSING:
                    return value
                continue
            if flight.stalled():
                # Led on a loop closed (or left) under it: no outcome will ever come. Its
                # waiters start over (LeaderGone), one of them leading on its own loop.
                flights.land_one(key, flight, None, LeaderGone(f"{key!r}: its loop stalled"))
                continue
            wait = self._loader.join_timeout
            if role == BEHIND:
                # A load that read before the key's invalidation: not ours to take, and no
                # second load beside it (one per key at a time); ask again once it has ended.
                await within_join_timeout(flight.settle(), key, wait)
                continue
            self._joined(key, loader, lifetime, state, first_counted)
            first_counted = True
            try:
                # flight.wait shields the outcome: giving up cancels nothing of the load.
                return await within_join_timeout(flight.wait(), key, wait)
            except LeaderGone:
                continue

    async def get_many(
        self,
        keys: Iterable[str],
        loader: AsyncBatchLoader | None = None,
        *,
        ttl: DurationLike | None = None,
    ) -> dict[str, Any]:
        """Values for ``keys`` (see :meth:`TieredCache.get_many`); ``loader`` is a coroutine
        function taking the list of keys no tier had."""
        self._admit()
        if self._async_bus is not None:
            self._listen_here()
        return await arun(self._paths.get_many(key_list(keys), loader, ttl))

    async def lookup_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The fresh entries the tiers hold for ``keys``, without loading anything."""
        self._admit()
        # It fills memory from the shared tiers too: a chain that only looked up never
        # listened, and stayed "starting" (its memory bounded) for good.
        if self._async_bus is not None:
            self._listen_here()
        return await arun(self._paths.lookup_many(key_list(keys)))

    # -- writes -------------------------------------------------------------------------------

    async def set(self, key: str, value: Any, *, ttl: DurationLike | None = None) -> None:
        """Write ``value`` for ``key`` (see :meth:`TieredCache.set`: the same order)."""
        paths = self._paths
        await self._write(paths, paths.set(key, value, ttl), keys=[key])

    async def set_many(self, items: Mapping[str, Any], *, ttl: DurationLike | None = None) -> None:
        """Write several values (see :meth:`TieredCache.set_many`: the same order)."""
        paths = self._paths
        await self._write(paths, paths.set_many(items, ttl), keys=list(items))

    async def invalidate(self, key: str) -> None:
        """Remove ``key`` from every tier and every process's memory (not from the source)."""
        paths = self._paths
        await self._write(paths, paths.invalidate_many([key]), keys=[key])

    async def invalidate_many(self, keys: Iterable[str], *, strict: bool = False) -> None:
        """See :meth:`TieredCache.invalidate_many`."""
        paths, keys = self._paths, key_list(keys)
        await self._write(paths, paths.invalidate_many(keys, strict=strict), keys=keys)

    async def invalidate_prefix(self, prefix: str) -> None:
        """See :meth:`TieredCache.invalidate_prefix`."""
        paths = self._paths
        await self._write(paths, paths.invalidate_prefix(prefix), prefix=prefix)

    async def clear(self, *, strict: bool = False) -> None:
        """See :meth:`TieredCache.clear`."""
        paths = self._paths
        await self._write(paths, paths.clear(strict=strict))

    async def _write(
        self,
        paths: Paths,
        steps: Steps[None],
        *,
        keys: Sequence[str] | None = None,
        prefix: str | None = None,
    ) -> None:
        """Run a write to its end; what finishes it should its loop end first is derived
        from what it names (its keys, its prefix, or neither: everything) on the paths it
        began on (:func:`~tiered_cache.write_tasks.undo_of`)."""
        self._admit()
        await self._writes.run(steps, undo_of(paths, keys, prefix))

    def _admit(self) -> None:
        """Refuse a call from a second running event loop if a tier is bound to one."""
        owner = self._loop_owner
        if owner is not None:
            owner.here()

    # -- the bus ------------------------------------------------------------------------------

    async def _announce(
        self, keys: Sequence[str], prefixes: Sequence[str], clear: bool, at: float
    ) -> bool:
        link = self._bus_link
        assert link is not None
        with self._writes.publishing():  # what the close's close_wait bounds (_let_writes_end)
            if self._native_bus:
                if self._async_bus is not None:
                    self._listen_here()
                announcing = arun(link.announcing(keys, prefixes, clear, at))
            else:
                announcing = self._publishers.run(run, link.announcing(keys, prefixes, clear, at))
            return await self._writes.announced(announcing, link.publish_given_up)

    def _listen_here(self) -> None:
        """Have the async bus listen on the running loop, from every call that can fill
        memory (a miss, a batch, a lookup, a write), for a bus that listens in a task of the
        loop (:meth:`AsyncBus.listen`; the Redis bus listens from a thread, and does
        nothing here). A chain built outside a loop starts it on its first such call -- the
        memory is empty until then, so nothing is served that the bus should have dropped.
        A chain whose listener's loop ended (kept across ``asyncio.run`` calls) was told the
        bus is down (its memory cleared, the L1 fast path off, so the next read comes here)
        and starts it again on this loop."""
        bus = self._async_bus
        assert bus is not None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        bus.listen()  # nothing to do while it listens

    def _set_bus_connected(self, connected: bool, *, starting: bool = False) -> None:
        """Called on the bus's thread, or on the loop for an async bus (see
        :meth:`ChainPaths.set_bus_connected`)."""
        self._use_l1(
            self._tiers,
            self._paths.set_bus_connected(connected, self._disconnected_bound, starting=starting),
        )

    # -- the decorator ------------------------------------------------------------------------

    def cached(
        self, key: str, *, ttl: DurationLike | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], AsyncCachedFunction[P, R]]:
        """Cache an ``async def`` function's results under a key template (see
        :meth:`TieredCache.cached`): the awaited result is what is cached."""
        from .decorator import cached

        return cast(
            "Callable[[Callable[P, Awaitable[R]]], AsyncCachedFunction[P, R]]",
            cached(self, key, ttl=ttl),
        )

    # -- reporting and lifecycle -------------------------------------------------------------

    def hot_keys(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` hottest keys with their estimated rate per second, if a tier tracks them."""
        return first_hot_keys(self._tiers, n)

    def stats(self) -> dict[str, Any]:
        """The same snapshot as :meth:`TieredCache.stats` (no I/O: a plain method)."""
        return chain_stats(
            self._metrics.snapshot(),
            tiers=self._tiers,
            source=self._source,
            namespace=self.namespace,
            bus=self._bus_link,
        )

    async def wait_background(self, timeout: float | None = None) -> bool:
        """Wait until background refreshes, late loads (filled) and writes whose callers
        were cancelled have finished."""
        if not await all_end_within(self._writes.running(), timeout):
            return False
        return await self._loader.wait_background(timeout)

    async def aclose(self) -> None:
        """Let writes in flight finish, cancel background work, close the bus, every tier
        and the source. Idempotent. From then on every read, write and invalidation (and
        every call of a decorated function) raises :class:`~tiered_cache.ChainClosedError`;
        :meth:`stats` still answers.

        The close runs once, in a task of the chain, whoever asks: every ``aclose()`` returns
        once it is done (a signal handler's task and the service's ``async with``), and a
        caller that gives up (a shutdown timeout) stops waiting, not the close. Before, the
        first one marked the chain closed and a second returned at once, before anything was
        closed; one cancelled on its way left the tiers, the bus and the source open for
        good, every later ``aclose()`` returning at once. Loads in flight are not waited for:
        they end with their result and fill no memory (the fence's close).

        Awaited inside one of the chain's own writes (a source's ``store``, a tier's write),
        it returns once the close is begun, new calls refused: the close waits for that
        write, which goes on to its end first."""
        if not self.closed:
            # First, so that no call reaches a tier or the source being closed
            # (tiered_cache.closed), and before the writes in flight are waited for and the
            # loader gives back the leases of the calls in flight: a write begun after that
            # wait stole a lease nothing gave back (its fill found the tier closed). The calls
            # begun before go on to their end.
            self._paths = ClosedPaths(repr(self))
        closing = self._closing
        if closing is None or closing.cancelled() or (not closing.done() and stalled(closing)):
            # Not begun, or begun on a loop closed or left not running: it never ends there.
            closing = self._closing = asyncio.get_running_loop().create_task(
                self._close_parts(), name=f"tiered-cache-close:{self.namespace}"
            )
        if self._writes.inside():
            # Awaited inside one of the chain's writes (its source's store, a tier's write):
            # the close waits for the writes, this one among them, which cannot end before
            # this returns (both hung for good). Calls are refused from here on; the close
            # goes on once the write has ended, and a later aclose() waits for it.
            return
        await ends_within(closing, None)  # asyncio.wait: a caller cancelled cancels nothing
        if closing.done() and not closing.cancelled():
            closing.result()

    async def _close_parts(self) -> None:
        """The close, in its task. Cancelled, it is by a sweep of every task (the end of
        ``asyncio.run``, a framework's shutdown), no caller's (they wait with
        ``asyncio.wait``): it takes the cancellation back and runs its steps again from the
        first, each one harmless twice, after the sweep (which does not cancel the calls
        begun since, as for a write's finishing: :mod:`tiered_cache.write_tasks`). Once:
        a second sweep (a second Ctrl-C) stops it."""
        for attempt in (1, 2):
            try:
                await self._close_each_part()
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if attempt == 2 or task is None:
                    raise
                task.uncancel()

    async def _close_each_part(self) -> None:
        await self._let_writes_end()
        # After the writes it waits for (they land as they would have); the loads in flight,
        # not waited for, fill no memory from now on.
        self._fence.close()
        for tier in self._tiers:  # a write's failed delete arms a payment: after the writes
            await tier.stop_paying()
        await self._loader.aclose()
        self._use_l1(self._tiers, CONNECTED)  # closed: reads are refused
        if self._bus_link is not None:
            try:
                await self._bus_link.aclose()
            except Exception:
                logger.exception("closing the invalidation bus failed")
            self._publishers.close()  # a publish left running ends by itself
        for tier in self._tiers:
            await tier.aclose()
        await self._loader.close_source()

    async def _let_writes_end(self) -> None:
        """Wait for the writes in flight: their tier parts (and the source's, the fence's)
        without limit, then their publishes as long as the bus's ``close_wait`` at most (none
        declared, or no bus: without limit). The bound is the bus's, for the one part of a
        write that may have none: a publish stuck on a stalled server, a publisher with no
        socket timeout, held the close until the server resumed. A tier's call has the
        tier's own timeouts: bounded by ``close_wait`` too, a write stuck in a slow or
        stalled Redis tier (a socket timeout longer than ``close_wait``) had the bus and the
        tier closed under it: its next tier call refused ("is closed", its value not
        stored), its publish refused by the closed bus. A tier with no timeout holds the
        close as long as it holds the write. A write whose publish is left running ends by
        itself: its publish sent late, or failing (the bus closed under it, or refusing it
        once closed), logged and counted as any failed publish (``bus_publish_errors``): its
        caller is not told, as for any publish. (A write back in a tier after a publish, an
        owed delete paid by its next call and announced, is waited for as a publish then.)"""
        within = None if self._bus_link is None else self._bus_link.close_wait
        await self._writes.tier_parts_ended()
        running = self._writes.running()
        if not await all_end_within(running, within):
            left = sum(not task.done() for task in running)
            logger.warning(
                "the close stopped waiting for %d write(s) left running (the bus's "
                "close_wait); each ends by itself",
                left,
                extra=fields("close_writes_left_running"),
            )

    async def __aenter__(self) -> AsyncTieredCache:
        """The chain, for an ``async with`` block that closes it; a closed chain is refused
        (:class:`~tiered_cache.ChainClosedError`), as any use of it is."""
        self._paths.entered()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        names = " -> ".join(tier.name for tier in self._tiers) or "no tiers"
        source = self._source.name if self._source is not None else "loader"
        return f"<AsyncTieredCache {self.namespace!r}: {names} -> {source}>"
