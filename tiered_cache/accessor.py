"""The chain's hold on one tier: its capabilities, its circuit breaker and its counters.

A :class:`TierAccessor` resolves what its tier can do once, when the chain is built (a
:class:`~tiered_cache.tier.TierBase` subclass declares it; any other tier gets the defaults),
consults the tier's :class:`~tiered_cache.breaker.CircuitBreaker` around every call, and counts
hits, misses, fills, errors and skips. Calls that read or write entries never raise (a failing
tier is a miss, a skipped fill, a warning and a counter), but for
:class:`~tiered_cache.CodecError`, which is the caller's value, not the tier's fault. The lease
calls raise, because what a failure means depends on the step (the loader decides).

A tier's deletes that failed are owed (:mod:`tiered_cache.owed`): every later call of the
accessor to the tier pays them first, and is refused while they cannot be made. A shared tier's
are also paid by a timer when the tier lets calls through again, should no call come
(:mod:`tiered_cache.owed_timer`), and announced again once paid. An in-process tier's deletes
are made at once, past its breaker, whatever its state, but counted by it
(:meth:`TierAccessor._quietly`); one that failed is paid by the tier's next call, the chain's
L1 lookup's too (:meth:`TierAccessor.when_owing`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar, cast

from .breaker import CircuitBreaker, GuardedTier
from .deletes import deleting
from .errors import CodecError, TierCallFailed, TierUnavailable
from .hit import HitCount
from .leases import LeasingTier
from .logs import fields, tier_logger
from .metrics import CacheMetrics
from .owed import Debt, OwedDeletes
from .owed_timer import PaymentThread, PaymentTimer
from .reporting import ReportValue, report_of
from .steps import Steps, run
from .tier import (
    MISSING,
    UNDECLARED,
    Entry,
    MissingType,
    PartialRead,
    Tier,
    TierBase,
    declared_capabilities,
    declared_delete_prefix,
)

#: How often (seconds of the chain's clock) a failing tier is logged again.
WARNING_INTERVAL = 10.0

T = TypeVar("T")


def _direct(operation: Callable[..., T], *arguments: Any) -> T:
    return operation(*arguments)


def _unchanged() -> None:
    """:attr:`TierAccessor.relook` until the chain gives its own."""


def _nothing_to_tell(debt: Debt) -> Steps[None]:
    """What follows the payment of an in-process tier's deletes: nothing (the invalidation
    they were part of was announced when it was made; no other process copied from this
    process's memory)."""
    return
    yield


def _replace(tier: Tier, key: str, entry: Entry) -> None:
    """``TierBase.replace`` for a tier that does not subclass it."""
    TierBase.replace(cast(TierBase, tier), key, entry)


class TierAccessor:
    """One tier of a chain, as the chain uses it.

    Args:
        index: the tier's place in the chain (0 is the fastest).
        tier: the tier; a :class:`~tiered_cache.breaker.GuardedTier` is taken apart into
            the tier and the breaker this accessor consults.
        metrics: the chain's counters.
        clock: the chain's clock (for rate-limiting warnings).
    """

    def __init__(
        self, index: int, tier: Tier, metrics: CacheMetrics, clock: Callable[[], float]
    ) -> None:
        breaker: CircuitBreaker | None = None
        if isinstance(tier, GuardedTier):  # an async chain's bookkeeping holds its async tiers
            breaker, tier = tier.breaker, cast(Tier, tier.tier)
        self.index = index
        self.tier = tier
        self.name = tier.name
        self.breaker = breaker
        #: ``guard(function, *arguments)``: the call through the breaker (no closure needed).
        self._guard: Callable[..., object] = breaker.call if breaker is not None else _direct
        self._metrics = metrics
        self._clock = clock
        self._last_warning: float | None = None
        declared = declared_capabilities(tier)
        #: In-process: kept coherent by the bus, bypassed while it is down.
        self.local = bool(declared.local)
        #: How a delete of the tier is made: a shared tier's through the breaker; an
        #: in-process tier's past it, whatever its state, counted by it (_quietly).
        self._delete: Callable[..., object] = (
            self._guard if not self.local or breaker is None else breaker.counted
        )
        #: Called when this in-process tier begins to owe deletes, and once it has paid them:
        #: the chain's L1 lookup reads it as it may then (:meth:`when_owing`).
        self.relook: Callable[[], None] = _unchanged
        #: Read in a plain call: first in the chain, the chain's L1 lookup reads it (and
        #: counts its hit or miss), whatever it is.
        self.inline = True
        #: The deletes this tier failed to make (a shared tier's: an in-process tier's copies
        #: are the fence's), paid before its next call (:meth:`settle`).
        self.owed = OwedDeletes(self.name, metrics)
        #: When they are paid without waiting for a call: at the end of the breaker's
        #: cool-down (the asyncio chain's accessor drives it with a task of its own).
        self.timer = PaymentTimer(self.owed, breaker, clock)
        #: What the chain does once they are paid (announce them again:
        #: ``ChainPaths.paid``), given by :meth:`pay_with`; None: the accessor does not pay
        #: them itself (the asyncio chain's bookkeeping accessor: its own accessor pays,
        #: before the thread hop).
        self.when_paid: Callable[[Debt], Steps[None]] | None = None
        #: The timer's driver, a thread per run, once the accessor pays (:meth:`pay_with`).
        self._payments: PaymentThread | None = None
        #: Offers leases (:class:`~tiered_cache.leases.LeasingTier`).
        self.leases = bool(declared.leases)
        #: Stores keys as UTF-8: the chain refuses keys UTF-8 cannot encode.
        self.utf8_keys = bool(declared.utf8_keys)
        #: Not used right now (an in-process tier while the bus is down and no staleness is
        #: allowed).
        self.bypassed = False
        #: When above 0, what this tier is given is kept at most this many seconds from now
        #: (an in-process tier while the bus is down: ``max_stale_when_disconnected``).
        self.bounded_for = 0.0
        # The defaults' verbs that call the tier, bound to a tier that declares none.
        get = tier.get
        undeclared = declared is UNDECLARED
        self._peek: Callable[[str], Entry | MissingType] = get if undeclared else declared.peek
        self._get_at: Callable[[str, float], Entry | MissingType] = (
            (lambda key, now: get(key)) if undeclared else declared.get_at
        )
        self._replace: Callable[[str, Entry], None] = (
            (lambda key, entry: _replace(tier, key, entry)) if undeclared else declared.replace
        )
        self._delete_prefix = declared_delete_prefix(tier)
        self._hit_reader = declared.hit_reader
        self._hot_keys = declared.hot_keys
        #: CodecError for a value the tier could not store, else the form its fill of a
        #: write stores (``TierBase.prepare_value``).
        self.prepare_value: Callable[[Any], Any] = declared.prepare_value
        self._leasing = cast(LeasingTier, tier) if self.leases else None
        # The metrics' own count, bound to this tier (once per miss: no frame of ours around it).
        self.miss: Callable[[], None] = partial(metrics.miss, index)
        """Count a miss found by the chain's own L1 lookup."""

    # -- reads

    def get_at_function(self) -> Callable[[str, float], Entry | MissingType]:
        """``get_at`` for the chain's L1 lookup: the tier's own bound method when there is no
        breaker (the hit path pays for nothing else). Raises like the tier does."""
        breaker = self.breaker
        get_at = self._get_at
        if not self.local or self.owed.due:
            # A shared tier first in the chain, or an in-process one owing deletes it failed
            # (until they are paid: when_owing): every read pays what is owed first.
            return lambda key, now: self._call(get_at, key, now)
        if breaker is None:
            return get_at
        return lambda key, now: breaker.call(lambda: get_at(key, now))

    def hit_reader(self, margin: float, hits: HitCount) -> Callable[[Any], Any] | None:
        """The tier's plain-hit reader for the chain's L1 lookup (``TierBase.hit_reader``),
        or None: the tier offers none, or has a breaker, which every read must go through, or
        owes deletes, which every read pays first (:meth:`when_owing`)."""
        if self.breaker is not None or self.owed.due:
            return None
        return self._hit_reader(self._clock, margin, hits)

    def get(self, key: str, count: bool = True) -> Entry | MissingType:
        """The tier's entry for ``key``; a failure is a miss. ``count=False``: a second look at
        a key the caller just counted, which neither the chain's metrics nor the tier's
        eviction policy (through ``peek``) see as a read."""
        read = self.tier.get if count else self._peek
        breaker = self.breaker
        try:  # the breaker's call with arguments: no closure (every L2 hit)
            if self.owed.due:
                self.settle()
            entry = read(key) if breaker is None else breaker.call(read, key)
        except Exception as exc:
            self.failed(exc)
            return MISSING
        if count and entry is MISSING:
            self._metrics.miss(self.index)
        return entry

    def get_many(
        self, keys: Sequence[str], now: float, stale: dict[str, Entry]
    ) -> dict[str, Entry]:
        """The fresh entries among ``keys``; stale ones still servable go into ``stale``."""
        try:
            entries = self._call(self.tier.get_many, keys)
        except Exception as exc:
            return self.read_failed(exc, now, stale)
        return self.sort_read(keys, entries, now, stale)

    def read_failed(self, exc: Exception, now: float, stale: dict[str, Entry]) -> dict[str, Entry]:
        """A ``get_many`` that raised ``exc``: counted and logged (:meth:`failed`); what the
        tier read before it failed (a :class:`~tiered_cache.tier.PartialRead`'s keys) is
        sorted as a read, the other keys go on to the next tier."""
        self.failed(exc)
        if isinstance(exc, PartialRead):
            return self.sort_read(exc.read, exc.found, now, stale)
        return {}

    def sort_read(
        self, keys: Sequence[str], entries: Mapping[str, Entry], now: float, stale: dict[str, Entry]
    ) -> dict[str, Entry]:
        """Of what the tier returned for ``keys``: the fresh entries (counted as hits, the
        other keys as misses); stale ones still servable go into ``stale``."""
        fresh: dict[str, Entry] = {}
        for key, entry in entries.items():
            if now < entry.soft_expiry:
                fresh[key] = entry
            elif now < entry.hard_expiry:
                stale.setdefault(key, entry)
        self._metrics.hit(self.index, len(fresh))
        self._metrics.miss(self.index, len(keys) - len(fresh))
        return fresh

    def hit(self, n: int = 1) -> None:
        """Count ``n`` hits found by a lookup other than :meth:`get_many`."""
        self._metrics.hit(self.index, n)

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """The tier's hottest keys (none if it does not track them, fails, or its circuit is
        not closed: reporting is not traffic, and must not spend the breaker's probe)."""
        if self.owed.due or (self.breaker is not None and self.breaker.state != "closed"):
            return []
        try:
            return cast("list[tuple[str, float]]", self._guard(lambda: self._hot_keys(n)))
        except Exception as exc:
            self.failed(exc)
            return []

    # -- writes and deletes

    def set_many(self, entries: Mapping[str, Entry]) -> bool:
        """Store ``entries``; False if the tier failed (counted). Raises CodecError."""
        if not entries:
            return True
        if len(entries) == 1:
            ((key, entry),) = entries.items()
            return self.set_one(key, entry)
        entries = self.capped(entries)
        try:
            self._call(self.tier.set_many, entries)
        except CodecError:
            raise
        except Exception as exc:
            self.failed(exc)
            return False
        self._metrics.fill(self.index, len(entries))
        return True

    def set_one(self, key: str, entry: Entry, replace: bool = False) -> bool:
        """:meth:`set_many` of one entry (the fill after every miss): no dict, no closure, and
        no guard when the tier has no breaker. ``replace``: the key's old copy is dropped in
        the same step (``TierBase.replace``: a write into a chain of this tier alone,
        ``Fence.write_alone``)."""
        if self.bounded_for > 0:
            entry = self._capped(entry)
        write = self._replace if replace else self.tier.set
        try:
            if self.owed.due:
                self.settle()
            if self.breaker is None:
                write(key, entry)
            else:
                self.breaker.call(write, key, entry)
        except CodecError:
            raise
        except Exception as exc:
            self.failed(exc)
            return False
        self._metrics.fill(self.index, 1)
        return True

    def capped(self, entries: Mapping[str, Entry]) -> Mapping[str, Entry]:
        """``entries`` as this tier may keep them (see :attr:`bounded_for`)."""
        if self.bounded_for > 0:
            return {key: self._capped(entry) for key, entry in entries.items()}
        return entries

    def _capped(self, entry: Entry) -> Entry:
        """``entry`` kept no longer than :attr:`bounded_for` from now."""
        until = self._clock() + self.bounded_for
        if entry.hard_expiry <= until:
            return entry
        return entry.replace(soft_expiry=min(entry.soft_expiry, until), hard_expiry=until)

    def delete_many(self, keys: Sequence[str]) -> str | None:
        """Remove ``keys``; a failure is counted, logged and described (else None)."""
        if not keys:
            return None
        # Every set drops the in-process copy: no closure (the tier's bound method and its
        # argument).
        return self._quietly(self.tier.delete_many, keys, keys=keys)

    def delete_prefix(self, prefix: str) -> str | None:
        """Remove the keys starting with ``prefix`` (a tier that cannot: everything)."""
        return self._quietly(self._delete_prefix, prefix, prefixes=(prefix,))

    def clear(self) -> str | None:
        """Remove everything this tier holds for the cache."""
        return self._quietly(self.tier.clear, everything=True)

    def _quietly(
        self,
        operation: Callable[..., None],
        *arguments: Any,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        everything: bool = False,
    ) -> str | None:
        """A delete, ``operation(*arguments)``: every delete of the tier, an invalidation's,
        a write's, a fill's undo, a debt's made at once (:meth:`owe`). A shared tier's goes
        through its breaker, after what it owes; one that failed is owed (:meth:`owe`). An
        in-process tier's is made at once, past its breaker, whatever its state: it does no
        I/O, so the breaker saves no caller a wait there, and refused (open) it was neither
        made nor owed, the invalidated copy served once the circuit closed. Its outcome is
        counted by the breaker all the same (``CircuitBreaker.counted``), and one that failed
        (a third party's in-process tier) is owed too (:meth:`_owe_here`): counted and logged
        only, it left the invalidated copy in the tier, served by every later read, and
        however many failed the circuit stayed closed (tests/test_local_delete_failures.py).
        One stopped (a Ctrl-C, a signal-raised time limit: a ``BaseException``) raises on,
        owed by the walk it was part of (:func:`~tiered_cache.deletes.deleting`), with the
        tiers after it."""
        try:
            if self.local:
                self._delete(operation, *arguments)
            else:
                self._call(operation, *arguments)
        except Exception as exc:
            if self.local:
                self._owe_here(keys, prefixes, everything)
            else:
                self.owe(keys, prefixes, everything)
            return self._failure(exc)
        return None

    def _owe_here(self, keys: Sequence[str], prefixes: Sequence[str], everything: bool) -> None:
        """An in-process tier failed deletes: owed, paid by its next call (:meth:`settle`),
        the L1 lookup's included (:meth:`when_owing`), so no read finds a copy they were for.
        No timer: nothing is served from the tier until they are paid, and nothing is to be
        told once they are. The lookup is told after every such debt, not only the first: a
        payment ending meanwhile (on another thread) may have restored its one-call reads
        after this debt's check of "already owing"."""
        self.owed.owe(keys, prefixes, everything)
        self.relook()

    def when_owing(self, relook: Callable[[], None]) -> None:
        """``relook()`` when this in-process tier begins to owe deletes and once it has paid
        them: the chain's L1 lookup of its tier 0 then asks :meth:`get_at_function` and
        :meth:`hit_reader` again, which read it directly only while it owes nothing (a one-call
        hit would serve the copy a failed delete left)."""
        self.relook = relook

    # -- deletes owed (tiered_cache.owed)

    def pay_with(self, paid: Callable[[Debt], Steps[None]]) -> None:
        """The accessor pays what its tier owes, and ``paid`` follows each payment (the
        chain's, once, as it is built): its timer is driven from now on."""
        self.when_paid = paid
        self._payments = PaymentThread(self.timer, self.settle, self.name)

    def owe(
        self, keys: Sequence[str] = (), prefixes: Sequence[str] = (), everything: bool = False
    ) -> None:
        """Deletes the tier did not confirm (they failed, or a walk of deletes was stopped
        before them: :func:`~tiered_cache.deletes.deleting`). A shared tier makes them before
        its next call, or when its breaker lets calls through again (the timer), whichever
        comes first. An in-process tier makes them at once, here: they do no I/O, so nothing
        waits. Not made, a fill the fence refused and whose undo was stopped in a shared
        tier's delete (Ctrl-C, a cancellation) left its refused value in memory, served by
        the next reads until memory's ``ttl``."""
        if self.local:
            # The walk of a delete, through this one tier: the same calls as every other
            # delete of it (past its breaker, counted; one that fails owed: see _quietly).
            run(deleting((self,), keys, prefixes, everything))
            return
        self.owed.owe(keys, prefixes, everything)
        if self._payments is not None:  # else the asyncio chain's accessor arms its own
            self._payments.arm()

    def settle(self) -> None:
        """Pay the deletes owed, before any other call to the tier; raises
        :class:`~tiered_cache.errors.TierUnavailable` (or the breaker's error) while they
        cannot be made, so that call is not made either."""
        if self.local:
            # Its own deletes, in plain calls (both faces: an in-process tier is called inline).
            run(self.owed.settling(self, _nothing_to_tell))
            if not self.owed.due:
                self.relook()
            return
        paid = self.when_paid
        if paid is None:
            # The asyncio chain's bookkeeping accessor (its own accessor pays, before the
            # thread hop): what is still owed refuses the call.
            raise TierUnavailable(f"tier {self.name!r}: deletes owed since it failed not made yet")
        run(self.owed.settling(self, paid))

    def _call(self, operation: Callable[..., T], *arguments: Any) -> T:
        """``operation(*arguments)`` through the breaker, after what is owed."""
        if self.owed.due:
            self.settle()
        return cast(T, self._guard(operation, *arguments))

    def delete_many_owed(self, keys: Sequence[str]) -> None:
        """A payment's delete (:class:`~tiered_cache.owed.Payee`): through the breaker only
        (past it, counted, for an in-process tier: see :meth:`_quietly`)."""
        self._delete(self.tier.delete_many, keys)

    def delete_prefix_owed(self, prefix: str) -> None:
        self._delete(self._delete_prefix, prefix)

    def clear_owed(self) -> None:
        self._delete(self.tier.clear)

    def _failure(self, exc: Exception) -> str:
        """Count and log ``exc`` (:meth:`failed`); describe it for the caller."""
        self.failed(exc)
        return f"tier {self.name!r} ({type(exc).__name__}: {exc})"

    # -- leases (only when ``self.leases``); these raise, the caller decides what it means

    @property
    def leasing(self) -> LeasingTier:
        """The tier's lease operations."""
        assert self._leasing is not None, f"tier {self.name!r} offers no leases"
        return self._leasing

    def can_lease(self, key: str) -> bool:
        """False for a key this tier cannot lease (no round trip: nothing to guard)."""
        return self._leasing is not None and self._leasing.can_lease(key)

    def lease(self, operation: Callable[[LeasingTier], T]) -> T:
        """Run a lease operation through the breaker; it raises (TierUnavailable) on failure."""
        leasing = self.leasing
        return self._call(operation, leasing)

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        """Take ``key``'s lease if free and read the key (through the breaker; raises)."""
        return self.lease(lambda tier: tier.acquire_lease(key, ttl))

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        """:meth:`acquire_lease` for a batch, in one round trip (through the breaker; raises)."""
        return self.lease(lambda tier: tier.acquire_leases(keys, ttl))

    def steal_lease(self, key: str, ttl: float) -> str:
        """Take ``key``'s lease whoever holds it, for a write (through the breaker; raises)."""
        return self.lease(lambda tier: tier.steal_lease(key, ttl))

    def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        """:meth:`steal_lease` for a batch, in one round trip (through the breaker; raises)."""
        return self.lease(lambda tier: tier.steal_leases(keys, ttl))

    def fill_with_leases(self, leased: Mapping[str, tuple[Entry, str]]) -> set[str]:
        """Fill under the leases; the keys written. Raises CodecError and PartialFill."""
        if len(leased) == 1:
            ((key, (entry, token)),) = leased.items()
            kept = self.lease(lambda tier: tier.fill_with_lease(key, entry, token))
            return {key} if kept else set()
        return self.lease(lambda tier: tier.fill_with_leases(leased))

    def release_leases(self, tokens: Mapping[str, str]) -> None:
        """Give leases back (a load failed, or the fence refused its fill); never raises."""
        if not tokens or self._leasing is None:
            return
        try:
            if len(tokens) == 1:
                ((key, token),) = tokens.items()
                self.lease(lambda tier: tier.release_lease(key, token))
            else:
                self.lease(lambda tier: tier.release_leases(tokens))
        except Exception as exc:
            self.failed(exc)

    def report(self) -> dict[str, ReportValue]:
        """What the tier reports itself (:mod:`tiered_cache.reporting`), and the state of its
        breaker (``"breaker"``: closed, open, half-open; ``"breaker_opened"``) when it has one."""
        report = report_of(self.tier)
        if self.breaker is not None:
            report["breaker"] = self.breaker.state
            report["breaker_opened"] = self.breaker.opened_count
        return report

    # -- failures and lifecycle

    def failed(self, exc: Exception) -> None:
        """Count a failure of this tier (a skip if the call was not made: its breaker is open,
        or the tier said it is unavailable; an error if it was made and failed, behind a
        breaker too) and log it, at most every ``WARNING_INTERVAL`` seconds."""
        if isinstance(exc, TierUnavailable) and not isinstance(exc, TierCallFailed):
            self._metrics.skip(self.index)
        else:
            self._metrics.error(self.index)
        now = self._clock()
        last = self._last_warning
        if last is None or now - last >= WARNING_INTERVAL:
            self._last_warning = now
            tier_logger(self.name).warning(
                "tier %r failed (%s: %s); reading through to the next tier",
                self.name,
                type(exc).__name__,
                exc,
                extra=fields("tier_failed", tier=self.name),
            )

    def stop_paying(self) -> None:
        """The chain closes: the timer of owed deletes stops, once a payment in flight has
        ended (no thread of it is left)."""
        if self._payments is not None:
            self._payments.stop()

    def close(self) -> None:
        """Close the tier, whatever the state of its breaker."""
        try:
            self.tier.close()
        except Exception:
            tier_logger(self.name).exception("closing tier %r failed", self.name)
