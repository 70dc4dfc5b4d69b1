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

    def give_back(self, tier: ChainTier) -> Steps[None]:
        """Give back every lease still held, to the leasing ``tier``'s accessor (whose
        ``release_leases`` never raises); they are let go of once that call returned, so an
        interrupt during it leaves them to the next give-back."""
        tokens = self.tokens()
        if tokens:
            yield tier.release_leases, (tokens,)
            self.hand_on(tokens)


def give_back_all(helds: Iterable[HeldLeases], tier: ChainTier) -> Steps[None]:
    """Give back in one call every lease the loads ``helds`` hold (a loader's loads in
    flight as it closes: the tier closes next, and their own give-back or fill could not
    reach it any more)."""
    helds = list(helds)
    tokens: dict[str, str] = {}
    for held in helds:
        tokens.update(held.tokens())
    if tokens:
        yield tier.release_leases, (tokens,)
        for held in helds:
            held.hand_on(tokens)
