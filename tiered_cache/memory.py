"""The in-process tier: a bounded, thread-safe map of entries with per-entry expiry.

What stays in memory is decided by an :class:`EvictionPolicy`. ``"always"`` is a plain LRU on
``cachetools.LRUCache``: every filled key is admitted. The hot-key policy
(:mod:`tiered_cache.policy`) admits a key only when it is worth more than its victim.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import cachetools

from .forking import restart_after_fork
from .hit import HitCount, HitReader
from .policy import TinyLfuPolicy
from .slot import Slot
from .tier import MISSING, Entry, MissingType, TierBase
from .weighing import deep_size

Clock = Callable[[], float]


#: Most recent reads kept for the eviction policy until the next write or miss replays them:
#: at least this many ...
READ_BUFFER_SIZE = 128
#: ... and up to one per entry, at most this many. A run of hits longer than the buffer loses
#: its oldest hits, and a policy that does not see a kept key's hits takes it for cold: in a
#: loop of 1,100 keys at 1,000 entries (990 hits in a row) the main area's keys were counted
#: for their last 128 hits only, lost to candidates counted at every miss, and the churn cost
#: 1.1 points (88.83% with 128 reads kept, 89.94% with 1,024; PYTHONHASHSEED=0).
READ_BUFFER_MAX = 4096
#: A miss is buffered (not replayed at once, under the lock) while the buffer holds fewer
#: reads than this: the rest of the buffer is room for the hits that may follow it before the
#: next write, so that it is not pushed out of the buffer before it is replayed.
MISS_BUFFER_ROOM = READ_BUFFER_SIZE // 2

#: A buffered read: a hit is its key; a miss is its key in a 1-tuple.
_Read = str | tuple[str]


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
    """

    #: In-process: the invalidation bus keeps it coherent with the other processes.
    local = True

    def __init__(
        self,
        *,
        name: str = "memory",
        policy: EvictionPolicy | None = None,
        max_entries: int = 10_000,
        max_bytes: int | None = None,
        ttl: float | None = None,
        ttl_jitter: float = 0.0,
        clock: Clock = time.time,
        sizeof: Callable[[Any], int] = deep_size,
        rng: random.Random | None = None,
        copy_on_read: bool = False,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0.0 <= ttl_jitter < 1.0:
            raise ValueError("ttl_jitter must be in [0, 1)")
        self.name = name
        # "is not None": an empty policy may be falsy (it has a length).
        self._policy: EvictionPolicy = (
            policy if policy is not None else TinyLfuPolicy(max_entries, max_bytes, clock=clock)
        )
        self._ttl = ttl
        self._jitter = ttl_jitter
        self._clock = clock
        self._sizeof = sizeof if max_bytes is not None else _zero_size
        #: Values are weighed (``max_bytes``); otherwise every slot weighs 0, and a fill calls
        #: nothing to say so.
        self._weighs = max_bytes is not None
        self._rng = rng or random.Random()
        self._copy_on_read = copy_on_read
        self._lock = threading.Lock()
        self._peek = self._policy.peek
        # Hits are recorded here without the lock and replayed into the policy before the
        # next write or miss (Caffeine's read buffer): the hit path never waits for another
        # thread. The buffer is bounded: under a burst of hits the oldest are dropped, which
        # makes hit observation a sample of the most recent reads, never a growing cost.
        # Misses go through the same buffer (see get_at), in order with the hits.
        room = min(max(READ_BUFFER_SIZE, max_entries), READ_BUFFER_MAX)
        self._reads: deque[_Read] = deque(maxlen=room)
        self._record_read = self._reads.append
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """A lock held at the fork was held by a thread the child does not have (the bus
        listener dropping a key, a background fill, any thread of the application): it
        would stay held, and the child's first write wait for ever. The child takes a new
        lock and starts empty, since the policy may be half-way through that thread's
        change. A lock nobody held leaves the tier as it was (a preloaded parent's copies)."""
        if self._lock.locked():
            self._lock = threading.Lock()
            self._reads.clear()  # in place: the chain's hit reader appends to this deque
            self._policy.clear()

    @property
    def policy(self) -> EvictionPolicy:
        """The eviction policy (for stats and hot-key reports)."""
        return self._policy

    def get(self, key: str) -> Entry | MissingType:
        return self.get_at(key, self._clock())

    def get_at(self, key: str, now: float) -> Entry | MissingType:
        """:meth:`get`, judging expiry at ``now``: the chain reads its clock once per L1 hit
        and passes it here, instead of the tier and the chain reading it each."""
        slot = self._peek(key)
        if slot is not None and now < slot.expire_at:
            self._record_read(key)
            return _copied(slot.entry) if self._copy_on_read else slot.entry
        if slot is None:
            # The policy observes the miss (hot-key detection) when the buffer is replayed,
            # at the next write (the fill that usually follows) or locked miss: in the same
            # order with the hits as if it were counted now, without taking the lock now.
            if len(self._reads) < MISS_BUFFER_ROOM:
                self._record_read((key,))
                return MISSING
            with self._lock:
                self._replay_reads()
                self._policy.get(key)
            return MISSING
        with self._lock:
            self._replay_reads()
            if self._policy.peek(key) is slot:
                self._policy.pop(key)  # expired
        return MISSING

    def hit_reader(self, clock: Clock, margin: float, hits: HitCount) -> HitReader | None:
        """The chain's plain L1 hit in one (compiled) call: a fresh slot's value, its read
        buffered as :meth:`get_at` buffers it (:mod:`tiered_cache.hit`). None with
        ``copy_on_read``: every read must copy, which :meth:`get_at` does."""
        if self._copy_on_read:
            return None
        return HitReader(self._peek, self._record_read, clock, margin, hits)

    def peek(self, key: str) -> Entry | MissingType:
        """The live entry for ``key`` without counting a read (for the chain's second look)."""
        slot = self._peek(key)
        if slot is not None and self._clock() < slot.expire_at:
            return _copied(slot.entry) if self._copy_on_read else slot.entry
        return MISSING

    def _replay_reads(self) -> None:
        # Called with the lock held; deque.popleft is atomic against concurrent appends.
        # Hits are handed over as counts per key, in the order of each key's last hit: a hot
        # key hit fifty times since the last replay costs the policy one update, not fifty.
        # A miss hands over the hits before it, then is observed itself.
        reads = self._reads
        if not reads:
            return
        policy = self._policy
        hits: dict[str, int] | None = None  # made at the first hit: a fill after a lone miss
        while reads:
            try:
                read = reads.popleft()
            except IndexError:
                break
            if isinstance(read, str):
                if hits is None:
                    hits = {read: 1}
                else:  # pop and re-insert: the key moves to the end
                    hits[read] = hits.pop(read, 0) + 1
                continue
            if hits:
                policy.record_hits(hits)
                hits = None
            policy.get(read[0])
        if hits:
            policy.record_hits(hits)

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Hits are looked up without the lock; the misses take it once for the batch."""
        found: dict[str, Entry] = {}
        missed: list[tuple[str, Slot | None]] = []
        now = self._clock()
        for key in keys:
            slot = self._peek(key)
            if slot is not None and now < slot.expire_at:
                self._record_read(key)
                found[key] = _copied(slot.entry) if self._copy_on_read else slot.entry
            else:
                missed.append((key, slot))
        if missed:
            with self._lock:
                self._replay_reads()
                for key, slot in missed:
                    if slot is None:
                        self._policy.get(key)
                    elif self._policy.peek(key) is slot:
                        self._policy.pop(key)
        return found

    def set(self, key: str, entry: Entry) -> None:
        # set_many for one key, without the dict and the lists (a fill after every miss). The
        # slot is made before the lock is taken: the lock is held for the policy alone.
        slot = self._slot(entry)
        lock = self._lock
        # acquire/release rather than ``with``: on CPython 3.11 the with statement costs twice
        # as much as the two calls (its __exit__ takes a tuple of three Nones), once per fill.
        lock.acquire()
        try:
            if self._reads:  # eviction decisions see the latest reads
                self._replay_reads()
            if slot is not None:
                self._policy.put(key, slot)
            else:
                self._policy.pop(key)  # nothing to keep, and an older copy must go too
        finally:
            lock.release()

    def replace(self, key: str, entry: Entry) -> None:
        """:meth:`delete_many` of ``key`` then :meth:`set` of ``entry`` under one lock (the
        chain's write, ``Fence.write_alone``): the policy sees the drop and then a new key,
        as it sees the two calls. The old copy goes even if the new one cannot be made (its
        weight)."""
        try:
            slot = self._slot(entry)
        except BaseException:
            self.delete_many((key,))
            raise
        lock = self._lock
        lock.acquire()
        try:
            policy = self._policy
            policy.pop(key)  # the drop: the new entry enters as a new key
            if self._reads:  # eviction decisions see the latest reads
                self._replay_reads()
            if slot is not None:
                policy.put(key, slot)
        finally:
            lock.release()

    def _slot(self, entry: Entry) -> Slot | None:
        """The slot to keep ``entry`` in (a copy of it with ``copy_on_read``), or None when
        it expires here at once."""
        now = self._clock()
        if self._copy_on_read:
            entry = _copied(entry)
        expire_at = self._expire_at(entry, now)
        if expire_at > now:
            return Slot(entry, expire_at, self._sizeof(entry.value) if self._weighs else 0)
        return None

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        """Expiries and sizes are worked out first; the lock is taken once for the batch."""
        now = self._clock()
        offered: list[tuple[str, Slot]] = []
        expired: list[str] = []
        for key, given in entries.items():
            # With copy_on_read the caller keeps the loaded object and this tier its own.
            entry = _copied(given) if self._copy_on_read else given
            expire_at = self._expire_at(entry, now)
            if expire_at > now:
                offered.append((key, Slot(entry, expire_at, self._sizeof(entry.value))))
            else:
                expired.append(key)  # nothing to keep, and an older copy must go too
        with self._lock:
            self._replay_reads()  # eviction decisions see the latest reads
            for key in expired:
                self._policy.pop(key)
            if offered:
                self._policy.put_many(offered)

    def delete(self, key: str) -> None:
        with self._lock:
            self._policy.pop(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        # Every set drops the key here first (the fence's invalidation): acquire/release, as
        # in set.
        lock = self._lock
        lock.acquire()
        try:
            for key in keys:
                self._policy.pop(key)
        finally:
            lock.release()

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """The policy's ``n`` hottest keys with their rates (empty if it does not track them);
        read under the lock, since the policy's structures change on every miss."""
        with self._lock:
            return self._policy.hot_keys(n)

    def report(self) -> dict[str, int]:
        """Entries held and evictions so far, for ``stats()`` (:mod:`tiered_cache.reporting`)."""
        return {"entries": len(self._policy), "evictions": self._policy.evictions}

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix`` (a scan of this tier's keys)."""
        with self._lock:
            self._replay_reads()
            kept = self._policy.keys()  # a list: safe to pop from the policy while looping
            for key in kept:
                if key.startswith(prefix):
                    self._policy.pop(key)

    def clear(self) -> None:
        with self._lock:
            self._reads.clear()
            self._policy.clear()

    def close(self) -> None:
        self.clear()

    def __len__(self) -> int:
        return len(self._policy)

    def __contains__(self, key: object) -> bool:
        """True if ``key`` is held and not expired (does not count as an access)."""
        if not isinstance(key, str):
            return False
        with self._lock:
            slot = self._policy.peek(key)
        return slot is not None and self._clock() < slot.expire_at

    def _expire_at(self, entry: Entry, now: float) -> float:
        if self._ttl is None:
            return entry.hard_expiry
        ttl = self._ttl
        if self._jitter:
            ttl *= 1.0 - self._jitter * self._rng.random()
        # The entry's own float when it is the earlier (no new float object per slot).
        until = now + ttl
        hard = entry.hard_expiry
        return hard if hard <= until else until


def _copied(entry: Entry) -> Entry:
    """``entry`` with a deep copy of its value (``copy_on_read``)."""
    return entry.with_value(copy.deepcopy(entry.value))


def _zero_size(value: Any) -> int:
    return 0
