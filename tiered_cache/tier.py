"""The contracts every tier and source implements, and the entry they exchange."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    Protocol,
    TypeAlias,
    cast,
    runtime_checkable,
)

# The entry lives in a module of its own, compiled with the memory tier's core.
from .entry import ENTRY_FIELDS, NEVER, Entry
from .errors import TierCallFailed

if TYPE_CHECKING:
    from .hit import HitCount

__all__ = [
    "ENTRY_FIELDS",
    "MISSING",
    "NEVER",
    "Entry",
    "Missing",
    "MissingType",
    "PartialRead",
    "PeekableTier",
    "Source",
    "Tier",
    "TierBase",
]


class PartialRead(TierCallFailed):
    """A ``get_many`` that the tier read in several calls, some of which failed (the first
    failure is its ``__cause__``): the chain serves ``found`` and reads the keys the tier
    did not answer for (those not in ``read``) through to the next tier, with the tier's
    failure counted and logged as any other.

    Attributes:
        found: the live entries among the keys read.
        read: the keys the tier answered for (found or absent).
    """

    def __init__(self, message: str, found: Mapping[str, Entry], read: Sequence[str]) -> None:
        super().__init__(message)
        self.found = dict(found)
        self.read = list(read)


class Missing(enum.Enum):
    """Type of the :data:`MISSING` sentinel; falsy so ``if entry:`` reads naturally."""

    MISSING = "MISSING"

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"


#: A miss. Never ``None``: ``None`` is a value that can be cached (negative caching).
MISSING: Final = Missing.MISSING
MissingType: TypeAlias = Literal[Missing.MISSING]


@runtime_checkable
class Tier(Protocol):
    """One level of the chain: memory, Redis, or anything an adapter provides.

    A tier stores entries and may drop them whenever it likes (eviction, its own TTL). It
    raises on infrastructure failure; the chain turns such failures into a skip of the tier.
    ``set``/``set_many`` must raise :class:`tiered_cache.CodecError` for a value it cannot
    store, and then store nothing.
    """

    name: str

    def get(self, key: str) -> Entry | MissingType:
        """The live entry for ``key``, or ``MISSING``."""
        ...

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The live entries among ``keys``; absent keys are left out. A tier that reads a
        batch in several calls and answered only some raises :class:`PartialRead`."""
        ...

    def set(self, key: str, entry: Entry) -> None:
        """Store ``entry`` (the tier may keep it for less time than the entry allows)."""
        ...

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        """Store several entries at once."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing an absent key is not an error."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove several keys at once."""
        ...

    def clear(self) -> None:
        """Remove every entry this tier holds for this cache."""
        ...

    def close(self) -> None:
        """Release connections and threads; the tier is not used afterwards."""
        ...


class TierBase:
    """The optional capabilities of a tier, declared with their defaults.

    A tier subclasses this and overrides what it can do better; the chain resolves each
    capability once, when it is built, and never probes for it. A tier that does not subclass
    it (any object with the :class:`Tier` methods) gets exactly these defaults. The list is in
    docs/adapters.md and each capability has a test in :mod:`tiered_cache.testing.conformance`.

    Attributes:
        local: in-process (memory): the invalidation bus keeps it coherent with the other
            processes, and the chain bypasses it while the bus is down.
        leases: offers the lease operations of :class:`tiered_cache.leases.LeasingTier`; the
            chain then loads a missing key once per fleet and orders writes through it.
        utf8_keys: stores keys as UTF-8 (Redis): the chain refuses a key UTF-8 cannot encode
            (a lone surrogate) at its face, before anything is sent
            (:func:`tiered_cache.keys.check_keys`); a tier without it holds any ``str``.
    """

    local: bool = False
    leases: bool = False
    utf8_keys: bool = False

    def get(self, key: str) -> Entry | MissingType:  # pragma: no cover - a subclass overrides
        raise NotImplementedError

    def clear(self) -> None:  # pragma: no cover - a subclass overrides
        raise NotImplementedError

    def peek(self, key: str) -> Entry | MissingType:
        """:meth:`Tier.get` without counting a read (for the chain's second look)."""
        return self.get(key)

    def get_at(self, key: str, now: float) -> Entry | MissingType:
        """:meth:`Tier.get`, judging expiry at ``now`` (the chain's one clock reading)."""
        return self.get(key)

    def hit_reader(
        self, clock: Callable[[], float], margin: float, hits: HitCount
    ) -> Callable[[Any], Any] | None:
        """A function answering the chain's plain L1 hits in one call, or None (the default:
        the chain reads through :meth:`get_at`).

        ``reader(key)`` returns the value when the tier holds ``key`` live at ``clock()`` and
        before its soft expiry by more than ``margin`` times its load duration, recording the
        read as :meth:`get_at` would and adding one to ``hits.value``; otherwise it records
        nothing and returns :data:`tiered_cache.hit.NOT_FRESH`, and the chain calls
        :meth:`get_at`, which decides.
        """
        return None

    def replace(self, key: str, entry: Entry) -> None:
        """Drop ``key``'s copy, then store ``entry``: what an invalidation of ``key`` and a
        fill after it leave (a chain's write). By default :meth:`Tier.delete_many` then
        :meth:`Tier.set`; a tier may do both in one step (the memory tier: under one lock).
        If the store fails, the old copy is gone all the same."""
        tier = cast("Tier", self)
        tier.delete_many((key,))
        tier.set(key, entry)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix``; by default everything (always safe)."""
        self.clear()

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` hottest keys with their estimated rates; none by default."""
        return []

    def check_value(self, value: Any) -> None:
        """Raise :class:`~tiered_cache.CodecError` if this tier could not store ``value``
        (its codec refuses it); the chain asks every tier before a write sends anything (the
        source, the tiers, the bus). By default nothing: the tier stores any object."""

    def prepare_value(self, value: Any) -> Any:
        """What the chain asks every tier before a write sends anything (the source, the
        tiers, the bus): :meth:`check_value` of ``value`` (raises
        :class:`~tiered_cache.CodecError`), and the form this tier's fill of the write then
        stores as the entry's value. A tier that encodes values returns the value encoded
        (the Redis tier: its payload, stored as it is), so a write encodes it once; by default
        the value itself, checked."""
        self.check_value(value)
        return value


#: What a tier that declares nothing declares: :class:`TierBase`'s defaults.
UNDECLARED: Final = TierBase()


def declared_capabilities(tier: object) -> TierBase:
    """The capabilities ``tier`` declares: the tier itself when it is a :class:`TierBase`,
    else the defaults (:data:`UNDECLARED`). The one place a tier's capabilities are resolved
    (:func:`tiered_cache.async_tier.declared_capabilities` for an async tier): once, when a
    wrapper or an accessor is built, never probed per call, so nothing wrapping a tier hides
    what it declares. For a tier that declares none, its flags and plain calls are the
    defaults'; the defaults' verbs that call the tier (``peek``, ``get_at``, ``replace``,
    ``delete_prefix``) call the defaults instead, so they are bound to the tier apart
    (:func:`declared_delete_prefix`)."""
    return tier if isinstance(tier, TierBase) else UNDECLARED


def declared_delete_prefix(tier: Tier) -> Callable[[str], None]:
    """``tier``'s declared ``delete_prefix``, else its ``clear`` (more than asked, never less),
    resolved once (:func:`declared_capabilities`)."""
    if isinstance(tier, TierBase):
        return tier.delete_prefix
    return lambda prefix: tier.clear()


class PeekableTier(Tier, Protocol):
    """A tier that can be looked at without the look counting as a read.

    The chain looks at tier 0 a second time inside a key's flight (another flight may have
    filled it meanwhile); for a memory tier whose eviction policy counts reads, that look must
    not count the same miss twice.
    """

    def peek(self, key: str) -> Entry | MissingType:
        """The live entry for ``key``, or ``MISSING``; not recorded as an access."""
        ...


@runtime_checkable
class Source(Protocol):
    """The system of record behind the chain: a DynamoDB table, or a plain function."""

    name: str

    def load(self, key: str) -> Any | MissingType:
        """The value for ``key``, or ``MISSING`` if the source has no such item."""
        ...

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Values for the keys the source has; absent keys are left out."""
        ...

    def store(self, key: str, value: Any) -> None:
        """Write ``value`` for ``key`` (used by write-through). Must not mutate ``value``: the
        tiers' forms of it (the Redis tier's bytes) are made before this call, and the memory
        tier keeps the object itself, so a change made here would reach memory and not Redis."""
        ...

    def remove(self, key: str) -> None:
        """Delete ``key`` from the source."""
        ...

    def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...
