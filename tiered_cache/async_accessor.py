"""The asyncio chain's hold on one tier (:class:`~tiered_cache.accessor.TierAccessor` for
coroutines).

Three kinds of tier, one interface of coroutines with the names the shared steps use
(:mod:`tiered_cache.steps`):

- a sync tier that is ``local`` (the memory tier): its accessor is called inline -- its calls
  do no I/O, so a thread would only add a hop;
- any other sync tier (a third party's): its accessor runs in a thread
  (``asyncio.to_thread``), so the event loop never blocks on it; a
  :class:`BlockingTierWarning` says so once, when the chain is built;
- a native async tier (:class:`~tiered_cache.async_tier.AsyncTier`, Redis on
  ``redis.asyncio``): awaited, through the breaker's :meth:`~CircuitBreaker.acall`.

The counting, failure logging, breaker state and capability flags are the sync accessor's
(one per tier, whatever its kind): only the I/O differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from .accessor import TierAccessor
from .async_tier import (
    AsyncLeasingTier,
    AsyncSource,
    AsyncTier,
    AsyncTierBase,
    declared_capabilities,
    declared_delete_prefix,
)
from .breaker import CircuitBreaker, GuardedTier
from .errors import CodecError
from .hit import HitCount
from .metrics import CacheMetrics
from .owed import Debt, PaymentInFlight
from .owed_timer import PaymentTask
from .reporting import ReportValue
from .steps import Steps, arun
from .tier import MISSING, Entry, MissingType, Tier

T = TypeVar("T")


def unbounded(call: Awaitable[T]) -> Awaitable[T]:
    """``call`` as it is: an accessor's calls awaited as long as they take (one built
    outside a chain, whose writes bound nothing)."""
    return call


def never() -> bool:
    """No write is ever stopped by a sweep (an accessor built outside a chain)."""
    return False


class BlockingTierWarning(UserWarning):
    """A sync tier or source that is not in-process runs in a thread under the asyncio chain."""


def is_async_part(part: object) -> bool:
    """True for a tier or source with coroutine methods (it has ``aclose``)."""
    if isinstance(part, GuardedTier):
        part = part.tier
    return isinstance(part, AsyncTier | AsyncTierBase | AsyncSource)


class AsyncTierAccessor:
    """One tier of an asyncio chain, as the chain uses it (see the module's docstring)."""

    def __init__(
        self,
        index: int,
        tier: Tier | AsyncTier,
        metrics: CacheMetrics,
        clock: Callable[[], float],
        *,
        bounded: Callable[[Awaitable[Any]], Awaitable[Any]] = unbounded,
        stopping: Callable[[], bool] = never,
    ) -> None:
        breaker: CircuitBreaker | None = None
        inner: object = tier
        if isinstance(tier, GuardedTier):
            breaker, inner = tier.breaker, tier.tier
        self._native: AsyncTier | None = cast(AsyncTier, inner) if is_async_part(inner) else None
        #: The bookkeeping (counters, failures, breaker, flags); for a sync tier, its I/O too.
        self.sync = TierAccessor(index, cast(Tier, tier), metrics, clock)
        self.index = index
        self.name = self.sync.name
        self._breaker = breaker
        self._metrics = metrics
        #: How a native call of a write stopped as its loop ends is awaited: the chain's
        #: :meth:`WriteTasks.bounded <tiered_cache.write_tasks.WriteTasks.bounded>` (the
        #: rule's one home), for the calls such a write makes (deletes, lease give-backs).
        self._bounded = bounded
        #: Whether the running task is a write stopped by a sweep, or finishing one: the
        #: chain's :meth:`WriteTasks.stopping <tiered_cache.write_tasks.WriteTasks.stopping>`
        #: (its deletes are made while another caller pays what the tier owes: _quietly).
        self._stopping = stopping
        #: A native tier's declared ``delete_prefix``, else its ``clear``, resolved once (a
        #: sync tier's is its bookkeeping accessor's).
        self._delete_prefix: Callable[[str], Awaitable[None]] | None = None
        if self._native is not None:
            declared = declared_capabilities(inner)
            self.local = False
            self.leases = bool(declared.leases)
            self.utf8_keys = bool(declared.utf8_keys)
            self.one_loop = bool(declared.one_loop)
            self.prepare_value: Callable[[Any], Any] = declared.prepare_value
            self._delete_prefix = declared_delete_prefix(self._native)
        else:
            self.one_loop = False
            self.local = self.sync.local
            self.leases = self.sync.leases
            self.utf8_keys = self.sync.utf8_keys
            self.prepare_value = self.sync.prepare_value
        #: A sync tier's calls go to a thread (it may block on I/O).
        self.threaded = self._native is None and not self.local
        #: Read in a plain call (the memory tier): first in the chain, the chain's L1 lookup
        #: reads it. Not a tier whose reads are I/O (awaited, or in a thread): the read
        #: after the lookup reads it, and counts its hit or miss (ChainPaths.first_awaited).
        self.inline = self._native is None and not self.threaded
        #: What the chain does once the deletes this tier owes are paid (see
        #: :attr:`TierAccessor.when_paid`); paid here, before a call is awaited or sent to a
        #: thread (the bookkeeping accessor's own stays None: it does not pay them).
        self.when_paid: Callable[[Debt], Steps[None]] | None = None
        #: Pays them when the breaker lets calls through again, should no call come: a task
        #: of the loop the debt was recorded on (the bookkeeping accessor's timer, driven
        #: here), once the accessor pays (:meth:`pay_with`).
        self._payments: PaymentTask | None = None
        if self.threaded:
            warnings.warn(
                f"tier {self.name!r} has no asyncio interface: the asyncio chain runs its "
                "calls in threads (it works, at the cost of a thread hop per call); an async "
                "tier of this kind would not need them",
                BlockingTierWarning,
                stacklevel=4,
            )

    # -- state shared with the sync accessor (the fence and the bus set it there)

    @property
    def bypassed(self) -> bool:
        return self.sync.bypassed

    @bypassed.setter
    def bypassed(self, value: bool) -> None:
        self.sync.bypassed = value

    @property
    def bounded_for(self) -> float:
        return self.sync.bounded_for

    @bounded_for.setter
    def bounded_for(self, value: float) -> None:
        self.sync.bounded_for = value

    # -- helpers

    async def _sync(self, function: Callable[..., T], *args: Any) -> T:
        """A call of the sync accessor: inline for an in-process tier, else in a thread
        (after what the tier owes)."""
        if self.threaded:
            if self.sync.owed.due:
                # Not paid: the sync accessor refuses the call itself, as its method would
                # any failure of the tier's (a miss, a skipped fill, a lease call's error).
                with contextlib.suppress(Exception):
                    await self._settle()
            try:
                return await asyncio.to_thread(function, *args)
            finally:
                if self.sync.owed.due:  # a delete it failed, owed in that thread
                    self._arm()
        return function(*args)

    def _guarded(self, operation: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """A native tier's call through its breaker, after what the tier owes: a plain call
        that returns what to await (no coroutine of its own around every tier call)."""
        if self.sync.owed.due:
            return self._settled_then(operation)
        return self._through_breaker(operation)

    async def _settled_then(self, operation: Callable[[], Awaitable[T]]) -> T:
        await self._settle()
        return await self._through_breaker(operation)

    def _through_breaker(self, operation: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        breaker = self._breaker
        return operation() if breaker is None else breaker.acall(operation)

    # -- deletes owed (tiered_cache.owed)

    def pay_with(self, paid: Callable[[Debt], Steps[None]]) -> None:
        """:meth:`TierAccessor.pay_with`: paid here, the timer driven by a task of the loop."""
        self.when_paid = paid
        self._payments = PaymentTask(self.sync.timer, self._settle, self.name)

    def _arm(self) -> None:
        """A debt was recorded: the timer pays it at the end of the breaker's cool-down,
        should no call come first (on this loop; not if this accessor does not pay)."""
        if self._payments is not None:
            self._payments.arm()

    def owe(
        self, keys: Sequence[str] = (), prefixes: Sequence[str] = (), everything: bool = False
    ) -> None:
        """:meth:`TierAccessor.owe`, the timer armed on this loop (a shared tier's: an
        in-process tier's debt is paid by its next call, :meth:`TierAccessor.settle`)."""
        self.sync.owe(keys, prefixes, everything)
        if self.sync.owed.due and not self.local:
            self._arm()

    def when_owing(self, relook: Callable[[], None]) -> None:
        """:meth:`TierAccessor.when_owing` (an in-process tier's accessor is the sync one)."""
        self.sync.when_owing(relook)

    async def stop_paying(self) -> None:
        """The chain closes: the timer of owed deletes stops, once a payment in flight has
        ended (no task of it is left, but on a loop that ended)."""
        if self._payments is not None:
            await self._payments.stop()

    async def _settle(self) -> None:
        """:meth:`TierAccessor.settle` for coroutines (raises while they cannot be paid).
        Not paid, the timer pays them on this loop: a debt recorded on a loop that ended
        (``asyncio.run`` cancelled its timer's task) armed none here, and this call may be
        this loop's last to the tier (its memory answering every read from then on)."""
        paid = self.when_paid
        if paid is not None:
            try:
                await arun(self.sync.owed.settling(self, paid))
            except Exception:
                self._arm()  # the timer's own try: its run goes on, none starts
                raise

    async def delete_many_owed(self, keys: Sequence[str]) -> None:
        """A payment's delete (:class:`~tiered_cache.owed.Payee`): through the breaker only."""
        native = self._native
        if native is None:
            await asyncio.to_thread(self.sync.delete_many_owed, keys)
        else:
            await self._through_breaker(lambda: native.delete_many(keys))

    async def delete_prefix_owed(self, prefix: str) -> None:
        delete_prefix = self._delete_prefix
        if delete_prefix is None:
            await asyncio.to_thread(self.sync.delete_prefix_owed, prefix)
        else:
            await self._through_breaker(lambda: delete_prefix(prefix))

    async def clear_owed(self) -> None:
        native = self._native
        if native is None:
            await asyncio.to_thread(self.sync.clear_owed)
        else:
            await self._through_breaker(native.clear)

    @property
    def _leasing(self) -> AsyncLeasingTier:
        assert self._native is not None and self.leases, f"tier {self.name!r} offers no leases"
        return cast(AsyncLeasingTier, self._native)

    # -- bookkeeping (no I/O)

    def failed(self, exc: Exception) -> None:
        self.sync.failed(exc)

    def hit(self, n: int = 1) -> None:
        self.sync.hit(n)

    def miss(self) -> None:
        self.sync.miss()

    def report(self) -> dict[str, ReportValue]:
        return self.sync.report()

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        return [] if self._native is not None or self.threaded else self.sync.hot_keys(n)

    def get_at_function(self) -> Callable[[str, float], Entry | MissingType] | None:
        """The in-process tier's ``get_at`` for the chain's L1 lookup; None for a tier
        whose reads are I/O (they are awaited on the slow path instead)."""
        return self.sync.get_at_function() if self.inline else None

    def hit_reader(self, margin: float, hits: HitCount) -> Callable[[Any], Any] | None:
        """The in-process tier's plain-hit reader for the chain's L1 lookup; None for a tier
        whose reads are I/O."""
        if not self.inline:
            return None
        return self.sync.hit_reader(margin, hits)

    def can_lease(self, key: str) -> bool:
        if self._native is None:
            return self.sync.can_lease(key)
        return self.leases and self._leasing.can_lease(key)

    # -- reads

    async def get(self, key: str, count: bool = True) -> Entry | MissingType:
        """As :meth:`TierAccessor.get`: a failure is a miss."""
        native = self._native
        if native is None:
            return await self._sync(self.sync.get, key, count)
        try:
            entry = await self._guarded(lambda: native.get(key))
        except Exception as exc:
            self.failed(exc)
            return MISSING
        if count and entry is MISSING:
            self._metrics.miss(self.index)
        return entry

    async def get_many(
        self, keys: Sequence[str], now: float, stale: dict[str, Entry]
    ) -> dict[str, Entry]:
        """As :meth:`TierAccessor.get_many`."""
        native = self._native
        if native is None:
            return await self._sync(self.sync.get_many, keys, now, stale)
        try:
            entries = await self._guarded(lambda: native.get_many(keys))
        except Exception as exc:
            return self.sync.read_failed(exc, now, stale)
        return self.sync.sort_read(keys, entries, now, stale)

    # -- writes and deletes

    async def set_many(self, entries: Mapping[str, Entry]) -> bool:
        """As :meth:`TierAccessor.set_many`: False if the tier failed; raises CodecError."""
        native = self._native
        if native is None:
            return await self._sync(self.sync.set_many, entries)
        if not entries:
            return True
        try:
            if len(entries) == 1:
                ((key, entry),) = entries.items()
                await self._guarded(lambda: native.set(key, entry))
            else:
                await self._guarded(lambda: native.set_many(entries))
        except CodecError:
            raise
        except Exception as exc:
            self.failed(exc)
            return False
        self._metrics.fill(self.index, len(entries))
        return True

    async def delete_many(self, keys: Sequence[str]) -> str | None:
        native = self._native
        if native is None:
            return await self._sync(self.sync.delete_many, keys)
        if not keys:
            return None
        return await self._quietly(lambda: native.delete_many(keys), keys=keys)

    async def delete_prefix(self, prefix: str) -> str | None:
        delete_prefix = self._delete_prefix
        if delete_prefix is None:
            return await self._sync(self.sync.delete_prefix, prefix)
        return await self._quietly(lambda: delete_prefix(prefix), prefixes=(prefix,))

    async def clear(self) -> str | None:
        native = self._native
        if native is None:
            return await self._sync(self.sync.clear)
        return await self._quietly(native.clear, everything=True)

    async def _quietly(
        self,
        operation: Callable[[], Awaitable[None]],
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        everything: bool = False,
    ) -> str | None:
        """A delete; one that failed is owed (:meth:`owe`); one stopped (a cancellation, an
        interrupt) raises on, owed by its walk (:func:`~tiered_cache.deletes.deleting`)."""
        try:
            try:
                await self._bounded(self._guarded(operation))
            except PaymentInFlight:
                if not self._stopping():
                    raise  # a fast failure while a payment hangs on a stalled Redis: owed
                # A write a sweep stopped, finishing: its delete is made all the same (it only
                # removes; what is owed stays owed). Refused, the deletes finishing the writes
                # a sweep stopped together (each stopped delete owed: tiered_cache.deletes)
                # failed each other while the first paid, owed again after the loop's last
                # try: old copies of 39 of 40 keys left in Redis until the next loop.
                await self._bounded(self._through_breaker(operation))
        except Exception as exc:
            self.owe(keys, prefixes, everything)
            self.failed(exc)
            return f"tier {self.name!r} ({type(exc).__name__}: {exc})"
        return None

    # -- leases: these raise (but release_leases), the caller decides what it means

    async def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        if self._native is None:
            return await self._sync(self.sync.acquire_lease, key, ttl)
        leasing = self._leasing
        return await self._guarded(lambda: leasing.acquire_lease(key, ttl))

    async def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        if self._native is None:
            return await self._sync(self.sync.acquire_leases, keys, ttl)
        leasing = self._leasing
        return await self._guarded(lambda: leasing.acquire_leases(keys, ttl))

    async def steal_lease(self, key: str, ttl: float) -> str:
        if self._native is None:
            return await self._sync(self.sync.steal_lease, key, ttl)
        leasing = self._leasing
        return await self._guarded(lambda: leasing.steal_lease(key, ttl))

    async def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        if self._native is None:
            return await self._sync(self.sync.steal_leases, keys, ttl)
        leasing = self._leasing
        return await self._guarded(lambda: leasing.steal_leases(keys, ttl))

    async def fill_with_leases(self, leased: Mapping[str, tuple[Entry, str]]) -> set[str]:
        if self._native is None:
            return await self._sync(self.sync.fill_with_leases, leased)
        leasing = self._leasing
        if len(leased) == 1:
            ((key, (entry, token)),) = leased.items()
            kept = await self._guarded(lambda: leasing.fill_with_lease(key, entry, token))
            return {key} if kept else set()
        return await self._guarded(lambda: leasing.fill_with_leases(leased))

    async def release_leases(self, tokens: Mapping[str, str]) -> None:
        """Give leases back; never raises."""
        if self._native is None:
            await self._sync(self.sync.release_leases, tokens)
            return
        if not tokens or not self.leases:
            return
        leasing = self._leasing
        try:
            if len(tokens) == 1:
                ((key, token),) = tokens.items()
                await self._bounded(self._guarded(lambda: leasing.release_lease(key, token)))
            else:
                await self._bounded(self._guarded(lambda: leasing.release_leases(tokens)))
        except Exception as exc:
            self.failed(exc)

    # -- lifecycle

    async def aclose(self) -> None:
        """Close the tier, whatever the state of its breaker."""
        native = self._native
        if native is None:
            await self._sync(self.sync.close)
            return
        try:
            await native.aclose()
        except Exception as exc:
            self.failed(exc)
