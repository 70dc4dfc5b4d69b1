"""The entry every tier stores: a value and what the chain knows about it (its own module so
that the compiled core builds it; :mod:`tiered_cache.tier` re-exports it).

Compiled (``tools/build_core.py``), :class:`Entry` is a mypyc native class: its four times are
C doubles inside the object instead of four float objects beside it (88 bytes in all instead
of 80 + 4 x 24), and its fields, declared ``Final``, get no setter, so Python cannot assign or
delete them. Run from this source, the same class refuses both through :func:`_refuse` (a
class with ``__slots__`` has no read-only attribute of its own).
"""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError
from typing import Any, Final

__all__ = ["COMPILED", "ENTRY_FIELDS", "NEVER", "Entry"]

NEVER: Final = math.inf

#: The fields in the constructor's order.
ENTRY_FIELDS: Final = (
    "value",
    "loaded_at",
    "soft_expiry",
    "hard_expiry",
    "load_duration",
    "version",
)

#: True when this module runs compiled (mypyc leaves ``__file__`` naming the extension
#: module); the pure-Python source adds below what mypyc builds into the compiled class.
COMPILED: Final = not __file__.endswith(".py")


class Entry:
    """A cached value and what the chain knows about it. Immutable (compare by value).

    All times are seconds on the chain's clock (wall-clock by default, because entries travel
    between processes through shared tiers such as Redis).

    The memory tier keeps each entry as a :class:`~tiered_cache.slot.Slot`, a subclass that
    adds the tier's own bookkeeping: an entry read from it may be one (it compares, hashes,
    pickles and copies as the plain :class:`Entry` with the same fields).

    Attributes:
        value: the cached value; ``None`` is a legitimate value (a cached "not found").
        loaded_at: when the value was read from the source.
        soft_expiry: after this the entry is stale: it may still be served while a refresh runs.
        hard_expiry: after this the entry must not be served at all.
        load_duration: how long the load took, in seconds (for probabilistic early refresh).
        version: a counter that orders writes of the same key (higher is newer).
    """

    __slots__ = ("hard_expiry", "load_duration", "loaded_at", "soft_expiry", "value", "version")

    # Final: mypy refuses an assignment anywhere; mypyc gives the fields no setter. (mypy
    # wants a Final set by assignment in __init__, which the pure class refuses: "misc".)
    value: Final[Any]  # type: ignore[misc]
    loaded_at: Final[float]  # type: ignore[misc]
    soft_expiry: Final[float]  # type: ignore[misc]
    hard_expiry: Final[float]  # type: ignore[misc]
    load_duration: Final[float]  # type: ignore[misc]
    version: Final[int]  # type: ignore[misc]

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        value: Any,
        loaded_at: float,
        soft_expiry: float = NEVER,
        hard_expiry: float = NEVER,
        load_duration: float = 0.0,
        version: int = 0,
    ) -> None:
        # object.__setattr__, not assignment: the pure-Python class refuses assignment
        # (_refuse). mypyc compiles each call into a store into the object.
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "loaded_at", loaded_at)
        object.__setattr__(self, "soft_expiry", soft_expiry)
        object.__setattr__(self, "hard_expiry", hard_expiry)
        object.__setattr__(self, "load_duration", load_duration)
        object.__setattr__(self, "version", version)

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
        # isinstance: a memory tier's Slot is an Entry and equals the Entry it was made from.
        if not isinstance(other, Entry):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}" for name, value in zip(ENTRY_FIELDS, self._fields(), strict=True)
        )
        return f"Entry({fields})"

    def __reduce__(self) -> tuple[type[Entry], tuple[Any, float, float, float, float, int]]:
        # Pickle and copy rebuild a plain Entry through the constructor (a Slot too: its
        # bookkeeping belongs to the tier that keeps it).
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


def _refuse(entry: Entry, name: str, value: object = None) -> None:
    """``__setattr__`` and ``__delattr__`` of the pure-Python :class:`Entry`."""
    raise FrozenInstanceError(f"cannot assign or delete field {name!r}: an Entry is immutable")


def _pure_init(  # noqa: PLR0917 - Entry.__init__'s parameters
    self: Entry,
    value: Any,
    loaded_at: float,
    soft_expiry: float = NEVER,
    hard_expiry: float = NEVER,
    load_duration: float = 0.0,
    version: int = 0,
) -> None:
    """``Entry.__init__`` of the pure-Python class, with the same parameters: each field
    written through its slot's own setter (one C call each), where ``object.__setattr__``
    looks the field up by name first (twice the cost; six per entry, one entry or more per
    miss). The source's ``__init__`` stays what mypyc compiles into six stores;
    ``tests/test_compiled_core.py`` compares the entries the two build."""
    _SET_VALUE(self, value)
    _SET_LOADED_AT(self, loaded_at)
    _SET_SOFT_EXPIRY(self, soft_expiry)
    _SET_HARD_EXPIRY(self, hard_expiry)
    _SET_LOAD_DURATION(self, load_duration)
    _SET_VERSION(self, version)


if not COMPILED:
    # mypyc gives the compiled class's Final fields no setter; a pure-Python class has no such
    # thing, so it refuses through its own __setattr__ (its constructor writes around it,
    # through the slots' setters).
    _SETTERS = [vars(Entry)[name].__set__ for name in ENTRY_FIELDS]
    _SET_VALUE, _SET_LOADED_AT, _SET_SOFT_EXPIRY = _SETTERS[:3]
    _SET_HARD_EXPIRY, _SET_LOAD_DURATION, _SET_VERSION = _SETTERS[3:]
    type.__setattr__(Entry, "__init__", _pure_init)
    type.__setattr__(Entry, "__setattr__", _refuse)
    type.__setattr__(Entry, "__delattr__", _refuse)
