"""The in-process tier: a bounded, thread-safe map of entries with per-entry expiry.

What stays in memory is decided by an :class:`EvictionPolicy`. ``"always"`` is a plain LRU on
``cachetools.LRUCache``: every filled key is admitted. The hot-key policy
(:mod:`tiered_cache.policy`) admits a key only when it is worth more than its victim.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import cachetools

from .forking import restart_after_fork
from .hit import HitCount, HitReader
from .memory_core import (
    MISS_BUFFER_ROOM,
    READ_BUFFER_MAX,
    READ_BUFFER_SIZE,
    Copied,
    MemoryCore,
    copied_value,
)
from .policy import TinyLfuPolicy
from .settings import MemoryTierSettings, checked
from .slot import Slot
from .tier import Entry, MissingType, TierBase
from .units import DurationLike
from .weighing import deep_size

__all__ = [
    "MISS_BUFFER_ROOM",
    "READ_BUFFER_MAX",
    "READ_BUFFER_SIZE",
    "EvictionPolicy",
    "LruPolicy",
    "MemoryTier",
]

Clock = Callable[[], float]


class EvictionPolicy(Protocol):
    """Decides what the memory tier keeps. Called with the tier's lock held: no locking here."""

    def get(self, key: str) -> Slot | None:
        """The slot for ``key`` (recording the access), or ``None`` (recording the miss)."""
        ...

    def record_hits(self, hits: Mapping[str, int]) -> None:
        """Record buffered hits: how many per key, keys in the order of their last hit.

        Touching each key once in that order leaves the same recency order as touching it
        at every hit. A key dropped since its hits still had them (they count as reads).
        """
        ...

    def put(self, key: str, slot: Slot) -> bool:
        """Offer ``slot`` (weighing ``slot.weight``); False if the policy refused it. May evict
        other keys."""
        ...

    def put_many(self, items: Sequence[tuple[str, Slot]]) -> None:
        """Offer several ``(key, slot)`` at once, as many :meth:`put` calls would."""
        ...

    def peek(self, key: str) -> Slot | None:
        """The slot for ``key`` without recording an access.

        Called WITHOUT the tier's lock on the hit path, so it must only read dicts (each dict
        lookup is atomic under the GIL); a key moving inside the policy at that instant may
        be reported missing, which costs one read of the next tier, never a wrong value.
        """
        ...

    def pop(self, key: str) -> Slot | None:
        """Remove ``key`` without counting it as an access."""
        ...

    def clear(self) -> None:
        """Forget every key (frequency history may be kept)."""
        ...

    def __len__(self) -> int: ...

    def keys(self) -> list[str]:
        """The keys kept, in no particular order (for deleting by prefix)."""
        ...

    @property
    def weight(self) -> int:
        """Sum of the weights of the kept slots."""
        ...

    @property
    def evictions(self) -> int:
        """How many slots were pushed out to make room."""
        ...

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` hottest keys with their estimated rates (none if it does not track them)."""
        ...


class _Order(cachetools.LRUCache[str, int]):
    """Key order and weights; reports what ``cachetools`` evicts through ``popitem``."""

    def __init__(self, maxsize: int, on_evict: Callable[[str, int], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, int]:
        key, weight = super().popitem()
        self._on_evict(key, weight)
        return key, weight


class LruPolicy:
    """Admit everything, evict the least recently used (order kept by ``cachetools.LRUCache``)."""

    def __init__(self, max_entries: int, max_weight: int | None = None) -> None:
        # Slots live in a plain dict so that ``peek`` is one C-level lookup; cachetools keeps
        # the recency order and the weights.
        self._slots: dict[str, Slot] = {}
        self._order = _Order(max_entries, self._evicted)
        self._max_weight = max_weight
        self._weight = 0
        self._evictions = 0
        # The hit path calls peek without the lock: a bound C method, no Python frame.
        self.peek: Callable[[str], Slot | None] = self._slots.get

    def _evicted(self, key: str, weight: int) -> None:
        self._slots.pop(key, None)
        self._weight -= weight
        self._evictions += 1

    def get(self, key: str) -> Slot | None:
        slot = self._slots.get(key)
        if slot is not None:
            self._order[key]  # a read moves the key to the recent end
        return slot

    def record_hits(self, hits: Mapping[str, int]) -> None:
        touch = self._order.__getitem__  # a read through a Cache moves the key to the end
        slots = self._slots
        for key in hits:
            if key in slots:
                touch(key)

    def put(self, key: str, slot: Slot) -> bool:
        weight = slot.weight
        if self._max_weight is not None and weight > self._max_weight:
            self.pop(key)
            return False
        self.pop(key)
        if self._max_weight is not None:
            while self._order and self._weight + weight > self._max_weight:
                self._order.popitem()  # _evicted keeps the weight right
        # This may make cachetools pop the least recently used key (through _evicted). Never
        # iterate self._order's values: each read through a Cache moves the key to the end.
        self._order[key] = weight
        self._slots[key] = slot
        self._weight += weight
        return True

    def put_many(self, items: Sequence[tuple[str, Slot]]) -> None:
        for key, slot in items:
            self.put(key, slot)

    def pop(self, key: str) -> Slot | None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._weight -= self._order.pop(key, 0)
        return slot

    def clear(self) -> None:
        self._slots.clear()
        self._order.clear()
        self._weight = 0

    def __len__(self) -> int:
        return len(self._slots)

    def keys(self) -> list[str]:
        """The keys kept, in no particular order."""
        return list(self._slots)

    @property
    def weight(self) -> int:
        return self._weight

    @property
    def evictions(self) -> int:
        return self._evictions

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """A plain LRU does not track rates: none."""
        return []


class MemoryTier(TierBase):
    """A thread-safe in-process tier with per-entry expiry and an injected clock.

    Capabilities (:class:`~tiered_cache.tier.TierBase`): ``local``, ``peek``, ``get_at``,
    ``hit_reader`` (not with ``copy_on_read``), ``delete_prefix`` and ``hot_keys`` (when its
    policy tracks them).

    The entries, the read buffer and the lock are held by a
    :class:`~tiered_cache.memory_core.MemoryCore` (compiled with the core); this class is the
    tier's face. An instance answers ``get_at``, ``get``, ``peek``, ``set`` and ``replace``
    with the core's own methods (instance attributes that shadow the methods below, as
    ``TieredCache.get`` is shadowed): a miss and its fill run no Python frame of the tier's.
    A subclass that defines one of them keeps its own.

    Args:
        policy: what to keep; when not given, the adaptive hot-key policy with its defaults
            (:class:`~tiered_cache.policy.TinyLfuPolicy`, the same as ``from_config``'s
            default): a user never has to pick one. ``LruPolicy`` admits every key.
        max_entries: bound on the number of entries (used when ``policy`` is not given).
        max_bytes: optional bound on the bytes the values hold (see :mod:`.weighing`).
        ttl: the longest this tier keeps an entry, in seconds (``None``: as long as the entry
            allows).
        ttl_jitter: a fraction; each entry's TTL is shortened by up to this much at random so
            that entries filled together do not expire together.
        clock: seconds, the same clock the chain stamps entries with.
        copy_on_read: keep a deep copy of each value and hand out a deep copy on every read,
            so that a caller mutating what it got changes nothing for the next reader
            (values are shared otherwise: the fastest read returns the kept object itself).
        sizeof: weighs a value for ``max_bytes``; :func:`.weighing.deep_size` by default.

    ``max_entries``, ``max_bytes``, ``ttl`` and ``ttl_jitter`` are checked by the rules of a
    config file's memory tier (``MemoryTierSettings``): one they refuse raises
    :class:`~tiered_cache.ConfigError` naming it (``ttl: a ttl must be more than 0 ...``).
    """

    #: In-process: the invalidation bus keeps it coherent with the other processes.
    local = True

    def __init__(
        self,
        *,
        name: str = "memory",
        policy: EvictionPolicy | None = None,
        max_entries: int = 10_000,
        max_bytes: int | str | None = None,
        ttl: DurationLike | None = None,
        ttl_jitter: float = 0.0,
        clock: Clock = time.time,
        sizeof: Callable[[Any], int] = deep_size,
        rng: random.Random | None = None,
        copy_on_read: bool = False,
    ) -> None:
        # The settings' rules of these fields (a config file's memory tier is built here).
        max_entries = checked(MemoryTierSettings, "max_entries", max_entries)
        most_bytes: int | None = checked(MemoryTierSettings, "max_bytes", max_bytes)
        seconds: float | None = checked(MemoryTierSettings, "ttl", ttl)
        ttl_jitter = checked(MemoryTierSettings, "ttl_jitter", ttl_jitter)
        self.name = name
        self._clock = clock
        self._core = core = MemoryCore(
            # "is not None": an empty policy may be falsy (it has a length).
            policy if policy is not None else TinyLfuPolicy(max_entries, most_bytes, clock=clock),
            max_entries=max_entries,
            ttl=seconds,
            ttl_jitter=ttl_jitter,
            clock=clock,
            # Values are weighed (``max_bytes``); otherwise every slot weighs 0, and a fill
            # calls nothing to say so.
            sizeof=sizeof if most_bytes is not None else None,
            rng=rng or random.Random(),
            copy_on_read=copy_on_read,
        )
        # The core's methods on the instance, unless a subclass defines its own ("get"
        # reads through "get_at": a subclass's get_at must see it).
        own = type(self)
        shadowed = vars(self)
        if own.get_at is MemoryTier.get_at:
            shadowed["get_at"] = core.get_at
            if own.get is MemoryTier.get:
                shadowed["get"] = core.get
        if own.peek is MemoryTier.peek:
            shadowed["peek"] = core.peek
        if own.set is MemoryTier.set:
            shadowed["set"] = core.set
        if own.replace is MemoryTier.replace:
            shadowed["replace"] = core.replace
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """A lock held at the fork was held by a thread the child does not have (the bus
        listener dropping a key, a background fill, any thread of the application): it
        would stay held, and the child's first write wait for ever. The child takes a new
        lock and starts empty, since the policy may be half-way through that thread's
        change. A lock nobody held leaves the tier as it was (a preloaded parent's copies)."""
        self._core.after_fork_in_child()

    @property
    def policy(self) -> EvictionPolicy:
        """The eviction policy (for stats and hot-key reports)."""
        return self._core.policy

    def get(self, key: str) -> Entry | MissingType:
        return self.get_at(key, self._clock())

    def get_at(self, key: str, now: float) -> Entry | MissingType:
        """:meth:`get`, judging expiry at ``now``: the chain reads its clock once per L1 hit
        and passes it here, instead of the tier and the chain reading it each.

        A miss is observed by the policy (hot-key detection) when the read buffer is
        replayed, at the next write (the fill that usually follows) or locked miss: in the
        same order with the hits as if it were counted now, without taking the lock now."""
        return self._core.get_at(key, now)

    def hit_reader(self, clock: Clock, margin: float, hits: HitCount) -> HitReader | None:
        """The chain's plain L1 hit in one (compiled) call: a fresh slot's value, its read
        buffered as :meth:`get_at` buffers it (:mod:`tiered_cache.hit`). None with
        ``copy_on_read``: every read must copy, which :meth:`get_at` does."""
        core = self._core
        if core.copy_on_read:
            return None
        return HitReader(core.peek_slot, core.record_read, clock, margin, hits)

    def peek(self, key: str) -> Entry | MissingType:
        """The live entry for ``key`` without counting a read (for the chain's second look)."""
        return self._core.peek(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Hits are looked up without the lock; the misses take it once for the batch."""
        return self._core.get_many(keys)

    def set(self, key: str, entry: Entry) -> None:
        self._core.set(key, entry)

    def check_value(self, value: Any) -> None:
        """CodecError if ``copy_on_read`` cannot copy ``value`` (asked before a write sends
        anything: found at the fill, it came after the source had taken the value)."""
        if self._core.copy_on_read:
            copied_value(value)

    def prepare_value(self, value: Any) -> Any:
        """With ``copy_on_read``, the tier's own deep copy of ``value`` (CodecError if it
        cannot be made), which the write's fill hands back and the tier keeps as it is: one
        copy per write, where the check's copy was thrown away and the fill made another.
        Made before the source is written, it is the value the caller passed. Otherwise the
        value itself."""
        if self._core.copy_on_read:
            return Copied(copied_value(value))
        return value

    def replace(self, key: str, entry: Entry) -> None:
        """:meth:`delete_many` of ``key`` then :meth:`set` of ``entry`` under one lock (the
        chain's write, ``Fence.write_alone``): the policy sees the drop and then a new key,
        as it sees the two calls. The old copy goes even if the new one cannot be made (its
        weight)."""
        self._core.replace(key, entry)

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        """Expiries and sizes are worked out first; the lock is taken once for the batch."""
        self._core.set_many(entries)

    def delete(self, key: str) -> None:
        self._core.delete_many((key,))

    def delete_many(self, keys: Sequence[str]) -> None:
        self._core.delete_many(keys)

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """The policy's ``n`` hottest keys with their rates (empty if it does not track them);
        read under the lock, since the policy's structures change on every miss."""
        return self._core.hot_keys(n)

    def report(self) -> dict[str, int]:
        """Entries held and evictions so far, for ``stats()`` (:mod:`tiered_cache.reporting`)."""
        policy = self._core.policy
        return {"entries": len(policy), "evictions": policy.evictions}

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix`` (a scan of this tier's keys)."""
        self._core.delete_prefix(prefix)

    def clear(self) -> None:
        self._core.clear()

    def close(self) -> None:
        self.clear()

    def __len__(self) -> int:
        return len(self._core.policy)

    def __contains__(self, key: object) -> bool:
        """True if ``key`` is held and not expired (does not count as an access)."""
        if not isinstance(key, str):
            return False
        return self._core.contains(key)
