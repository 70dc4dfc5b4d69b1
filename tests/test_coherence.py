"""Coherence between chains: the write path, the bus, gaps, outages and prefix invalidation.

Two chains in one process stand for two processes: each has its own memory tier, both share a
second tier (a memory tier marked shared, standing for Redis) and a source, and a LocalBus.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from tiered_cache import MISSING, Entry, MemoryTier, TieredCache
from tiered_cache.bus import BusListener, Invalidation, LocalBus
from tiered_cache.coherence import BusLink
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.polling import until
from tiered_cache.testing.sources import DictSource


class SharedTier(MemoryTier):
    """A memory tier shared by both chains: it stands for Redis in these tests."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(name="shared", max_entries=1000, clock=clock)
        self.local = False


class Fleet:
    def __init__(
        self,
        clock: FakeClock,
        write_policy: str = "through",
        source: bool = True,
        bound: float = 1.0,
    ):
        self.clock = clock
        self.bound = bound
        self.bus = LocalBus()
        self.shared = SharedTier(clock)
        self.source = DictSource() if source else None
        self.a = self.chain(write_policy)
        self.b = self.chain(write_policy)

    def chain(self, write_policy: str) -> TieredCache:
        return TieredCache(
            [MemoryTier(name="l1", clock=self.clock), self.shared],
            self.source,
            clock=self.clock,
            protection=Protection.never_stale(),
            bus=self.bus,
            max_stale_when_disconnected=self.bound,
            write_policy=write_policy,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("policy", ["through", "around"])
def test_a_write_in_one_process_reaches_the_others_memory(clock: FakeClock, policy: str) -> None:
    fleet = Fleet(clock, policy)
    assert fleet.source is not None
    fleet.source.items["t:1"] = "old"
    assert fleet.a.get("t:1") == "old"
    assert fleet.b.get("t:1") == "old"  # now in b's memory too
    fleet.a.set("t:1", "new")
    assert fleet.source.items["t:1"] == "new"
    assert fleet.b.get("t:1") == "new"
    assert fleet.a.get("t:1") == "new"
    assert fleet.b.stats()["bus_received"] == 1
    if policy == "around":
        assert fleet.shared.get("t:1") is not MISSING  # re-read after the write
    fleet.b.invalidate("t:1")
    fleet.source.items["t:1"] = "newer"
    assert fleet.a.get("t:1") == "newer"


def test_without_a_source_set_updates_the_tiers_and_tells_the_others(clock: FakeClock) -> None:
    fleet = Fleet(clock, source=False)
    fleet.a.get("k", lambda: "v1")
    assert fleet.b.get("k", lambda: "unused") == "v1"
    fleet.a.set("k", "v2")
    assert fleet.b.get("k", lambda: "unused") == "v2"


def test_a_failed_source_write_changes_nothing_anywhere(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    assert fleet.source is not None
    fleet.source.items["k"] = "old"
    fleet.b.get("k")

    def refuse(key: str, value: Any) -> None:
        raise RuntimeError("conditional check failed")

    fleet.source.store = refuse  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        fleet.a.set("k", "new")
    assert fleet.b.get("k") == "old"
    assert fleet.b.stats()["bus_received"] == 0


def test_own_messages_are_ignored(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    fleet.a.set("k", "v")
    assert fleet.a.stats()["bus_received"] == 0
    assert fleet.a.stats()["bus_sent"] == 1
    assert fleet.a.tiers[0].get("k") is not MISSING  # its own fresh copy stays


def test_a_gap_in_a_senders_numbers_clears_memory(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    assert fleet.source is not None
    fleet.source.items.update({"x": 1, "y": 2})
    fleet.b.get("x")
    fleet.b.get("y")
    fleet.bus.publish(Invalidation("other", 1, keys=("x",)))
    assert fleet.b.tiers[0].get("y") is not MISSING
    fleet.bus.publish(Invalidation("other", 3, keys=("nothing",)))  # 2 was lost
    assert fleet.b.tiers[0].get("y") is MISSING
    assert fleet.b.stats()["bus_gaps"] == 1


def read_then_lose_the_bus(fleet: Fleet) -> BusLink:
    """b reads "k" ("old") into memory, then its bus goes down: memory is cleared."""
    assert fleet.source is not None
    fleet.source.items["k"] = "old"
    fleet.b.get("k")
    link = fleet.b._bus_link
    assert link is not None
    link.on_disconnect()
    assert fleet.b.stats()["bus"] == "down"
    assert fleet.b.tiers[0].get("k") is MISSING  # cleared on the way down
    return link


def test_while_the_bus_is_down_memory_is_bypassed_when_no_staleness_is_allowed(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock, bound=0)
    link = read_then_lose_the_bus(fleet)
    # a write elsewhere that b cannot hear about: b still reads the shared tier, never memory
    fleet.shared.set("k", Entry("new", clock()))
    assert fleet.b.get("k") == "new"
    assert fleet.b.tiers[0].get("k") is MISSING  # nothing copied into memory meanwhile
    link.on_reconnect()
    assert fleet.b.get("k") == "new"
    assert fleet.b.tiers[0].get("k") is not MISSING
    assert fleet.b.stats()["bus"] == "connected"


def test_while_the_bus_is_down_memory_keeps_fills_for_the_bound_only(clock: FakeClock) -> None:
    fleet = Fleet(clock, bound=1.0)
    link = read_then_lose_the_bus(fleet)
    assert fleet.b.get("k") == "old"  # from the shared tier, copied into memory for 1 s
    # a write elsewhere that b cannot hear about: b serves its copy for the bound, no longer
    fleet.shared.set("k", Entry("new", clock()))
    assert fleet.b.get("k") == "old"
    clock.advance(1.0)
    assert fleet.b.get("k") == "new"
    stats = fleet.b.stats()
    assert (stats["bus_down_served"], stats["bus_down_bypasses"]) == (1, 2)
    link.on_reconnect()
    assert fleet.b.stats()["bus"] == "connected"


def test_invalidate_prefix_everywhere(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    assert fleet.source is not None
    fleet.source.items.update({"user:42:name": "ann", "user:42:bio": "hi", "user:7:name": "bo"})
    for key in fleet.source.items:
        fleet.b.get(key)
    fleet.a.invalidate_prefix("user:42:")
    assert fleet.b.tiers[0].get("user:42:name") is MISSING
    assert fleet.shared.get("user:42:bio") is MISSING
    assert fleet.b.tiers[0].get("user:7:name") is not MISSING
    with pytest.raises(ValueError):
        fleet.a.invalidate_prefix("")


def test_an_invalidation_while_copying_up_from_the_shared_tier_wins(clock: FakeClock) -> None:
    """b reads the old value from the shared tier; before b copies it into its memory, a
    writes and the bus tells b. b must not keep the old copy."""
    fleet = Fleet(clock)
    assert fleet.source is not None
    fleet.source.items["k"] = "old"
    fleet.a.get("k")  # the old value is in the shared tier
    original_get = fleet.shared.get

    def get_then_write_elsewhere(key: str) -> Any:
        entry = original_get(key)
        fleet.a.set("k", "new")  # lands between b's read and b's copy into memory
        return entry

    fleet.shared.get = get_then_write_elsewhere  # type: ignore[method-assign]
    assert fleet.b.get("k") == "old"  # b answers with what it read, before the write finished
    fleet.shared.get = original_get  # type: ignore[method-assign]
    assert fleet.b.tiers[0].get("k") is MISSING or fleet.b.get("k") == "new"
    assert fleet.b.get("k") == "new"


def test_get_many_drops_memory_copies_when_an_invalidation_came_meanwhile(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock)
    assert fleet.source is not None
    fleet.source.items.update({"a": 1, "b": 2})
    fleet.a.get_many(["a", "b"])
    original = fleet.shared.get_many

    def read_then_write(keys: Sequence[str]) -> dict[str, Entry]:
        found = original(keys)
        fleet.a.set("a", 10)
        return found

    fleet.shared.get_many = read_then_write  # type: ignore[method-assign]
    fleet.b.get_many(["a", "b"])
    fleet.shared.get_many = original  # type: ignore[method-assign]
    assert fleet.b.get("a") == 10


class HeldFirstPublish:
    """A bus whose next publish is held until another publish overtakes it, or until half a
    second after the other writer wrote the source: two threads announcing at once, the one
    that took the lower number reaching Redis last (unless numbering and publishing are one
    step, when the other waits for it)."""

    def __init__(self, bus: LocalBus) -> None:
        self._bus = bus
        self.hold = False
        self.other_wrote = threading.Event()
        self._overtaken = threading.Event()

    def publish(self, message: Invalidation) -> None:
        if self.hold:
            self.hold = False
            self.other_wrote.wait(timeout=5.0)
            self._overtaken.wait(timeout=0.5)
        else:
            self._overtaken.set()
        self._bus.publish(message)

    def subscribe(self, listener: BusListener) -> None:
        self._bus.subscribe(listener)

    def close(self) -> None:
        self._bus.close()


class NotifyingSource(DictSource):
    def __init__(self, key: str, wrote: threading.Event) -> None:
        super().__init__()
        self._key = key
        self._wrote = wrote

    def store(self, key: str, value: Any) -> None:
        super().store(key, value)
        if key == self._key:
            self._wrote.set()


def test_two_threads_announcing_at_once_are_not_taken_for_a_gap(clock: FakeClock) -> None:
    """Numbers are taken and published in one step: a receiver never sees a sender's numbers
    out of order, which it would take for a lost message and clear its memory for."""
    local = LocalBus()
    bus = HeldFirstPublish(local)
    source = NotifyingSource("k1", bus.other_wrote)
    shared = SharedTier(clock)
    sender, receiver = (
        TieredCache(
            [MemoryTier(name="l1", clock=clock), shared],
            source,
            clock=clock,
            protection=Protection.never_stale(),
            bus=bus if n == 0 else local,
        )
        for n in range(2)
    )
    sender.set("first", 1)  # the receiver has now seen this sender's number 1
    bus.hold = True
    writers = [threading.Thread(target=sender.set, args=(f"k{n}", n)) for n in range(2)]
    writers[0].start()
    until(lambda: not bus.hold, "the first writer inside its publish")
    writers[1].start()
    for writer in writers:
        writer.join(timeout=10)
    assert receiver.stats()["bus_received"] == 3
    assert receiver.stats()["bus_gaps"] == 0
