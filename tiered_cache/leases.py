"""Leases: one loader per key across processes, and no late fill after an invalidation.

A tier shared between processes (Redis) may offer leases. Before loading a key missing
everywhere, the chain asks for the key's lease; the process that gets it loads and fills with
:meth:`LeasingTier.fill_with_lease`, which writes only if the lease is still its own. An
invalidation deletes the lease with the key, so a slow load that read the source before a write
cannot put the old value back afterwards ("Scaling Memcache at Facebook", Nishtala et al.,
NSDI 2013, section 3.2.1). The others wait briefly and read what the holder filled; a lease
whose holder died expires after its TTL and another process takes over. ``get_many`` takes
the leases of a batch's cold keys together, loads the ones it got in one batch, and then waits
for the others' holders. A write-through ``set`` steals the lease before it writes the source
and fills under it, so that of two overlapping writes only one (or none) reaches the tier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from .errors import TierUnavailable
from .tier import Entry, MissingType, Tier


class PartialFill(TierUnavailable):
    """Some fills of :meth:`LeasingTier.fill_with_leases` failed.

    ``kept`` are the keys written under their leases (or with nothing to write); the others
    may or may not have been written, so the caller must not copy them into faster tiers.
    """

    def __init__(self, message: str, kept: set[str]) -> None:
        super().__init__(message)
        self.kept = kept


@runtime_checkable
class LeasingTier(Tier, Protocol):
    """A tier that also offers leases (the operations below)."""

    def can_lease(self, key: str) -> bool:
        """False for a key this tier cannot lease (it is then loaded without a lease; asking
        for its lease anyway raises :class:`~tiered_cache.TierUnavailable`)."""
        ...

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        """Try to take ``key``'s lease, and read the key, in one round trip.

        Returns ``(token, entry)``: the token if this caller now holds the lease (``None`` if
        another does), and what the tier holds for ``key`` right now (``MISSING`` if nothing):
        a holder may have filled it since the caller last looked.
        """
        ...

    def steal_lease(self, key: str, ttl: float) -> str:
        """Take ``key``'s lease whoever holds it, for a write (see docs/consistency.md).

        The holder (a load, or an earlier write) loses it, so its fill fails; the write fills
        with :meth:`fill_with_lease` after it stored the source, and fails in turn if a later
        write took the lease meanwhile: of two overlapping writes at most one fills.
        """
        ...

    def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        """:meth:`steal_lease` for each of ``keys``, in one round trip where the tier can (a
        write of many keys: taken one by one, the first leases could expire before the
        write fills under them). All or nothing: raises if any could not be taken."""
        ...

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        """Store ``entry`` and release the lease, only if ``token`` still holds it.

        False when the lease was lost (expired, or deleted by an invalidation): nothing was
        written.
        """
        ...

    def release_lease(self, key: str, token: str) -> None:
        """Give the lease up without filling (the load failed), if ``token`` still holds it."""
        ...

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        """:meth:`acquire_lease` for each of ``keys``, in one round trip where the tier can.

        All or nothing: if some of the leases cannot be asked for, the ones taken are given
        back before the error is raised.
        """
        ...

    def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> set[str]:
        """:meth:`fill_with_lease` for each ``key: (entry, token)``; the keys not lost.

        Every entry is encoded before anything is written: a value the tier cannot store
        raises :class:`~tiered_cache.CodecError` and nothing is written. When only some fills
        fail, :class:`PartialFill` says which keys were written.
        """
        ...

    def release_leases(self, tokens: Mapping[str, str]) -> None:
        """:meth:`release_lease` for each ``key: token``."""
        ...
