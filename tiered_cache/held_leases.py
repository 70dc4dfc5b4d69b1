"""The leases one load holds, and their give-back: one owner of that rule for both loaders.

A load holds a key's lease from the step Redis's answer comes back in
(:class:`~tiered_cache.lease_wait.LeaseWait` stores the answer there, before anything else
runs) until a fill used it, a give-back returned it, or a worker or task took the load over.
Whatever it still holds when it stops, however it stops -- the source failed, the caller was
interrupted (Ctrl-C, a signal-raised time limit) or cancelled, anywhere from that step on --
goes back: left, it held until ``lease_ttl`` and every process reading the key waited
``lease_wait`` for a holder that was gone. A token given back twice (or after a fill used it)
holds nothing and releases nothing, so the rule errs on the side of giving back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .fence import ChainTier
from .steps import Steps

#: What a lease call answered for a key: ``(token if taken, what the tier holds)``.
Look = tuple["str | None", Any]


class HeldLeases:
    """The lease calls' answers one load got and the leases it has not handed on yet."""

    __slots__ = ("looks",)

    def __init__(self) -> None:
        #: ``key: (token or None, entry)``: written by the lease wait in the step the answer
        #: comes back in (a store, no call: nothing can interrupt between the two).
        self.looks: dict[str, Look] = {}

    def tokens(self) -> dict[str, str]:
        """The leases held: ``key: token``."""
        # A copy first (one call, atomic under the GIL): close() reads a load's from another
        # thread while that load goes on.
        return {key: token for key, (token, _) in list(self.looks.items()) if token is not None}

    def took(self, tokens: Mapping[str, str]) -> None:
        """Hold the leases a write stole (``key: token``; no entry comes with a steal)."""
        self.looks.update({key: (token, None) for key, token in tokens.items()})

    def hand_on(self, keys: Iterable[str]) -> None:
        """Stop holding the leases of ``keys``: a fill used them, a give-back returned them,
        or another owner (a worker, a task) took them."""
        looks = self.looks
        for key in keys:
            looks.pop(key, None)


def give_back_all(helds: Iterable[HeldLeases], tier: ChainTier) -> Steps[None]:
    """Give back, in one call to the leasing ``tier``'s accessor (whose ``release_leases``
    never raises), every lease the loads or writes ``helds`` still hold (one load's as it
    stops, or all those in flight as their loader closes); they are let go of once that
    call returned, so an interrupt during it leaves them to the next give-back."""
    helds = list(helds)
    tokens: dict[str, str] = {}
    for held in helds:
        tokens.update(held.tokens())
    if tokens:
        yield tier.release_leases, (tokens,)
        for held in helds:
            held.hand_on(tokens)


class Holdings:
    """The :class:`HeldLeases` of every load and write in flight on one chain, kept by its
    loader (either face's) for its close: the one home of the rule "close gives back every
    lease held by a load or a write in flight". The tiers close next, and those calls' own
    fills and give-backs could not reach them any more: their leases held until
    ``lease_ttl``, and every process reading the keys waited ``lease_wait``.

    Args:
        tier: the chain's leasing tier, or None (nothing is ever given back).
    """

    __slots__ = ("_helds", "tier")

    def __init__(self, tier: ChainTier | None) -> None:
        self.tier = tier
        self._helds: set[HeldLeases] = set()

    def hold(self) -> HeldLeases:
        """A new :class:`HeldLeases` for a load or a write, known to :meth:`give_back_all`
        until :meth:`let_go`."""
        held = HeldLeases()
        self._helds.add(held)
        return held

    def let_go(self, held: HeldLeases | None) -> None:
        """Forget ``held`` (None: the call held nothing): its load or write ended, whatever
        it held is used or given back, or another owner took it on."""
        if held is not None:
            self._helds.discard(held)

    def give_back(self, held: HeldLeases) -> Steps[None]:
        """Give back what the one load or write ``held`` still holds."""
        if self.tier is not None:
            yield from give_back_all((held,), self.tier)

    def give_back_all(self) -> Steps[None]:
        """Give back every lease held by the loads and writes in flight (their loader is
        closing)."""
        if self.tier is not None:
            # A copy first (one call, atomic under the GIL): loads on other threads go on.
            yield from give_back_all(list(self._helds), self.tier)

    def forget_all(self) -> None:
        """In a forked child: the parent's loads and writes hold them, not the child's."""
        self._helds = set()
