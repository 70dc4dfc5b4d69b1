"""The memory tier's entries, read buffer and lock: what :class:`~tiered_cache.memory.MemoryTier`
does with its policy, compiled with the core.

The tier is the face the chain and the adapters' contract know (a
:class:`~tiered_cache.tier.TierBase` subclass, interpreted: a compiled class cannot subclass an
interpreted one); it holds a :class:`MemoryCore` and hands the chain the core's own methods for
the calls of every miss and fill (``get_at``, ``peek``, ``set``, ``replace``), so that a miss
runs no Python frame of the tier's. This source is the reference (``TIERED_CORE_PURE=1``, or no
compiler); ``tests/test_compiled_core.py`` runs the same operations on both and compares them.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, final

from .errors import CodecError, caused
from .locks import Lock
from .slot import Slot
from .tier import MISSING, Entry, MissingType

if TYPE_CHECKING:
    from .memory import EvictionPolicy

__all__ = ["MISS_BUFFER_ROOM", "READ_BUFFER_MAX", "READ_BUFFER_SIZE", "Copied", "MemoryCore"]

#: Most recent reads kept for the eviction policy until the next write or miss replays them:
#: at least this many ...
READ_BUFFER_SIZE: Final = 128
#: ... and up to one per entry, at most this many. A run of hits longer than the buffer loses
#: its oldest hits, and a policy that does not see a kept key's hits takes it for cold: in a
#: loop of 1,100 keys at 1,000 entries (990 hits in a row) the main area's keys were counted
#: for their last 128 hits only, lost to candidates counted at every miss, and the churn cost
#: 1.1 points (88.83% with 128 reads kept, 89.94% with 1,024; PYTHONHASHSEED=0).
READ_BUFFER_MAX: Final = 4096
#: A miss is buffered (not replayed at once, under the lock) while the buffer holds fewer
#: reads than this: the rest of the buffer is room for the hits that may follow it before the
#: next write, so that it is not pushed out of the buffer before it is replayed.
MISS_BUFFER_ROOM: Final = READ_BUFFER_SIZE // 2

#: The miss sentinel as a static of this module (compiled: no lookup in another module's
#: globals per miss).
_MISSING: Final = MISSING


@final
class MemoryCore:
    """The memory tier's state and its operations on it; thread-safe.

    Hits are recorded in a read buffer without the lock and replayed into the policy before
    the next write or miss (Caffeine's read buffer): the hit path never waits for another
    thread. The buffer is bounded: under a burst of hits the oldest are dropped, which makes
    hit observation a sample of the most recent reads, never a growing cost. Misses go
    through the same buffer (see :meth:`get_at`), in order with the hits: a hit is buffered
    as its key, a miss as its key in a 1-tuple.

    Args: as :class:`~tiered_cache.memory.MemoryTier`'s; ``sizeof`` is None when values are
    not weighed (every slot weighs 0).
    """

    def __init__(
        self,
        policy: EvictionPolicy,
        *,
        max_entries: int,
        ttl: float | None,
        ttl_jitter: float,
        clock: Callable[[], float],
        sizeof: Callable[[Any], int] | None,
        rng: random.Random,
        copy_on_read: bool,
    ) -> None:
        self.policy = policy
        self._has_ttl = ttl is not None
        self._ttl: float = ttl if ttl is not None else 0.0
        self._jitter = ttl_jitter
        self._clock = clock
        self._sizeof = sizeof
        self._rng = rng
        self.copy_on_read = copy_on_read
        # librt's lock, taken with ``with`` (docs/testing.md, "acquire-then-try"): compiled,
        # mypyc makes the block a bare acquire and release; in the sources, no signal handler
        # runs between the acquire and the block, as it did after a call of acquire().
        self.lock = Lock()
        #: The policy's slot for a key without recording a read (its dict's ``get``).
        self.peek_slot: Callable[[str], Slot | None] = policy.peek
        # The policy's calls of every miss and fill, bound once: compiled, a call of a method
        # of the EvictionPolicy protocol looks the method up by name each time.
        self._observe: Callable[[str], Slot | None] = policy.get
        self._put: Callable[[str, Slot], bool] = policy.put
        room = min(max(READ_BUFFER_SIZE, max_entries), READ_BUFFER_MAX)
        self.reads: deque[str | tuple[str]] = deque(maxlen=room)
        #: Buffers a hit (the chain's plain-hit reader calls it too).
        self.record_read: Callable[[str], None] = self.reads.append

    def after_fork_in_child(self) -> None:
        """See :meth:`MemoryTier.after_fork_in_child
        <tiered_cache.memory.MemoryTier.after_fork_in_child>`."""
        # Taken to tell, not asked locked(): the lock (librt's, as CPython's) sets the flag
        # locked() reads only once the thread it was handed to runs again, and a fork in
        # between left it taken for good in the child while it said it was free (the child's
        # first write hung).
        if self.lock.acquire(blocking=False):
            self.lock.release()  # nobody held it: the tier stays as it was
            return
        self.lock = Lock()
        self.reads.clear()  # in place: the chain's hit reader appends to this deque
        self.policy.clear()

    # -- reads

    def get(self, key: str) -> Entry | MissingType:
        return self.get_at(key, self._clock())

    def get_at(self, key: str, now: float) -> Entry | MissingType:
        """The live entry for ``key`` at ``now``, its read buffered for the policy; or
        ``MISSING``."""
        slot = self.peek_slot(key)
        if slot is not None and now < slot.expire_at:
            self.reads.append(key)
            return _copied(slot) if self.copy_on_read else slot
        if slot is None:
            # The policy observes the miss (hot-key detection) when the buffer is replayed,
            # at the next write (the fill that usually follows) or locked miss: in the same
            # order with the hits as if it were counted now, without taking the lock now.
            if len(self.reads) < MISS_BUFFER_ROOM:
                self.reads.append((key,))
                return _MISSING
            with self.lock:
                self._replay_reads()
                self._observe(key)
            return _MISSING
        with self.lock:
            self._replay_reads()
            if self.policy.peek(key) is slot:
                self.policy.pop(key)  # expired
        return _MISSING

    def peek(self, key: str) -> Entry | MissingType:
        """The live entry for ``key`` without counting a read."""
        slot = self.peek_slot(key)
        if slot is not None and self._clock() < slot.expire_at:
            return _copied(slot) if self.copy_on_read else slot
        return _MISSING

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Hits are looked up without the lock; the misses take it once for the batch."""
        found: dict[str, Entry] = {}
        missed: list[tuple[str, Slot | None]] = []
        now = self._clock()
        for key in keys:
            slot = self.peek_slot(key)
            if slot is not None and now < slot.expire_at:
                self.reads.append(key)
                found[key] = _copied(slot) if self.copy_on_read else slot
            else:
                missed.append((key, slot))
        if missed:
            with self.lock:
                self._replay_reads()
                policy, observe = self.policy, self._observe
                for key, kept in missed:
                    if kept is None:
                        observe(key)
                    elif policy.peek(key) is kept:
                        policy.pop(key)
        return found

    def contains(self, key: str) -> bool:
        """True if ``key`` is held and not expired (does not count as an access)."""
        with self.lock:
            slot = self.policy.peek(key)
        return slot is not None and self._clock() < slot.expire_at

    def _replay_reads(self) -> None:
        # Called with the lock held; deque.popleft is atomic against concurrent appends.
        # Hits are handed over as counts per key, in the order of each key's last hit: a hot
        # key hit fifty times since the last replay costs the policy one update, not fifty.
        # A miss hands over the hits before it, then is observed itself.
        reads = self.reads
        if not reads:
            return
        policy = self.policy
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
            self._observe(read[0])
        if hits:
            policy.record_hits(hits)

    # -- writes

    def set(self, key: str, entry: Entry) -> None:
        # set_many for one key, without the dict and the lists (a fill after every miss). The
        # slot is made before the lock is taken: the lock is held for the policy alone.
        slot = self._slot(entry, self._clock())
        with self.lock:
            if self.reads:  # eviction decisions see the latest reads
                self._replay_reads()
            if slot is not None:
                self._put(key, slot)
            else:
                self.policy.pop(key)  # nothing to keep, and an older copy must go too

    def replace(self, key: str, entry: Entry) -> None:
        """:meth:`delete_many` of ``key`` then :meth:`set` of ``entry`` under one lock: the
        policy sees the drop and then a new key, as it sees the two calls. The old copy goes
        even if the new one cannot be made (its weight)."""
        try:
            slot = self._slot(entry, self._clock())
        except BaseException:
            self.delete_many((key,))
            raise
        with self.lock:
            policy = self.policy
            policy.pop(key)  # the drop: the new entry enters as a new key
            if self.reads:  # eviction decisions see the latest reads
                self._replay_reads()
            if slot is not None:
                policy.put(key, slot)

    def _slot(self, entry: Entry, now: float) -> Slot | None:
        """The slot to keep ``entry`` in (a copy of it with ``copy_on_read``), or None when
        it expires here at ``now`` already."""
        if self.copy_on_read:
            value = entry.value
            # A write's value comes copied by its check (MemoryTier.prepare_value): kept as
            # it is, the one copy a write makes; any other value is copied here.
            entry = entry.with_value(value.value) if type(value) is Copied else _copied(entry)
        expire_at = self._expire_at(entry, now)
        if expire_at > now:
            sizeof = self._sizeof
            return Slot(entry, expire_at, sizeof(entry.value) if sizeof is not None else 0)
        return None

    def _expire_at(self, entry: Entry, now: float) -> float:
        hard: float = entry.hard_expiry
        if not self._has_ttl:
            return hard
        ttl = self._ttl
        if self._jitter:
            ttl *= 1.0 - self._jitter * self._rng.random()
        until = now + ttl
        return hard if hard <= until else until

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        """Expiries and sizes are worked out first; the lock is taken once for the batch."""
        now = self._clock()
        offered: list[tuple[str, Slot]] = []
        expired: list[str] = []
        for key, given in entries.items():
            # With copy_on_read the caller keeps the loaded object and this tier its own.
            slot = self._slot(given, now)
            if slot is not None:
                offered.append((key, slot))
            else:
                expired.append(key)  # nothing to keep, and an older copy must go too
        with self.lock:
            self._replay_reads()  # eviction decisions see the latest reads
            for key in expired:
                self.policy.pop(key)
            if offered:
                self.policy.put_many(offered)

    def delete_many(self, keys: Sequence[str]) -> None:
        with self.lock:
            for key in keys:
                self.policy.pop(key)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix`` (a scan of the kept keys)."""
        with self.lock:
            self._replay_reads()
            kept = self.policy.keys()  # a list: safe to pop from the policy while looping
            for key in kept:
                if key.startswith(prefix):
                    self.policy.pop(key)

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """The policy's ``n`` hottest keys, read under the lock (its structures change on
        every miss), after the buffered reads: the hits since the last miss or write are
        the hot keys' own (a service whose reads all hit showed none)."""
        with self.lock:
            self._replay_reads()
            return self.policy.hot_keys(n)

    def clear(self) -> None:
        with self.lock:
            self.reads.clear()
            self.policy.clear()


@final
class Copied:
    """A write's value as a ``copy_on_read`` tier keeps it: the deep copy its check made
    (``MemoryTier.prepare_value``), which the write's fill hands back and the tier keeps
    without copying again."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _copied(entry: Entry) -> Entry:
    """``entry`` with a deep copy of its value (``copy_on_read``): see :func:`copied_value`."""
    return entry.with_value(copied_value(entry.value))


def copied_value(value: Any) -> Any:
    """A deep copy of ``value`` (``copy_on_read``); :class:`CodecError` for a value that
    cannot be copied (a lock, a generator): one this tier cannot hold, the caller's error as
    a value a codec cannot encode is, not the tier failing."""
    try:
        return copy.deepcopy(value)
    except Exception as exc:
        raise caused(
            CodecError(
                f"copy_on_read: a value of type {type(value).__name__} cannot be "
                f"deep-copied ({type(exc).__name__}: {exc})"
            ),
            exc,
        ) from exc
