"""An invalidation logs first and drops the in-process copies second, fastest tier first. A
read whose fence mark was taken between the two could still find the old value in a slower
in-process tier and copy it up into the faster one the drop had passed: judged by a mark later
than the invalidation's log entry, that copy was kept, and served after the invalidation
returned. Marks taken while an invalidation drops are now from before it, and so are marks
taken the moment it is numbered."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.compiled import compiled_core
from tiered_cache.invalidation_log import InvalidationLog
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.gates import Held, HeldDrop
from tiered_cache.testing.pure_core import on_the_pure_core
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import Entry, MissingType

TraceFunction = Callable[[FrameType, str, Any], Any]


def old_in_l2_only(l2: MemoryTier, clock: FakeClock) -> TieredCache:
    """A chain l1 -> ``l2`` -> a source: "k" read once ("old"), then dropped from l1, and
    the source changed to "new" (the write an invalidation announces)."""
    l1 = MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock)
    source = DictSource({"k": "old"})
    cache = TieredCache([l1, l2], source, clock=clock, protection=Protection.never_stale())
    assert cache.get("k") == "old"
    l1.clear()
    source.items["k"] = "new"
    return cache


def test_a_read_during_the_drop_does_not_copy_the_old_value_up_for_good(clock: FakeClock) -> None:
    held = Held()
    l2 = HeldDrop(held, name="l2", max_entries=100, ttl=600, clock=clock)
    cache = old_in_l2_only(l2, clock)
    held.armed = True
    invalidation = threading.Thread(target=lambda: cache.invalidate("k"))
    invalidation.start()
    assert held.inside.wait(10)  # logged, l1 dropped, l2 not yet
    cache.get("k")  # concurrent with the invalidation: either value is fine
    held.go.set()
    invalidation.join(10)
    assert cache.get("k") == "new"  # after it returned: never the old value


def test_a_read_during_a_clears_drop_does_not_copy_the_old_value_up_for_good(
    clock: FakeClock,
) -> None:
    """As for a key's invalidation: a clear drops l1, then l2; a read in between finds the
    old value in l2, and its copy into l1 must not outlive the clear."""
    held = Held()
    l2 = HeldDrop(held, name="l2", max_entries=100, ttl=600, clock=clock)
    cache = old_in_l2_only(l2, clock)
    held.armed = True
    clearing = threading.Thread(target=cache.clear)
    clearing.start()
    assert held.inside.wait(10)  # logged, l1 cleared, l2 not yet
    cache.get("k")  # concurrent with the clear: either value is fine
    held.go.set()
    clearing.join(10)
    assert not clearing.is_alive()
    assert cache.get("k") == "new"  # after it returned: never the old value


class HeldRead(MemoryTier):
    """A memory tier whose ``get`` has read its entry and waits at ``held`` before returning
    it (the reader is then between its read of this tier and its fill above)."""

    def __init__(self, held: Held, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held = held

    def get(self, key: str) -> Entry | MissingType:
        entry = super().get(key)
        self.held.hold()
        return entry


def paused_once_numbered(numbered: threading.Event, go: threading.Event) -> TraceFunction:
    """A trace function for the invalidating thread: inside ``InvalidationLog._record``, at
    the first line after the log's number moved on, it waits (``numbered`` set) until ``go``
    -- the instant between numbering an invalidation and the rest of its recording."""

    def tracer(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        if event != "call" or frame.f_code is not InvalidationLog._record.__code__:
            return None
        log = frame.f_locals["self"]
        start = log._sequence

        def lines(frame: FrameType, event: str, arg: object) -> TraceFunction:
            if event == "line" and not numbered.is_set() and log._sequence != start:
                numbered.set()
                assert go.wait(30)
            return lines

        return lines

    return tracer


def test_a_mark_taken_as_an_invalidation_is_numbered_is_from_before_it(clock: FakeClock) -> None:
    """The log's number moved on a moment before the invalidation was noted as still
    dropping; a mark taken in that moment was the new number, from after it. The read that
    took it found the old value in l2 (not dropped yet), waited, and filled it into l1 after
    the drop: kept, and served after invalidate() returned."""
    if compiled_core():
        on_the_pure_core(test_a_mark_taken_as_an_invalidation_is_numbered_is_from_before_it)
        return
    held = Held()
    l2 = HeldRead(held, name="l2", max_entries=100, ttl=600, clock=clock)
    cache = old_in_l2_only(l2, clock)
    numbered, go = threading.Event(), threading.Event()

    def invalidate() -> None:
        sys.settrace(paused_once_numbered(numbered, go))
        try:
            cache.invalidate("k")
        finally:
            sys.settrace(None)

    invalidation = threading.Thread(target=invalidate)
    invalidation.start()
    assert numbered.wait(30)  # the invalidation has its number; its recording is not done
    held.armed = True
    read = threading.Thread(target=lambda: cache.get("k"))
    read.start()  # marks now, reads "old" from l2, and waits there
    assert held.inside.wait(30)
    go.set()
    invalidation.join(30)  # l1 and l2 dropped: invalidate() returned
    assert not invalidation.is_alive()
    held.go.set()
    read.join(30)  # its fill of "old" into l1 comes after the drop
    assert cache.get("k") == "new"  # never the old value after invalidate() returned
