"""The contracts every tier and source implements, and the entry they exchange."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeAlias, final, runtime_checkable

if TYPE_CHECKING:
    from .hit import HitCount


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

NEVER: Final = math.inf


class _EntryFields:
    """The storage of :class:`Entry`: six slots, nothing else (no ``__dict__``)."""

    __slots__ = ("hard_expiry", "load_duration", "loaded_at", "soft_expiry", "value", "version")

    value: Any
    loaded_at: float
    soft_expiry: float
    hard_expiry: float
    load_duration: float
    version: int


# Entry is immutable, so its constructor cannot assign its attributes; it calls the slots'
# own setters. A frozen dataclass goes through ``object.__setattr__`` for each field, which
# made building an entry a tenth of the cost of a miss.
_FIELD_SETTERS: dict[str, Callable[[Any, Any], None]] = {
    name: vars(_EntryFields)[name].__set__ for name in _EntryFields.__slots__
}
_set_value = _FIELD_SETTERS["value"]
_set_loaded_at = _FIELD_SETTERS["loaded_at"]
_set_soft_expiry = _FIELD_SETTERS["soft_expiry"]
_set_hard_expiry = _FIELD_SETTERS["hard_expiry"]
_set_load_duration = _FIELD_SETTERS["load_duration"]
_set_version = _FIELD_SETTERS["version"]

#: The fields in the constructor's order.
ENTRY_FIELDS: Final = (
    "value",
    "loaded_at",
    "soft_expiry",
    "hard_expiry",
    "load_duration",
    "version",
)


@final
class Entry(_EntryFields):
    """A cached value and what the chain knows about it. Immutable (compare by value).

    All times are seconds on the chain's clock (wall-clock by default, because entries travel
    between processes through shared tiers such as Redis).

    Attributes:
        value: the cached value; ``None`` is a legitimate value (a cached "not found").
        loaded_at: when the value was read from the source.
        soft_expiry: after this the entry is stale: it may still be served while a refresh runs.
        hard_expiry: after this the entry must not be served at all.
        load_duration: how long the load took, in seconds (for probabilistic early refresh).
        version: a counter that orders writes of the same key (higher is newer).
    """

    __slots__ = ()

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        value: Any,
        loaded_at: float,
        soft_expiry: float = NEVER,
        hard_expiry: float = NEVER,
        load_duration: float = 0.0,
        version: int = 0,
    ) -> None:
        _set_value(self, value)
        _set_loaded_at(self, loaded_at)
        _set_soft_expiry(self, soft_expiry)
        _set_hard_expiry(self, hard_expiry)
        _set_load_duration(self, load_duration)
        _set_version(self, version)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: an Entry is immutable")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: an Entry is immutable")

    def _fields(self) -> tuple[Any, float, float, float, float, int]:
        return (
            self.value,
            self.loaded_at,
            self.soft_expiry,
            self.hard_expiry,
            self.load_duration,
            self.version,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Entry:
            return NotImplemented
        assert isinstance(other, Entry)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}" for name, value in zip(ENTRY_FIELDS, self._fields(), strict=True)
        )
        return f"Entry({fields})"

    def __reduce__(self) -> tuple[type[Entry], tuple[Any, float, float, float, float, int]]:
        # Pickle and copy rebuild through the constructor (assignment is refused).
        return Entry, self._fields()

    def is_fresh(self, now: float) -> bool:
        """True while the entry is before its soft expiry."""
        return now < self.soft_expiry

    def is_expired(self, now: float) -> bool:
        """True once the entry is past its hard expiry and must not be served."""
        return now >= self.hard_expiry

    def with_value(self, value: Any) -> Entry:
        """A copy of this entry holding another value."""
        return Entry(
            value,
            self.loaded_at,
            self.soft_expiry,
            self.hard_expiry,
            self.load_duration,
            self.version,
        )

    def replace(
        self,
        *,
        soft_expiry: float | None = None,
        hard_expiry: float | None = None,
    ) -> Entry:
        """A copy of this entry with other expiries (the one given; the other kept)."""
        return Entry(
            self.value,
            self.loaded_at,
            self.soft_expiry if soft_expiry is None else soft_expiry,
            self.hard_expiry if hard_expiry is None else hard_expiry,
            self.load_duration,
            self.version,
        )


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
        """The live entries among ``keys``; absent keys are left out."""
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
    """

    local: bool = False
    leases: bool = False

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

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix``; by default everything (always safe)."""
        self.clear()

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` hottest keys with their estimated rates; none by default."""
        return []


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
        """Write ``value`` for ``key`` (used by write-through)."""
        ...

    def remove(self, key: str) -> None:
        """Delete ``key`` from the source."""
        ...

    def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...
