"""The invalidation log: which copies of a batch read an invalidation may have overtaken."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tiered_cache import Entry, MemoryTier, TieredCache
from tiered_cache.bus import LocalBus
from tiered_cache.invalidation_log import InvalidationLog
from tiered_cache.testing import FakeClock


def test_nothing_since_the_mark_overtakes_nothing() -> None:
    log = InvalidationLog()
    log.record_keys(["a"])
    mark = log.mark()
    assert log.overtaken(mark, ["a", "b"]) == []


def test_keys_and_prefixes_named_since_the_mark() -> None:
    log = InvalidationLog()
    mark = log.mark()
    log.record_keys(["b"])
    log.record_prefixes(["user:42:"])
    assert log.overtaken(mark, ["a", "b", "user:42:tweets", "user:7:tweets"]) == [
        "b",
        "user:42:tweets",
    ]


def test_a_clear_overtakes_every_key() -> None:
    log = InvalidationLog()
    mark = log.mark()
    log.record_everything()
    assert log.overtaken(mark, ["a", "b"]) == ["a", "b"]


def test_a_gap_overtakes_every_key_in_memory_but_none_in_the_shared_tiers() -> None:
    """A gap (the bus dropped or came back) says this process may have missed messages about
    its own copies, nothing of Redis: asked about the shared tiers only, it overtakes nothing,
    while the keys and clears logged beside it still count."""
    log = InvalidationLog()
    mark = log.mark()
    log.record_gap()
    assert log.overtaken(mark, ["a", "b"]) == ["a", "b"]
    assert log.overtaken(mark, ["a", "b"], shared=True) == []
    log.record_keys(["b"])
    assert log.overtaken(mark, ["a", "b"], shared=True) == ["b"]
    log.record_everything()
    assert log.overtaken(mark, ["a", "b"], shared=True) == ["a", "b"]


def test_a_log_that_no_longer_reaches_back_overtakes_every_key_even_in_the_shared_tiers() -> None:
    log = InvalidationLog(size=1)
    mark = log.mark()
    log.record_gap()
    log.record_gap()  # the first fell out of the log: what came before it is unknown
    assert log.overtaken(mark, ["a"], shared=True) == ["a"]


def test_a_log_that_no_longer_reaches_back_overtakes_every_key() -> None:
    log = InvalidationLog(size=2)
    mark = log.mark()
    log.record_keys(["x"])
    log.record_keys(["y"])
    assert log.overtaken(mark, ["a", "x"]) == ["x"]  # two events: it still reaches back
    log = InvalidationLog(size=2)
    mark = log.mark()
    for key in ("x", "y", "z"):  # the first of these fell out of the log
        log.record_keys([key])
    assert log.overtaken(mark, ["a", "b"]) == ["a", "b"]


def test_a_writers_own_invalidation_overtakes_nothing_but_anothers_does() -> None:
    log = InvalidationLog()
    mark = log.mark()
    own = log.record_keys(["a"])
    assert log.overtaken(mark, ["a"], ignore=own) == []
    assert log.overtaken(mark, ["a"]) == ["a"]  # not the writer's: it counts
    log.record_keys(["a"])  # another writer's, after the own one
    assert log.overtaken(mark, ["a"], ignore=own) == ["a"]
    mark = log.mark()
    other = log.record_keys(["a"])
    own = log.record_keys(["b"])  # own is the last, but another came before it
    assert other == mark + 1
    assert log.overtaken(mark, ["a", "b"], ignore=own) == ["a"]
    log = InvalidationLog(size=1)
    mark = log.mark()
    log.record_keys(["x"])
    own = log.record_keys(["y"])  # the log reaches back to own only: every key
    assert log.overtaken(mark, ["a"], ignore=own) == ["a"]


class SharedTier(MemoryTier):
    """Stands for Redis; runs ``during_read`` inside each batch read."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(name="shared", clock=clock)
        self.local = False
        self.during_read: Callable[[], None] = lambda: None

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found = super().get_many(keys)
        self.during_read()  # after the read, before the chain copies it into memory
        return found


def test_get_many_drops_only_the_copies_an_invalidation_overtook(clock: FakeClock) -> None:
    shared = SharedTier(clock)
    bus = LocalBus()
    memory = MemoryTier(name="memory", clock=clock)
    reader = TieredCache([memory, shared], clock=clock, ttl=60, bus=bus)
    writer = TieredCache([MemoryTier(name="memory", clock=clock), shared], clock=clock, bus=bus)
    for key in ("a", "b", "c"):
        writer.set(key, f"old {key}")

    def another_process_writes_b() -> None:
        shared.during_read = lambda: None
        writer.set("b", "new b")  # Redis first, then the bus tells the reader

    shared.during_read = another_process_writes_b
    assert reader.get_many(["a", "b", "c"]) == {"a": "old a", "b": "old b", "c": "old c"}
    # The copy of "b" predates the write and is gone; those of "a" and "c" stay in memory.
    assert [key in memory for key in ("a", "b", "c")] == [True, False, True]
    assert reader.get("b") == "new b"


def test_a_mark_taken_while_an_invalidation_drops_its_copies_is_from_before_it() -> None:
    log = InvalidationLog()
    log.record_keys(["x"])
    first = log.record(["a"], (), pending=True)
    second = log.record(["b"], (), pending=True)
    mark = log.mark()  # both still dropping: a read now may find either's old copies
    assert mark == first - 1
    assert log.overtaken(mark, ["a", "b", "c"]) == ["a", "b"]
    log.done(first)
    assert log.mark() == second - 1
    log.done(second)
    assert log.mark() == second
    assert log.overtaken(log.mark(), ["a", "b"]) == []


def test_an_invalidation_recorded_without_pending_lets_marks_pass_it_at_once() -> None:
    """``pending`` is the fence's (its copies are dropped after the record): any other
    recorder's invalidation is over when recorded, and a mark taken after it is after it."""
    log = InvalidationLog()
    number = log.record(["a"], ["p:"])
    assert log.mark() == number
    everything = log.record_everything()
    assert log.mark() == everything == number + 1


def test_a_clear_still_dropping_its_copies_keeps_marks_before_it() -> None:
    log = InvalidationLog()
    log.record_keys(["x"])
    number = log.record_everything(pending=True)
    mark = log.mark()
    assert mark == number - 1
    assert log.overtaken(mark, ["a", "b"]) == ["a", "b"]
    log.done(number)
    assert log.mark() == number


class ClosedAsMarkLooks(set[int]):
    """The open invalidations, whose last one its thread closes (``done``) in the instant
    between mark()'s look at the set and its read of the set's least number."""

    def __bool__(self) -> bool:
        was_open = len(self) > 0
        self.clear()
        return was_open


def test_a_mark_taken_as_the_last_open_invalidation_closes_is_after_it() -> None:
    log = InvalidationLog()
    log.record_keys(["x"])
    number = log.record(["a"], (), pending=True)
    log._open = ClosedAsMarkLooks(log._open)
    assert log.mark() == number  # it closed: nothing is still dropping


def test_the_default_log_reaches_back_1024_invalidations() -> None:
    log = InvalidationLog()
    mark = log.mark()
    for _ in range(1024):
        log.record_keys(["x"])
    assert log.overtaken(mark, ["a", "x"]) == ["x"]
    log.record_keys(["x"])  # the first of them fell out of the log
    assert log.overtaken(mark, ["a", "x"]) == ["a", "x"]


def test_a_log_that_remembers_nothing_overtakes_every_key_but_for_a_writers_own() -> None:
    log = InvalidationLog(size=0)
    mark = log.mark()
    own = log.record_keys(["a"])
    assert log.overtaken(mark, ["a", "b"], ignore=own) == []  # nothing came but the own one
    assert log.overtaken(mark, ["b"]) == ["b"]  # not the writer's: it cannot tell the keys
    log.record_keys(["x"])
    assert log.overtaken(mark, ["b"], ignore=own) == ["b"]
    assert log.overtaken(log.mark(), ["b"]) == []
