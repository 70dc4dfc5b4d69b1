"""How many bytes a cached value holds, for the memory tier's ``max_bytes``.

A value is weighed by walking everything it references, each object once, and adding up
Python's own size of each (``sys.getsizeof``). The walk has no depth limit (it uses a stack, not
recursion) and follows containers, instance ``__dict__`` and ``__slots__``; it skips classes,
modules and functions, which belong to the program rather than to the value. A value of more
than :data:`MAX_OBJECTS` objects is not walked to the end: it weighs :data:`UNWEIGHABLE`, more
than any bound, so a tier with ``max_bytes`` does not keep it; nor one whose own code raises
as it is weighed.
"""

from __future__ import annotations

import contextlib
import sys
import types
import weakref
from collections import deque
from typing import Any

#: Most objects one weighing visits (a bound on its cost, about a second of CPU at worst).
MAX_OBJECTS = 1_000_000

#: The weight of a value too large to walk: larger than any ``max_bytes``.
UNWEIGHABLE = sys.maxsize

#: Objects that reference nothing a value owns.
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), range)

#: Objects shared by the whole program, never owned by one cached value.
_PROGRAM = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
)

_CONTAINERS = (list, tuple, set, frozenset, deque)


def deep_size(value: Any, *, max_objects: int = MAX_OBJECTS) -> int:
    """Bytes held by ``value`` and everything it references, each object counted once;
    :data:`UNWEIGHABLE` when the value's own code raises as it is weighed (its
    ``__sizeof__``; a ``__class__`` that isinstance reads, as a lazy object's whose set-up
    fails): the tier keeps it no more than a value too large to walk. Raised through, it was
    the tier's fill failing, counted and logged so (a breaker on the tier opened), after the
    source had taken the value."""
    try:
        return _walk(value, max_objects)
    except Exception:
        return UNWEIGHABLE


def _walk(value: Any, max_objects: int) -> int:
    seen: set[int] = set()
    pending = [value]
    total = 0
    while pending:
        item = pending.pop()
        if id(item) in seen or isinstance(item, _PROGRAM):
            continue
        seen.add(id(item))
        if len(seen) > max_objects:
            return UNWEIGHABLE
        total += sys.getsizeof(item, 64)
        if isinstance(item, _LEAVES):
            continue
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            pending.extend(item)
        else:
            pending.extend(_attributes(item))
    return total


def _attributes(item: Any) -> list[Any]:
    """What an instance holds: its ``__dict__`` and the values of its ``__slots__``."""
    found: list[Any] = []
    # object.__getattribute__: a class's own __getattr__ must not run (or fail) here; an
    # instance may have no __dict__, and a slot may be empty.
    for name in ("__dict__", *_slot_names(type(item))):
        with contextlib.suppress(AttributeError):
            found.append(object.__getattribute__(item, name))
    return found


#: Slot names per class, found once (weak: a class that goes away takes its entry with it).
_SLOTS: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _slot_names(cls: type) -> tuple[str, ...]:
    """The attribute names of every ``__slots__`` along the class's MRO (mangled as Python
    stores them)."""
    known = _SLOTS.get(cls)
    if known is not None:
        return known
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            private = slot.startswith("__") and not slot.endswith("__")
            names.append(f"_{klass.__name__.lstrip('_')}{slot}" if private else slot)
    _SLOTS[cls] = found = tuple(names)
    return found
