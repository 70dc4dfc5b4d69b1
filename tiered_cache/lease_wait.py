"""Taking a key's lease, or waiting for its holder's value: written once as steps
(:mod:`tiered_cache.steps`) for the threaded and the asyncio loaders.

Each look is one round trip to the leasing tier: take the lease if it is free, and read the
key. A holder's fresh value is copied into the faster tiers through the fence; a holder that
takes longer than ``lease_wait`` (or died) is given up on, and the caller loads without one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .fence import ChainTier, Fence
from .held_leases import HeldLeases, give_back_all
from .metrics import CacheMetrics
from .protection import Protection
from .steps import Steps
from .tier import MISSING, Entry


@dataclass(frozen=True)
class LeaseWait:
    """The parts a lease wait uses. ``tier`` is the leasing tier's accessor (sync or async:
    the steps only name its methods); a holder's value found there is copied up into what
    the fence says (``Fence.copy_targets``); ``sleep`` waits between looks (``time.sleep`` or
    ``asyncio.sleep``)."""

    tier: ChainTier
    fence: Fence
    metrics: CacheMetrics
    protection: Protection
    clock: Callable[[], float]
    sleep: Callable[[float], Any]

    def one(self, key: str, mark: int, held: HeldLeases) -> Steps[tuple[str | None, Entry | None]]:
        """``(token, None)`` when this process should load (the lease is in ``held`` from
        the step its answer came back in: see :mod:`tiered_cache.held_leases`); ``(None,
        entry)`` when the lease holder filled the key meanwhile; ``(None, None)`` to load
        without a lease (the shared tier is down, or the holder took longer than
        ``lease_wait``)."""
        tier = self.tier
        if not self.fence.needs_lease(tier, key):
            return None, None
        protection = self.protection
        deadline: float | None = None
        looks = held.looks
        try:
            while True:
                # Stored as the answer comes back, before any line that an interrupt could
                # land on: from here, the load's give-back covers the lease.
                looks[key] = look = yield tier.acquire_lease, (key, protection.lease_ttl)
                token, current = look
                if current is not MISSING and self.clock() < current.soft_expiry:
                    # The previous holder filled it since our last look: no load needed.
                    yield from give_back_all((held,), tier)
                    tier.hit()
                    above = self.fence.copy_targets(tier.index)
                    yield from self.fence.fill_steps(mark, {key: current}, above)
                    return None, current
                if token is not None:
                    if deadline is not None:  # a holder that died left its lease to expire
                        self.metrics.count("lease_takeovers")
                    return token, None
                now = self.clock()
                if deadline is None:
                    self.metrics.count("lease_waits")
                    deadline = now + protection.lease_wait
                elif now >= deadline:
                    self.metrics.count("lease_wait_expired")
                    return None, None
                yield self.sleep, (protection.lease_poll,)
        except Exception as exc:
            tier.failed(exc)
            return None, None

    def batch(
        self, keys: Sequence[str], mark: int, held: HeldLeases
    ) -> Steps[tuple[dict[str, str | None], dict[str, Entry], list[str]]]:
        """One look at the leasing tier for ``keys``: ``(to load, with the token or None for
        no lease; filled meanwhile by a holder; held by another process)``. The leases taken
        are in ``held`` from the step the answer came back in (as :meth:`one`)."""
        tier = self.tier
        needs_lease = self.fence.needs_lease
        tokens: dict[str, str | None] = {key: None for key in keys if not needs_lease(tier, key)}
        if tokens:
            keys = [key for key in keys if key not in tokens]
            if not keys:
                return tokens, {}, []
        try:
            # Stored as the answer comes back (see one()): a method of a dict, no frame.
            held.looks.update(
                looks := (yield tier.acquire_leases, (keys, self.protection.lease_ttl))
            )
        except Exception as exc:
            tier.failed(exc)
            tokens.update(dict.fromkeys(keys))  # load them all without leases
            return tokens, {}, []
        now = self.clock()
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
            yield tier.release_leases, (unneeded,)
            held.hand_on(unneeded)
        if filled:
            tier.hit(len(filled))
            above = self.fence.copy_targets(tier.index)
            yield from self.fence.fill_steps(mark, filled, above)
        return tokens, filled, waiting
