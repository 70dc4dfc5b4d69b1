"""The one walk of a delete through a chain's tiers, and what a stop leaves owed.

Every delete the chain makes in its shared tiers -- an invalidation of keys, of a prefix, a
clear, a write's own invalidation, the fence's undoing of a fill it refused -- goes through
:func:`deleting`, one tier after another. A tier whose call failed owes the delete (its
accessor records it: ``TierAccessor._quietly``). A walk stopped part-way -- Ctrl-C's
``KeyboardInterrupt``, a signal handler's ``sys.exit()``, a task queue's time limit, an
asyncio cancellation, the steps closed between two calls -- leaves the tier it was stopped
in *and every tier it had not reached yet* owing the delete (:mod:`tiered_cache.owed`):
paid before their next call, or by their payment timer; an in-process tier (memory) among
them makes it at once (``TierAccessor.owe``: no I/O, nothing to wait for). The fence's undo
of a refused fill deletes in the order it wrote, the shared tiers first and memory last:
stopped in Redis's delete, memory's "owed" delete was none, and the refused value stayed in
memory, served by this process's reads until its ``ttl``. Owing only the tier stopped in left
a chain of two shared tiers (two Redis, or Redis then DynamoDB as a cache tier) with the old
copy in the second, read by every process until its ``ttl``. Owed, not made at once: the
stopped caller is not held up by more calls. Owing the tier stopped in may be one delete
too many (its call may have been made): deleting twice is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .steps import Steps

__all__ = ["Deletes", "deleting"]


class Deletes(Protocol):
    """What the walk needs of a tier accessor (sync or asyncio): its deletes, which return a
    failure's description (or None), or a coroutine of it, and its record of owed deletes."""

    def delete_many(self, keys: Sequence[str]) -> Any: ...

    def delete_prefix(self, prefix: str) -> Any: ...

    def clear(self) -> Any: ...

    def owe(
        self, keys: Sequence[str] = (), prefixes: Sequence[str] = (), everything: bool = False
    ) -> None: ...


def deleting(
    tiers: Sequence[Deletes],
    keys: Sequence[str] = (),
    prefixes: Sequence[str] = (),
    everything: bool = False,
) -> Steps[list[str]]:
    """Delete ``keys`` and ``prefixes`` (or ``everything``) from ``tiers``, in that order;
    returns the descriptions of the calls that failed (each owed by its tier). Stopped, the
    tier stopped in and those after it owe the delete, and the stop goes on."""
    failed: list[str] = []
    done = 0
    try:
        for tier in tiers:
            if everything:
                errors = [(yield tier.clear, ())]
            else:
                errors = []
                for prefix in prefixes:
                    errors.append((yield tier.delete_prefix, (prefix,)))
                if keys:
                    errors.append((yield tier.delete_many, (keys,)))
            failed += [error for error in errors if error]
            done += 1
    except BaseException:
        # GeneratorExit too: the driver closed between two calls (an interrupt in its frame).
        for tier in tiers[done:]:
            tier.owe(keys, prefixes, everything)
        raise
    return failed
