"""The L1 hit in one call: the memory tier's plain hit, compiled with the core.

:meth:`MemoryTier.hit_reader <tiered_cache.memory.MemoryTier.hit_reader>` builds a
:class:`HitReader` over its own slots and read buffer, with what the chain brings: its clock,
the XFetch margin and a :class:`HitCount`. ``TieredCache.get`` and the decorator's wrapper
call it first. It answers only the common case -- a slot fresh at the tier, its entry before
the soft expiry by more than the XFetch window -- and answers it in full: the read buffered for
the policy, the hit counted, the value returned. Anything else (a miss, an expired slot, a
stale entry, a read close enough to the expiry for an early refresh, a key that is not a
``str``) gets :data:`NOT_FRESH` with nothing recorded, and the chain takes its general L1
lookup (:class:`L1Lookup`, compiled here too), which decides exactly as it always has.

Compiled by ``tools/build_core.py`` (mypyc): one C call and no Python frame per hit, and a
compiled :class:`~tiered_cache.slot.Slot`'s ``expire_at`` is read as a C double. This source is
the reference (``TIERED_CORE_PURE=1``, or no compiler); ``tests/test_compiled_core.py``
compares the two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol, final

from .keys import check_keys
from .protection import REFRESH_DUE, xfetch_due
from .read_state import ReadState
from .slot import Slot
from .tier import MISSING, Entry, MissingType

__all__ = ["NOT_FRESH", "HitCount", "HitReader", "L1Lookup", "NotFresh", "PlainGet"]


@final
class NotFresh:
    """The type of :data:`NOT_FRESH`."""

    def __repr__(self) -> str:
        return "NOT_FRESH"


#: The reader has no plain hit for the key: ask the general lookup (it may still find one).
NOT_FRESH: Final = NotFresh()

#: The general lookup's answers that send a read on (statics of this module, compiled: no
#: lookup in another module's globals per miss).
_MISSING: Final = MISSING
_REFRESH_DUE: Final = REFRESH_DUE


@final
class HitCount:
    """How many plain hits the readers of one chain answered (added into ``stats()``).

    ``value += 1`` without a lock or per-thread cells (a thread-local lookup cost as much as
    the rest of the hit) and still exact under the GIL: compiled, no Python code runs between
    the read and the write; as Python, the interpreter switches threads only at calls and
    backward jumps, and an ``int`` has no finalizer that could run one.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


@final
class HitReader:
    """``reader(key)``: the value of a plain L1 hit, or :data:`NOT_FRESH`.

    Args:
        peek: the memory tier's slot for a key, or None (its policy's ``peek``: one dict lookup
            without the tier's lock, atomic under the GIL; a stored slot is never changed,
            only replaced).
        record: buffers a hit on a key for the tier's policy (the tier's read buffer).
        clock: the chain's clock (the one the tier is given too).
        margin: the chain's XFetch window factor: a read later than ``soft_expiry -
            load_duration * margin`` is left to the general lookup, which makes the draw.
        hits: counts each hit answered here.
    """

    __slots__ = ("_clock", "_hits", "_margin", "_peek", "_record")

    def __init__(
        self,
        peek: Callable[[Any], Slot | None],
        record: Callable[[str], object],
        clock: Callable[[], float],
        margin: float,
        hits: HitCount,
    ) -> None:
        self._peek = peek
        self._record = record
        self._clock = clock
        self._margin = margin
        self._hits = hits

    def __call__(self, key: Any) -> Any:
        # ``key`` is not typed ``str``: a wrong key must reach the general lookup, whose check
        # raises the TypeError that explains it -- before the dict lookup, which would raise
        # its own for an unhashable key, or answer for an object that compares equal to a key.
        if type(key) is not str:
            return NOT_FRESH
        slot = self._peek(key)
        if slot is None:
            return NOT_FRESH
        now = self._clock()
        if now >= slot.expire_at:
            return NOT_FRESH
        entry = slot.entry
        soft: float = entry.soft_expiry
        took: float = entry.load_duration
        # Both tests: a negative load duration (a clock stepped back) must not widen freshness.
        if now >= soft or now >= soft - took * self._margin:
            return NOT_FRESH
        self._record(key)
        self._hits.value += 1
        return entry.value


class Counter(Protocol):
    """A counter of hits (``metrics.LocalCounter``: per-thread cells)."""

    def add(self, amount: int = 1) -> None: ...


class Tier0(Protocol):
    """What :class:`L1Lookup` tells tier 0's accessor."""

    def failed(self, exc: Exception) -> None: ...

    def miss(self) -> None: ...


@final
class L1Lookup:
    """``lookup(key)``: the chain's general L1 lookup (:attr:`L1Reader.lookup_l1
    <tiered_cache.l1.L1Reader.lookup_l1>`), after :class:`HitReader` said :data:`NOT_FRESH`:
    the fresh value in tier 0, ``MISSING``, or :data:`REFRESH_DUE` (for the decorator, which
    inlines ``get``).

    One clock read, one tier call, a lock-free hit counter; no flight, no fence, no
    allocation. The XFetch draw is only made near the expiry. Compiled with the core, it
    runs no Python frame on a miss. The chain sets :attr:`get_at` and :attr:`tier` (tier 0's
    ``get_at`` and accessor; ``get_at`` None: tier 0 is not read) whenever it changes, and
    :attr:`unread`, what a lookup that does not read tier 0 returns: the
    :class:`~tiered_cache.read_state.ReadState` of the bus that switched it off, which the
    read carries on (its one decision of the bus), or ``MISSING`` (no tier 0, or a shared
    one: the read decides after the lookup).

    Args:
        clock: the chain's clock.
        hits: counts each hit answered here.
        window: the chain's XFetch window factor (a read later than ``soft_expiry -
            load_duration * window`` makes the draw).
        beta: the XFetch beta.
        rng: uniform numbers in [0, 1) for the draw.
    """

    __slots__ = ("_beta", "_clock", "_hits", "_random", "_window", "get_at", "tier", "unread")

    def __init__(
        self,
        clock: Callable[[], float],
        hits: Counter,
        window: float,
        beta: float,
        rng: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._hits = hits
        self._window = window
        self._beta = beta
        self._random = rng
        self.get_at: Callable[[str, float], Entry | MissingType] | None = None
        self.tier: Tier0 | None = None
        self.unread: Any = _MISSING

    def __call__(self, key: Any) -> Any:
        if type(key) is not str:
            # Refused before the tier is asked: an object that hashes and compares like a
            # stored key would be answered by the tier's dict (a str subclass passes).
            check_keys((key,))
        get_at = self.get_at
        tier = self.tier
        if get_at is None or tier is None:
            return self.unread
        now = self._clock()
        try:
            entry = get_at(key, now)
        except Exception as exc:
            check_keys((key,))  # a caller's mistake is not the tier's failure
            tier.failed(exc)
            return _MISSING
        if entry is not _MISSING:
            soft = entry.soft_expiry
            if now < soft:
                self._hits.add()
                took = entry.load_duration
                if now >= soft - took * self._window and xfetch_due(
                    now, soft, took, self._beta, self._random()
                ):
                    return _REFRESH_DUE
                return entry.value
        tier.miss()
        return _MISSING


@final
class PlainGet:
    """``cache.get`` of a :class:`~tiered_cache.TieredCache` instance: ``TieredCache.get``
    without its Python frames, which cost as much as the compiled hit itself.

    A plain hit comes from ``reader`` (the chain's :attr:`~tiered_cache.l1.L1Reader.l1_hit`,
    kept current by the chain); anything else goes to ``lookup(key)``, the chain's general L1
    lookup (:attr:`~tiered_cache.l1.L1Reader.lookup_l1`, an :class:`L1Lookup`), and what that
    does not answer (``MISSING``, ``REFRESH_DUE``, or the bus's
    :class:`~tiered_cache.read_state.ReadState`) to ``after(key, loader, ttl, looked)``,
    the chain's ``get_after_l1``: the rest of ``TieredCache.get``, called from here rather
    than through a method of the chain that would add a Python frame to every miss. Same
    parameters as the method (``ttl`` keyword-only).
    """

    __slots__ = ("_after", "_lookup", "reader")
    # help(cache.get) and introspecting tools must see the public method, not this class (as
    # for cache.set): a PlainGet is named "get" and is a routine to ``inspect`` (``__get__``:
    # a method descriptor; it is never looked up on a class, so it only hands itself back);
    # TieredCache.get's doc and signature are set on the class by the chain, which owns them.
    __name__ = "get"

    def __init__(
        self,
        reader: Callable[[Any], Any],
        lookup: Callable[[Any], Any],
        after: Callable[[Any, Any, Any, Any], Any],
    ) -> None:
        self.reader = reader
        self._lookup = lookup
        self._after = after

    def __get__(self, instance: object, owner: type | None = None) -> PlainGet:
        return self

    def __call__(self, key: Any, loader: Any = None, *, ttl: Any = None) -> Any:
        value = self.reader(key)
        if value is NOT_FRESH:
            value = self._lookup(key)
            if value is _MISSING or value is _REFRESH_DUE or type(value) is ReadState:
                return self._after(key, loader, ttl, value)
        return value
