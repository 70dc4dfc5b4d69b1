"""Deletes a shared tier owes: what an invalidation could not delete there, made when the tier
lets calls through again, before any other call to it.

A write (``set``, ``invalidate*``, ``clear``) made while this process's Redis circuit is open,
or whose delete failed or timed out, could neither take the key's lease nor delete Redis's
copy. Another process whose Redis works may then fill what it read from the source *before*
the write, under a lease still valid; the write's bus message drops only memory copies, and
Redis served the old value to every process until its ``ttl`` (two writer processes across a
Redis outage, ``tools/two_writers.py``). So the delete is kept here and made by the tier's
accessor once the tier takes calls again, *before* any other call of this chain to it (a read
of this process would otherwise find the old copy first): by a timer when the tier's breaker
lets a trial through, whether or not a call comes (:mod:`tiered_cache.owed_timer`: a process
whose memory answers every read makes none), or by the chain's next call if that comes first,
through the one payment :meth:`OwedDeletes.settling`; the chain then announces it again
(``ChainPaths.paid``): the other processes may have copied the old value up from Redis into
their memory since the first announcement. Deleting a key deletes its lease too, so a fill
still in flight under a lease taken before the write fails.

Bounded: past :data:`LIMIT` keys and prefixes the record becomes "everything", paid with the
tier's ``clear`` (more than was asked, never less), with a warning and the
``deletes_owed_overflows`` counter. A forked child inherits the record and pays it as well
(deleting twice is harmless); a payment that a thread of the parent was making at the fork is
still owed in the child (the record keeps a debt until it is paid).

A chain that closes owing makes one last try (:meth:`PaymentTimer.closing
<tiered_cache.owed_timer.PaymentTimer.closing>`: at once, the breaker's cool-down cut short,
bounded by the tier's timeouts) and gives up what it could not pay (:meth:`OwedDeletes.give_up`:
logged, counted in ``deletes_owed_dropped``), as it does a debt recorded after that try (a call
in flight as the chain closed: the close does not wait for it). An asyncio chain whose
``asyncio.run`` ends owing makes the same try then; what it could not pay stays owed, paid at
its next call to the tier on a later loop, or, that call refused (the cool-down not over), by
the timer on that loop.

What it cannot do: a process that dies owing deletes (or whose last try fails) leaves the old
copies to Redis's ``ttl``, as does an asyncio chain whose later loops never call the tier
(its memory answering every read); and until the payment, at the end of the owing process's
breaker's cool-down at the soonest (the end of a later one while the tier still fails), the
others may read the old copy there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import TierUnavailable
from .forking import restart_after_fork
from .metrics import CacheMetrics
from .steps import Steps

__all__ = ["LIMIT", "Debt", "OwedDeletes", "Payee", "PaymentInFlight"]

log = logging.getLogger(__name__)

#: Keys and prefixes kept per tier before the record becomes "everything" (the tier's clear).
LIMIT = 4096


class PaymentInFlight(TierUnavailable):
    """Another caller is paying what the tier owes: a call that must come after the payment
    is refused meanwhile. The delete of a write finishing after a sweep stopped it is made
    all the same (it only removes: ``AsyncTierAccessor._quietly``)."""


@dataclass(frozen=True)
class Debt:
    """What a payment deletes: ``keys`` and ``prefixes``, or ``everything`` of the cache."""

    keys: tuple[str, ...]
    prefixes: tuple[str, ...]
    everything: bool
    #: The record's count when the debt was taken: what was owed later stays owed.
    upto: int


class Payee(Protocol):
    """The tier calls a payment makes (an accessor's, past its own gate): plain calls, or
    coroutines for the asyncio chain."""

    def delete_many_owed(self, keys: Sequence[str]) -> Any: ...

    def delete_prefix_owed(self, prefix: str) -> Any: ...

    def clear_owed(self) -> Any: ...


class OwedDeletes:
    """One tier's record of owed deletes (see the module's notes): a shared tier's, or an
    in-process tier's whose delete raised (``TierAccessor._quietly``: paid by its next call,
    with no timer and nothing announced again).

    Args:
        name: the tier's name, for messages.
        metrics: the chain's counters (``deletes_owed``, ``deletes_owed_overflows``).
        limit: keys and prefixes kept before the record becomes "everything" (None:
            :data:`LIMIT`).
    """

    def __init__(self, name: str, metrics: CacheMetrics, limit: int | None = None) -> None:
        self._name = name
        self._metrics = metrics
        self._limit = LIMIT if limit is None else limit
        #: Something is owed, or being paid: the tier's next call pays first. Read without the
        #: lock on every call of the tier; written under it.
        self.due = False
        #: What is owed, each with the record's count when it was last owed.
        self._keys: dict[str, int] = {}
        self._prefixes: dict[str, int] = {}
        self._everything = 0  # the count when "everything" was last owed; 0: not owed
        self._count = 0
        #: The chain closed (:meth:`give_up`): nothing will pay what is owed from now on.
        self._given_up = False
        self._lock = threading.Lock()
        #: Held by the one payment in flight (the others' calls are refused meanwhile).
        self._paying = threading.Lock()
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """A thread of the parent may have held either lock at the fork (a payment in flight:
        the child would refuse every call of the tier for ever). New locks; what that payment
        was paying is still in the record, and the child pays it."""
        self._lock = threading.Lock()
        self._paying = threading.Lock()

    def __len__(self) -> int:
        """Keys and prefixes owed (``everything`` counts one)."""
        with self._lock:
            return len(self._keys) + len(self._prefixes) + bool(self._everything)

    def owe(
        self, keys: Iterable[str] = (), prefixes: Iterable[str] = (), everything: bool = False
    ) -> None:
        """Record deletes the tier did not confirm."""
        keys, prefixes = list(keys), list(prefixes)
        overflowed = False
        with self._lock:
            self._count += 1
            number = self._count
            if everything or self._everything:
                # Owed again at this count: a clear already being paid may have been sent
                # before these deletes failed, so it does not settle them.
                self._everything = number
                self._keys.clear()
                self._prefixes.clear()
            else:
                for key in keys:
                    self._keys[key] = number
                for prefix in prefixes:
                    self._prefixes[prefix] = number
                if len(self._keys) + len(self._prefixes) > self._limit:
                    overflowed = True
                    self._everything = number
                    self._keys.clear()
                    self._prefixes.clear()
            self.due = True
            given_up = self._given_up
        self._metrics.count("deletes_owed", len(keys) + len(prefixes) + everything)
        if given_up:
            # A call in flight as the chain closed (the close does not wait for it) failed
            # after the close's last try: nothing will pay it. Kept, it was neither counted
            # nor logged, its copy in Redis left unseen until its ttl.
            self.give_up()
        if overflowed:
            self._metrics.count("deletes_owed_overflows")
            log.warning(
                "tier %r: more than %d deletes owed since it failed; its whole cache will be "
                "cleared when it works again",
                self._name,
                self._limit,
            )

    def give_up(self) -> None:
        """The chain closes, after its last try: what is owed now, and what is owed from now
        on (:meth:`owe`), is forgotten, counted in ``deletes_owed_dropped`` and logged (Redis
        keeps those copies until their ``ttl``)."""
        with self._lock:
            self._given_up = True
            everything = bool(self._everything)
            dropped = len(self._keys) + len(self._prefixes) + everything
            self._keys.clear()
            self._prefixes.clear()
            self._everything = 0
            self.due = False
        if dropped:
            self._metrics.count("deletes_owed_dropped", dropped)
            log.warning(
                "tier %r: closed owing deletes it could not make (%s): its copies of those "
                "keys stay there until their ttl",
                self._name,
                "everything" if everything else dropped,
            )

    def settling(self, tier: Payee, then: Callable[[Debt], Steps[None]]) -> Steps[None]:
        """Pay what is owed through ``tier``'s calls, then ``then(debt)`` (the chain's
        announcement), as steps for either face. Raises :class:`TierUnavailable` while another
        payment is in flight, or what a call raised (the debt stays owed)."""
        debt = yield from self._payment(tier)
        if debt is not None:
            yield from then(debt)
            self._metrics.count("deletes_owed_payments")

    def _payment(self, tier: Payee) -> Steps[Debt | None]:
        if not self._paying.acquire(blocking=False):
            raise PaymentInFlight(
                f"tier {self._name!r}: the deletes it owes since it failed are being made"
            )
        try:
            debt = self._take()
            if debt is None:
                return None
            if debt.everything:
                yield tier.clear_owed, ()
            else:
                for prefix in debt.prefixes:
                    yield tier.delete_prefix_owed, (prefix,)
                if debt.keys:
                    yield tier.delete_many_owed, (debt.keys,)
            self._settle(debt)
        finally:
            self._paying.release()
        log.info(
            "tier %r: made the deletes owed since it failed (%s)",
            self._name,
            "everything" if debt.everything else f"{len(debt.keys) + len(debt.prefixes)}",
        )
        return debt

    def _take(self) -> Debt | None:
        with self._lock:
            if not (self._keys or self._prefixes or self._everything):
                self.due = False
                return None
            return Debt(
                tuple(self._keys), tuple(self._prefixes), bool(self._everything), self._count
            )

    def _settle(self, debt: Debt) -> None:
        """Forget what ``debt`` paid, but what was owed again since it was taken."""
        upto = debt.upto
        with self._lock:
            if self._everything and self._everything <= upto:
                self._everything = 0
            for owed in (self._keys, self._prefixes):
                for name in [name for name, number in owed.items() if number <= upto]:
                    del owed[name]
            self.due = bool(self._keys or self._prefixes or self._everything)
