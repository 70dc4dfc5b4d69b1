"""Recent invalidations, so that a batch read can tell which of its copies one overtook.

``get_many`` copies what it read from the shared tiers into the in-process ones without taking
a flight per key. An invalidation that lands between its read and its copy would leave an old
copy in memory; so the batch notes where the log stood when it started and, once its copies
are made, drops those of the keys invalidated since. Only when the log no longer reaches back
that far (or a prefix or a clear came, which name no keys) are all its copies dropped.

A gap (this process's bus dropped, or a sender's number skipped) is logged as a clear of
memory alone: this process may have missed invalidations of its own copies, but a gap says
nothing of the shared tiers. :meth:`InvalidationLog.overtaken` counts it unless asked about
the shared tiers only (a fill that a lease ordered there: see ``Fence.fill_steps``).

Compiled with the core (``tools/build_core.py``): every miss takes a mark and asks twice
whether it was overtaken, and as C calls those are no Python frames. This source is the
reference (``TIERED_CORE_PURE=1``, or no compiler).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable

from .forking import restart_compiled_after_fork
from .locks import Lock

__all__ = ["InvalidationLog"]

#: One invalidation: its number, the keys it named (``None``: everything), the prefixes it
#: named, and whether it concerns memory alone (a gap).
_Event = tuple[int, Collection[str] | None, tuple[str, ...], bool]


class InvalidationLog:
    """The last ``size`` invalidations of a chain, numbered. Thread-safe."""

    def __init__(self, size: int = 1024) -> None:
        self._lock = Lock()  # librt's, taken with ``with``: see MemoryCore.__init__
        self._sequence = 0
        self._events: deque[_Event] = deque(maxlen=size)
        #: Invalidations recorded whose copies are still being dropped (see :meth:`done`).
        self._open: set[int] = set()
        self._fork = restart_compiled_after_fork(self)  # compiled: no weak reference to it

    def after_fork_in_child(self) -> None:
        """The parent's threads do not exist in a forked child: an invalidation one of them
        was dropping never ends here, and left open it would keep every mark the child takes
        from before it (a key invalidated in the child never cached again; after a clear,
        nothing). Its lock, if that thread held it, would stay held for ever."""
        self._lock = Lock()
        self._open = set()

    def mark(self) -> int:
        """Where the log stands now; pass it to :meth:`overtaken` later. While an
        invalidation is still dropping copies, the mark is from before it: a read now may
        still find a copy it has not dropped yet (in a slower in-process tier), and whatever
        that read fills must be judged as overtaken by it."""
        sequence = self._sequence  # read first: an invalidation opened after it is later
        if self._open:  # min's default: the last one closed meanwhile
            return min(sequence, min(self._open, default=sequence + 1) - 1)
        return sequence

    def record_keys(self, keys: Iterable[str]) -> int:
        """``keys`` were invalidated; returns the invalidation's number."""
        return self._record(frozenset(keys), ())

    def record_key(self, key: str) -> int:
        """``key`` was invalidated, its copies still to be dropped (``record`` of one key,
        pending)."""
        return self._record((key,), (), True)  # a tuple: one key needs no set made

    def record_prefixes(self, prefixes: Iterable[str]) -> int:
        """Every key starting with one of ``prefixes`` was invalidated."""
        return self._record(frozenset(), tuple(prefixes))

    def record(self, keys: Iterable[str], prefixes: Iterable[str], *, pending: bool = False) -> int:
        """``keys`` and every key starting with one of ``prefixes`` were invalidated.
        ``pending``: its copies are still to be dropped; marks stay before it until
        :meth:`done`."""
        return self._record(frozenset(keys), tuple(prefixes), pending)

    def record_everything(self, *, pending: bool = False) -> int:
        """Every key was invalidated (a clear)."""
        return self._record(None, (), pending)

    def record_gap(self, *, pending: bool = False) -> int:
        """This process may have missed invalidations (its bus dropped or came back, or a
        sender's number skipped): every copy in memory is suspect, but nothing is said of the
        shared tiers (see :meth:`overtaken`'s ``shared``)."""
        return self._record(None, (), pending, True)

    def _record(
        self,
        keys: Collection[str] | None,
        prefixes: tuple[str, ...],
        pending: bool = False,
        gap: bool = False,
    ) -> int:
        with self._lock:
            # The number goes out last: mark() reads it without the lock, and a mark that
            # sees it must see the invalidation open (and overtaken() its event) already.
            number = self._sequence + 1
            if pending:
                self._open.add(number)
            self._events.append((number, keys, prefixes, gap))
            self._sequence = number
            return number

    def done(self, number: int) -> None:
        """Invalidation ``number`` has dropped every copy it drops: marks may pass it."""
        # No lock: one C call on a set of ints, atomic under the GIL, as mark's reads of the
        # set are (every set closes an invalidation).
        self._open.discard(number)

    def overtaken(
        self, mark: int, keys: Collection[str], ignore: int | None = None, shared: bool = False
    ) -> list[str]:
        """Those of ``keys`` that an invalidation recorded after ``mark`` (other than number
        ``ignore``: a writer's own) may have overtaken. ``shared``: only the invalidations
        that concern the shared tiers count, not a gap (:meth:`record_gap`), which concerns
        memory alone."""
        sequence = self._sequence
        if sequence == mark or (ignore is not None and sequence == ignore == mark + 1):
            # One int read: nothing came since the mark, or only the writer's own
            # invalidation (numbers are consecutive). The common cases take no lock.
            return []
        with self._lock:
            first = self._events[0][0] if self._events else self._sequence + 1
            if first > mark + 1:
                return list(keys)  # the log no longer reaches back to the mark
            # Numbers are consecutive: the events after the mark are the last ones.
            events = []
            for event in reversed(self._events):
                if event[0] <= mark:
                    break
                events.append(event)
        named: set[str] = set()
        prefixes: list[str] = []
        for number, invalidated, invalidated_prefixes, gap in events:
            if number == ignore or (gap and shared):
                continue
            if invalidated is None:
                return list(keys)
            named.update(invalidated)
            prefixes.extend(invalidated_prefixes)
        starts = tuple(prefixes)
        return [key for key in keys if key in named or (starts and key.startswith(starts))]
