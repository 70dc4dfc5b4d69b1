"""Stamping loaded values into entries (compiled with the core: once per miss and per set).

:class:`EntryMaker` is the chain's one rule for an entry's times: freshness from the TTLs
(the cache's, or the one passed to a read or a write), staleness from ``max_stale``, and the
negative TTL for a value the source does not have. Compiled (``tools/build_core.py``), it is a
C call that builds the compiled :class:`~tiered_cache.entry.Entry` directly; this source is the
reference (``TIERED_CORE_PURE=1``).

:func:`loaded` and :func:`loaded_many` are the one rule for what a load may return: both
loaders (threads and asyncio) pass every loaded value through them, whoever loaded it (the
source, a loader passed to ``get`` or ``get_many``, a decorated function).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any, NewType

from .entry import NEVER, Entry
from .errors import caused
from .tier import MISSING
from .units import DurationLike, parse_ttl

__all__ = ["CheckedTtl", "EntryMaker", "check_ttl", "loaded", "loaded_many"]

#: The types nearly every loaded value has, none of which can be used up: one set lookup
#: spares them the general check (once per miss).
_PLAIN = frozenset((type(None), bool, int, float, str, bytes, dict, list, tuple))


def loaded(value: Any, key: str) -> Any:
    """``value``, loaded for ``key``, unless it can be used only once: a coroutine, a
    generator or another iterator, an awaitable. Cached, its first reader used it up and the
    next got "cannot reuse already awaited coroutine", or an empty iteration; so it is
    refused with :class:`TypeError` (a load failure), a coroutine or generator closed unrun
    (no "never awaited" warning). A plain function wrapping an ``async def`` (a tracing
    decorator that is not async-aware) returns a coroutine; the asyncio chain awaits its
    loader, and checks what that gave."""
    if type(value) in _PLAIN:
        return value
    if inspect.iscoroutine(value) or inspect.isgenerator(value):
        value.close()
    elif not (isinstance(value, Iterator) or inspect.isawaitable(value)):
        return value
    raise TypeError(
        f"cannot cache what the load of {key!r} returned, a {type(value).__name__}: it can be "
        "used only once; return a list (or a tuple) instead, and for an async def use an "
        "AsyncTieredCache"
    )


def loaded_many(values: Mapping[str, Any]) -> None:
    """:func:`loaded` for every value of a batch: the first that can be used only once
    fails the batch (its loader is broken for every key, not for that one)."""
    for key, value in values.items():
        if type(value) not in _PLAIN:
            loaded(value, key)


#: A read's or a write's ``ttl`` in seconds, checked as its call started (:func:`check_ttl`):
#: what the call carries down to the entries it stamps, which parse nothing again.
CheckedTtl = NewType("CheckedTtl", float)


def check_ttl(ttl: DurationLike | None) -> CheckedTtl | None:
    """``ttl``, a read's, a write's or a decorator's, in seconds (``None``: none given), or
    :class:`ValueError` starting ``ttl:`` unless it is a ttl the settings take
    (:func:`~tiered_cache.units.parse_ttl`): the one parse of a call's ``ttl``, as the call
    starts, before anything is read, loaded or written. Found only when the value was
    stamped, after its load (every call ran the loader, and with a stale copy fail-safe served
    it, the error counted and logged as the load failing) or after the source took a written
    value."""
    if ttl is None:
        return None
    try:
        return CheckedTtl(parse_ttl(ttl))
    except ValueError as exc:  # its text names no argument: a call has several
        raise caused(ValueError(f"ttl: {exc}"), None) from None


class EntryMaker:
    """Stamps values into entries: freshness from the TTLs, staleness from ``max_stale``."""

    def __init__(self, ttl: float | None, negative_ttl: float, max_stale: float) -> None:
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_stale = max_stale

    def __call__(
        self,
        value: Any,
        now: float,
        duration: float,
        ttl: CheckedTtl | None,
        written: bool = False,
    ) -> Entry:
        """The entry of a loaded ``value``: ``None`` (or ``MISSING``) is the source's "not
        found", kept for ``negative_ttl`` whatever the read's ``ttl``. ``written``: a value
        given to ``set``/``set_many``, whose ``ttl`` is the value's, ``None``'s too (a cache
        without a source, Django's, stores ``None`` as a value, for the timeout it is given:
        held for ``negative_ttl`` instead, a ``None`` set for a second stayed 30 s and one set
        for an hour went after 30 s); without a ``ttl``, as a load's. One call per entry
        stamped (a miss's, a set's): no helper of its own for either."""
        lifetime: float | None
        if value is MISSING or (value is None and (ttl is None or not written)):
            value = None
            lifetime = self._negative_ttl
        elif ttl is None:
            lifetime = self._ttl
        else:
            lifetime = ttl
        if lifetime is None:
            soft = hard = NEVER
        else:
            soft = now + lifetime
            hard = soft + self._max_stale
        # Positional: value, loaded_at, soft_expiry, hard_expiry, load_duration (one per miss).
        return Entry(value, now, soft, hard, duration)
