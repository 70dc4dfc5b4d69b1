"""clear(), invalidate_prefix() and the bus going down and up, as other processes see them.

Two chains in one process stand for two processes: each has its own memory tier, both share a
memory tier marked shared (standing for Redis), a source and a bus. The bus here can be cut
(its listeners hear the disconnect, as from a real transport) and can fail to publish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import pytest

from tiered_cache import MISSING, Entry, InvalidationIncomplete, MemoryTier, TieredCache
from tiered_cache.bus import Invalidation, LocalBus
from tiered_cache.fence import Fence
from tiered_cache.metrics import CacheMetrics
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.buses import CuttableBus
from tiered_cache.testing.sources import DictSource


class SharedTier(MemoryTier):
    """A memory tier both chains use: it stands for Redis."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(name="shared", max_entries=1000, clock=clock)
        self.local = False


class FailingShared(SharedTier):
    """A shared tier whose clear fails (fault injection)."""

    def clear(self) -> None:
        raise RuntimeError("shared tier down")


class FailingDeletes(SharedTier):
    """A shared tier whose deletes fail (fault injection)."""

    def delete_many(self, keys: Sequence[str]) -> None:
        raise RuntimeError("shared tier down")


class InvalidatedWhileWriting(SharedTier):
    """A shared tier during whose write of "k" a writer invalidates "k" (after the fence's
    first check, before its second)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.invalidate: Callable[[str], None] | None = None

    def set(self, key: str, entry: Entry) -> None:
        super().set(key, entry)
        self._written(key)

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        super().set_many(entries)
        for key in entries:
            self._written(key)

    def _written(self, key: str) -> None:
        if key == "k" and self.invalidate is not None:
            invalidate, self.invalidate = self.invalidate, None
            invalidate("k")


class Fleet:
    def __init__(self, clock: FakeClock, *, bound: float = 1.0, shared: SharedTier | None = None):
        self.clock = clock
        self.bus = CuttableBus()
        self.shared = shared if shared is not None else SharedTier(clock)
        self.source = DictSource()
        self.bound = bound
        self.a = self.chain()
        self.b = self.chain()

    def chain(self) -> TieredCache:
        return TieredCache(
            [MemoryTier(name="l1", ttl=60, clock=self.clock), self.shared],
            self.source,
            clock=self.clock,
            ttl=30,
            protection=Protection.never_stale(),
            bus=self.bus,
            max_stale_when_disconnected=self.bound,
        )


def in_memory(cache: TieredCache, key: str) -> bool:
    return cache.tiers[0].get(key) is not MISSING


# -- clear()


def test_clear_empties_this_process_the_shared_tier_and_the_others_memory(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock)
    fleet.source.items.update({"x": 1, "y": 2})
    for cache in (fleet.a, fleet.b):
        cache.get_many(["x", "y"])
    fleet.source.items.update({"x": 10, "y": 20})
    fleet.a.clear()
    assert not in_memory(fleet.a, "x") and not in_memory(fleet.a, "y")
    assert fleet.shared.get("x") is MISSING
    assert not in_memory(fleet.b, "x") and not in_memory(fleet.b, "y")
    assert (fleet.a.get("x"), fleet.b.get("y")) == (10, 20)
    assert [message.clear for message in fleet.bus.heard] == [True]


def test_clear_strict_with_everything_working_raises_nothing(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    fleet.source.items["x"] = 1
    fleet.b.get("x")
    fleet.a.clear(strict=True)
    assert not in_memory(fleet.b, "x")


def test_clear_strict_names_the_bus_and_the_tier_it_did_not_reach(clock: FakeClock) -> None:
    fleet = Fleet(clock, shared=FailingShared(clock))
    fleet.bus.failing = True
    with pytest.raises(InvalidationIncomplete) as raised:
        fleet.a.clear(strict=True)
    assert str(raised.value) == (
        "clearing did not reach tier 'shared' (RuntimeError: shared tier down), "
        "the invalidation bus"
    )
    stats = fleet.a.stats()
    assert (stats["bus_publish_errors"], stats["tiers"][1]["errors"]) == (1, 1)


def test_clear_not_strict_logs_and_counts_a_failed_bus_but_does_not_raise(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock)
    fleet.source.items["x"] = 1
    fleet.a.get("x")
    fleet.bus.failing = True
    fleet.a.clear()
    assert not in_memory(fleet.a, "x")
    assert fleet.a.stats()["bus_publish_errors"] == 1


def test_invalidate_many_strict_names_the_bus_it_did_not_reach(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    fleet.bus.failing = True
    fleet.a.invalidate_many(["x"])  # not strict: logged and counted only
    with pytest.raises(InvalidationIncomplete, match=r"^invalidating 2 key\(s\) did not reach "):
        fleet.a.invalidate_many(["x", "y", "x"], strict=True)
    stats = fleet.a.stats()  # the second one skipped: the publish breaker opened on the first
    assert (stats["bus_publish_errors"], stats["bus_publish_skipped"]) == (1, 1)


def test_invalidate_many_strict_names_the_tier_and_the_bus_it_did_not_reach(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock, shared=FailingDeletes(clock))
    fleet.bus.failing = True
    with pytest.raises(InvalidationIncomplete) as raised:
        fleet.a.invalidate_many(["x"], strict=True)
    assert str(raised.value) == (
        "invalidating 1 key(s) did not reach tier 'shared' (RuntimeError: shared tier down), "
        "the invalidation bus"
    )


def test_invalidate_many_tells_the_others_the_keys_only(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    fleet.source.items.update({"x": 1, "y": 2})
    fleet.b.get_many(["x", "y"])
    fleet.a.invalidate_many(["x"])
    assert [(message.keys, message.clear) for message in fleet.bus.heard] == [(("x",), False)]
    assert not in_memory(fleet.b, "x") and in_memory(fleet.b, "y")


def test_a_write_around_with_the_bus_down_does_not_raise(clock: FakeClock) -> None:
    """Write-around invalidates after writing the source; a bus it cannot reach is logged
    and counted, as for invalidate(): the write itself succeeded."""
    bus = CuttableBus()
    source = DictSource({"x": 1})
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), SharedTier(clock)],
        source,
        clock=clock,
        protection=Protection.never_stale(),
        bus=bus,
        write_policy="around",
    )
    assert cache.get("x") == 1
    bus.failing = True
    cache.set("x", 2)
    cache.set_many({"x": 3})
    assert cache.get("x") == 3
    stats = cache.stats()  # the second one skipped: the publish breaker opened on the first
    assert (stats["bus_publish_errors"], stats["bus_publish_skipped"]) == (1, 1)


def test_a_get_many_joins_a_batch_that_read_after_the_keys_last_invalidation(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock)
    fleet.a.invalidate("k")  # before the batch below: it does not concern what it reads
    loading = threading.Event()
    release = threading.Event()
    reads: list[list[str]] = []
    results: dict[str, object] = {}

    def slow_read(keys: Sequence[str]) -> dict[str, str]:
        reads.append(list(keys))
        loading.set()
        release.wait(10)
        return dict.fromkeys(keys, "v")

    def read(name: str) -> None:
        results[name] = fleet.a.get_many(["k"], slow_read)

    first = threading.Thread(target=read, args=("first",))
    first.start()
    assert loading.wait(10)
    second = threading.Thread(target=read, args=("second",))
    second.start()
    flights = fleet.a._loader.flights
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(reads) < 2:
        flight = flights.in_flight("k")
        if flight is not None and flight.waiters > 0:
            break  # the second batch joined the first one's flight
        time.sleep(0.005)
    release.set()
    first.join(10)
    second.join(10)
    assert results == {"first": {"k": "v"}, "second": {"k": "v"}}
    assert reads == [["k"]]


def test_an_invalidation_during_the_fill_undoes_it_and_is_counted(clock: FakeClock) -> None:
    shared = InvalidatedWhileWriting(clock)
    memory = MemoryTier(name="l1", clock=clock)
    cache = TieredCache(
        [memory, shared], DictSource({"k": "old"}), clock=clock, protection=Protection.never_stale()
    )
    shared.invalidate = cache.invalidate
    assert cache.get("k") == "old"  # its caller is served what it read
    assert memory.get("k") is MISSING and shared.get("k") is MISSING
    assert cache.stats()["fills_refused"] == 1


def test_an_invalidation_during_a_batch_fill_undoes_that_key_and_keeps_the_others(
    clock: FakeClock,
) -> None:
    shared = InvalidatedWhileWriting(clock)
    memory = MemoryTier(name="l1", clock=clock)
    cache = TieredCache(
        [memory, shared],
        DictSource({"k": "old", "j": "other"}),
        clock=clock,
        protection=Protection.never_stale(),
    )
    shared.invalidate = cache.invalidate
    assert cache.get_many(["k", "j"]) == {"k": "old", "j": "other"}  # served what it read
    assert memory.get("k") is MISSING and shared.get("k") is MISSING
    assert memory.get("j") is not MISSING and shared.get("j") is not MISSING
    assert cache.stats()["fills_refused"] == 1


# -- invalidate_prefix()


def test_an_empty_prefix_is_refused_with_a_pointer_to_clear(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    with pytest.raises(ValueError, match=r"^an empty prefix would drop everything: use clear\(\)$"):
        fleet.a.invalidate_prefix("")
    assert fleet.bus.heard == []


def test_a_prefix_invalidation_tells_the_others_when_it_happened(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    clock.advance(12.5)
    fleet.a.invalidate_prefix("user:42:")
    (message,) = fleet.bus.heard
    assert (message.prefixes, message.at) == (("user:42:",), clock())


# -- the bus going down and coming back


def test_after_the_bus_is_back_memory_drops_what_it_kept_during_the_outage(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock, bound=5.0)
    fleet.source.items["k"] = "old"
    fleet.bus.cut()
    assert fleet.b.get("k") == "old"  # kept in memory for 5 s at most
    fleet.bus.restore()
    # a write b could not hear about while its bus was down
    fleet.shared.set("k", Entry("new", clock()))
    assert fleet.b.get("k") == "new"


def test_after_the_bus_is_back_memory_keeps_entries_for_its_ttl_and_counts_hits(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock, bound=1.0)
    fleet.source.items["k"] = "v"
    fleet.bus.cut()
    fleet.bus.restore()
    assert fleet.b.get("k") == "v"
    (entry,) = fleet.b.lookup_many(["k"]).values()
    assert entry.soft_expiry == clock() + 30  # the chain's TTL, not the outage bound
    clock.advance(2.0)
    assert fleet.b.get("k") == "v"
    stats = fleet.b.stats()
    assert [tier["hits"] for tier in stats["tiers"]] == [2, 0]  # lookup_many's hit, then get's
    assert (stats.get("bus_down_served", 0), stats.get("bus_down_bypasses", 0)) == (0, 0)


def test_while_the_bus_is_down_a_fill_into_memory_is_fresh_for_the_bound_only(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock, bound=1.0)
    fleet.source.items["k"] = "v"
    fleet.bus.cut()
    assert fleet.b.get("k") == "v"
    (entry,) = fleet.b.lookup_many(["k"]).values()
    assert (entry.soft_expiry, entry.hard_expiry) == (clock() + 1.0, clock() + 1.0)


def test_a_chain_whose_first_tier_is_shared_keeps_counting_its_hits_while_the_bus_is_down(
    clock: FakeClock,
) -> None:
    bus = CuttableBus()
    shared = SharedTier(clock)
    cache = TieredCache(
        [shared], DictSource({"k": "v"}), clock=clock, protection=Protection.never_stale(), bus=bus
    )
    cache.get("k")
    bus.cut()
    assert cache.get("k") == "v"
    assert cache.get("k") == "v"
    assert cache.stats()["tiers"][0]["hits"] == 2
    assert cache.stats()["bus"] == "down"


# -- get_many while the bus is down


def test_get_many_while_the_bus_is_down_counts_what_memory_served(clock: FakeClock) -> None:
    fleet = Fleet(clock, bound=1.0)
    fleet.source.items.update({"x": 1, "y": 2})
    fleet.bus.cut()
    assert fleet.b.get_many(["x", "y"]) == {"x": 1, "y": 2}  # filled into memory for 1 s
    assert fleet.b.stats().get("bus_down_served", 0) == 0
    assert fleet.b.get_many(["x", "y"]) == {"x": 1, "y": 2}
    assert fleet.b.stats()["bus_down_served"] == 2
    fleet.bus.restore()
    fleet.b.get_many(["x", "y"])
    fleet.b.get_many(["x", "y"])
    assert fleet.b.stats()["bus_down_served"] == 2  # counted while the bus was down only


def test_get_many_while_the_bus_is_down_and_memory_bypassed_reads_the_shared_tier(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock, bound=0)
    fleet.source.items.update({"x": 1, "y": 2})
    fleet.a.get_many(["x", "y"])  # now in the shared tier
    fleet.bus.cut()
    assert fleet.b.get_many(["x", "y"]) == {"x": 1, "y": 2}
    assert fleet.source.batches == [["x", "y"]]  # a's load only: b read the shared tier
    assert fleet.b.stats()["tiers"][1]["hits"] == 2


def test_a_get_many_after_an_invalidation_does_not_join_a_batch_from_before_it(
    clock: FakeClock,
) -> None:
    fleet = Fleet(clock)
    loading = threading.Event()
    release = threading.Event()
    results: dict[str, object] = {}

    def old_read(keys: Sequence[str]) -> dict[str, str]:
        loading.set()
        release.wait(10)
        return dict.fromkeys(keys, "old")

    def first() -> None:
        results["first"] = fleet.a.get_many(["k"], old_read)

    thread = threading.Thread(target=first)
    thread.start()
    assert loading.wait(10)
    fleet.a.invalidate("k")  # the source changed while the first batch read it
    reader = threading.Thread(
        target=lambda: results.update(second=fleet.a.get_many(["k"], lambda keys: {"k": "new"}))
    )
    reader.start()
    deadline = time.monotonic() + 10
    while (flight := fleet.a._loader.flights.in_flight("k")) is None or flight.waiters < 1:
        assert time.monotonic() < deadline, "the second batch never waited for the first"
        time.sleep(0.001)
    assert "second" not in results  # it waits for the first batch to end, then loads itself
    release.set()
    thread.join(10)
    reader.join(10)
    assert results == {"first": {"k": "old"}, "second": {"k": "new"}}


def test_invalidate_many_strict_with_everything_working_raises_nothing(clock: FakeClock) -> None:
    fleet = Fleet(clock)
    fleet.source.items["x"] = 1
    fleet.b.get("x")
    fleet.a.invalidate_many(["x"], strict=True)
    assert not in_memory(fleet.b, "x")


# -- what the fence refuses, and what it leaves alone


def load_during(cache: TieredCache, key: str, change: Callable[[], None]) -> object:
    """``cache.get(key)`` whose load reads "old", while ``change`` runs (on another thread)."""
    loading = threading.Event()
    release = threading.Event()
    result: list[object] = []

    def slow() -> str:
        loading.set()
        release.wait(10)
        return "old"

    reader = threading.Thread(target=lambda: result.append(cache.get(key, slow)))
    reader.start()
    assert loading.wait(10)
    change()
    release.set()
    reader.join(10)
    return result[0]


def test_clear_during_a_load_keeps_what_it_read_out_of_every_tier(clock: FakeClock) -> None:
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), SharedTier(clock)],
        clock=clock,
        protection=Protection.never_stale(),
    )
    assert load_during(cache, "k", cache.clear) == "old"
    stats = cache.stats()
    assert stats["fills_refused"] == 1
    assert [tier["fills"] for tier in stats["tiers"]] == [0, 0]  # refused before writing
    assert cache.get("k", lambda: "new") == "new"


def test_a_batch_refused_by_a_clear_counts_each_key_and_writes_no_tier(clock: FakeClock) -> None:
    """Checked before the write, not only undone after it: no other reader of the shared
    tier can see the refused values, even for a moment."""
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), SharedTier(clock)],
        clock=clock,
        protection=Protection.never_stale(),
    )
    loading = threading.Event()
    release = threading.Event()

    def slow(keys: Sequence[str]) -> dict[str, str]:
        loading.set()
        release.wait(10)
        return dict.fromkeys(keys, "old")

    reader = threading.Thread(target=lambda: cache.get_many(["a", "b"], slow))
    reader.start()
    assert loading.wait(10)
    cache.clear()
    release.set()
    reader.join(10)
    stats = cache.stats()
    assert stats["fills_refused"] == 2
    assert [tier["fills"] for tier in stats["tiers"]] == [0, 0]  # refused before writing


def test_an_invalidation_of_another_key_lets_a_load_fill(clock: FakeClock) -> None:
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock)], clock=clock, protection=Protection.never_stale()
    )
    assert load_during(cache, "k", lambda: cache.invalidate("other")) == "old"
    assert cache.get("k", lambda: "new") == "old"
    assert cache.stats()["fills_refused"] == 0


def test_clear_empties_every_in_process_tier(clock: FakeClock) -> None:
    tiers = [MemoryTier(name=f"l{n}", clock=clock) for n in (1, 2)]
    cache = TieredCache(tiers, DictSource({"k": "v"}), clock=clock)
    cache.get("k")
    cache.clear()
    assert [len(tier) for tier in tiers] == [0, 0]


# -- the publish breaker: a bus that fails is not tried again during the cool-down


def test_after_a_failed_publish_announcements_are_skipped_and_the_others_see_the_gap(
    clock: FakeClock,
) -> None:
    """One failed publish opens the bus's breaker: the writes during its cool-down return
    without trying the bus (each would otherwise wait out the bus's timeout in turn, behind
    the lock that orders the announcements) and leave their numbers unused. The first
    announcement after the cool-down is the probe; the others see the gap and clear."""
    fleet = Fleet(clock)
    fleet.source.items.update({"x": 1, "y": 1})
    fleet.a.invalidate("warm")  # b has heard a's number 1
    assert (fleet.b.get("x"), fleet.b.get("y")) == (1, 1)  # in b's memory
    fleet.bus.failing = True
    fleet.a.set("x", 2)  # tried: fails, opens the breaker
    assert fleet.bus.attempts == 2
    fleet.bus.failing = False  # the bus is back, but nobody has tried it
    fleet.a.set("y", 2)
    fleet.a.invalidate_many(["x", "y"])
    fleet.a.clear()
    assert fleet.bus.attempts == 2  # three announcements, none tried
    stats = fleet.a.stats()
    assert (stats["bus_sent"], stats["bus_publish_errors"], stats["bus_publish_skipped"]) == (
        1,
        1,
        3,
    )
    fleet.source.items.update({"x": 3, "y": 3})  # a write that bypasses the cache
    assert (fleet.b.get("x"), fleet.b.get("y")) == (1, 1)  # b heard nothing yet
    clock.advance(1.0)  # bus.breaker.cool_down
    fleet.a.invalidate("z")  # the probe: number 6, after 1
    assert fleet.bus.attempts == 3
    assert [message.seq for message in fleet.bus.heard] == [1, 6]
    assert fleet.b.stats()["bus_gaps"] == 1
    assert (fleet.b.get("x"), fleet.b.get("y")) == (3, 3)  # b cleared its memory
    fleet.a.invalidate("w")  # the circuit is closed again
    assert fleet.a.stats()["bus_sent"] == 3


def test_without_the_publish_breaker_every_announcement_tries_the_bus(clock: FakeClock) -> None:
    """``bus.breaker.enabled = false``: each announcement tries the bus, as before."""
    bus = CuttableBus()
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), SharedTier(clock)],
        DictSource({"x": 1}),
        clock=clock,
        bus=bus,
        bus_breaker=None,
    )
    bus.failing = True
    for _ in range(3):
        cache.invalidate("x")
    assert bus.attempts == 3
    stats = cache.stats()
    assert (stats["bus_publish_errors"], stats["bus_publish_skipped"]) == (3, 0)


class HeldBus(CuttableBus):
    """A CuttableBus whose next publish, once ``hold`` is set, waits until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.holding = threading.Event()
        self.release = threading.Event()

    def publish(self, message: Invalidation) -> None:
        if self.hold:
            self.hold = False
            self.holding.set()
            self.release.wait(timeout=5.0)
        super().publish(message)


def test_a_writer_does_not_wait_for_the_publish_breakers_probe(clock: FakeClock) -> None:
    """While one announcement probes a bus that failed (it holds the lock that orders the
    announcements, for up to the bus's timeout), the others skip at once rather than queue
    behind it; their numbers are left unused, so the others clear after the probe."""
    bus = HeldBus()
    a, b = (
        TieredCache(
            [MemoryTier(name="l1", clock=clock), SharedTier(clock)],
            DictSource({"x": 1}),
            clock=clock,
            bus=bus,
        )
        for _ in range(2)
    )
    a.invalidate("warm")
    bus.failing = True
    a.invalidate("x")  # fails: the breaker opens
    bus.failing = False
    clock.advance(1.0)
    bus.hold = True
    order: list[str] = []
    probe = threading.Thread(target=lambda: (a.invalidate("p"), order.append("probe")))
    probe.start()
    assert bus.holding.wait(timeout=5.0)  # the probe is inside its publish
    other = threading.Thread(target=lambda: (a.invalidate("q"), order.append("other")))
    other.start()
    other.join(timeout=10.0)
    order.append("released")
    bus.release.set()
    probe.join(timeout=10.0)
    assert order == ["other", "released", "probe"]
    assert bus.attempts == 3  # warm, x, p: q was not tried
    stats = a.stats()
    assert (stats["bus_sent"], stats["bus_publish_errors"], stats["bus_publish_skipped"]) == (
        2,
        1,
        1,
    )
    assert [message.seq for message in bus.heard] == [1, 3]  # q took 4, unused
    a.invalidate("r")
    assert [message.seq for message in bus.heard] == [1, 3, 5]
    assert b.stats()["bus_gaps"] == 2


class InvalidatedDuringTheDrop(MemoryTier):
    """A memory tier during whose drop of "k" (a writer's own invalidation, before its fill)
    another writer invalidates "k". A chain of this tier alone drops and fills in one step
    (``replace``, ChainPaths.set_alone): the other writer comes in that step."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(name="l1", clock=clock)
        self.invalidate: Callable[[str], None] | None = None

    def delete_many(self, keys: Sequence[str]) -> None:
        super().delete_many(keys)
        self._other_writer(keys)

    def replace(self, key: str, entry: Entry) -> None:
        super().replace(key, entry)
        self._other_writer((key,))

    def _other_writer(self, keys: Sequence[str]) -> None:
        if "k" in keys and self.invalidate is not None:
            invalidate, self.invalidate = self.invalidate, None
            invalidate("k")


def test_a_set_overtaken_by_another_invalidation_keeps_no_value_in_memory(
    clock: FakeClock,
) -> None:
    memory = InvalidatedDuringTheDrop(clock)
    cache = TieredCache([memory], clock=clock, ttl=60)
    cache.set("k", "old")
    assert memory.get("k") is not MISSING  # its own invalidation does not refuse its fill
    memory.invalidate = cache.invalidate
    cache.set("k", "new")
    assert memory.get("k") is MISSING
    assert cache.stats()["fills_refused"] == 1


def test_a_set_overtaken_by_another_processes_write_keeps_neither_value_in_the_shared_tier(
    clock: FakeClock,
) -> None:
    """Another process's write of "k" (its value in the shared tier, its bus message here)
    comes while this process's set of "k" drops its own copies: the set's fill is refused
    before it writes, and since which write came last at the source cannot be told here, the
    shared tier must not keep the other's value either. (Without a source Redis orders the
    two writes: adapters/redis/tests/test_redis_sole_writes_overlapping.py.)"""
    bus = LocalBus()
    shared = SharedTier(clock)
    memory = InvalidatedDuringTheDrop(clock)
    source = DictSource()
    cache = TieredCache([memory, shared], source, clock=clock, ttl=60, bus=bus)
    other = TieredCache(
        [MemoryTier(name="l1", clock=clock), shared], source, clock=clock, ttl=60, bus=bus
    )
    memory.invalidate = lambda key: other.set(key, "other's")
    cache.set("k", "mine")
    assert memory.get("k") is MISSING and shared.get("k") is MISSING
    assert cache.stats()["fills_refused"] == 1


class InvalidatedWhileWritingTwo(SharedTier):
    """A shared tier during whose batch write a writer invalidates "k" and "j" (after the
    fence's first check, before its second)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.invalidate_many: Callable[[Sequence[str]], None] | None = None

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        super().set_many(entries)
        if self.invalidate_many is not None:
            invalidate_many, self.invalidate_many = self.invalidate_many, None
            invalidate_many(["k", "j"])


def test_an_invalidation_of_two_keys_during_a_batch_fill_counts_both(clock: FakeClock) -> None:
    shared = InvalidatedWhileWritingTwo(clock)
    memory = MemoryTier(name="l1", clock=clock)
    cache = TieredCache(
        [memory, shared],
        DictSource({"k": "old", "j": "old", "i": "other"}),
        clock=clock,
        protection=Protection.never_stale(),
    )
    shared.invalidate_many = cache.invalidate_many
    assert cache.get_many(["k", "j", "i"]) == {"k": "old", "j": "old", "i": "other"}
    assert [key in memory for key in ("k", "j", "i")] == [False, False, True]
    assert [shared.get(key) is MISSING for key in ("k", "j", "i")] == [True, True, False]
    assert cache.stats()["fills_refused"] == 2


def test_a_fence_refuses_a_fill_older_than_its_log() -> None:
    """``log_size``: a mark more invalidations ago than the fence remembers overtakes every
    key, even one no invalidation named (an unbounded log would remember, and grow)."""
    fence = Fence([], CacheMetrics([]), log_size=2)
    mark = fence.mark()
    fence.invalidate(["x"])
    fence.invalidate(["y"])
    assert fence.overtaken(mark, ["k", "x"]) == ["x"]
    fence.invalidate(["z"])
    assert fence.overtaken(mark, ["k", "x"]) == ["k", "x"]


def test_while_the_bus_is_down_a_batch_fills_the_shared_tier_above_a_bypassed_one(
    clock: FakeClock,
) -> None:
    """An in-process tier below the shared one (a local disk cache, say) is bypassed while
    the bus is down, as every in-process tier is; the fill skips it and still writes the
    shared tier above it."""
    bus = CuttableBus()
    shared = SharedTier(clock)
    disk = MemoryTier(name="disk", clock=clock)
    cache = TieredCache(
        [MemoryTier(name="l1", clock=clock), shared, disk],
        DictSource({"x": 1, "y": 2}),
        clock=clock,
        protection=Protection.never_stale(),
        bus=bus,
        max_stale_when_disconnected=0,
    )
    bus.cut()
    assert cache.get_many(["x", "y"]) == {"x": 1, "y": 2}
    assert shared.get("x") is not MISSING and shared.get("y") is not MISSING
    assert disk.get("x") is MISSING


class WrittenAndReadDuringTheSet(SharedTier):
    """A shared tier during whose write of "k" ``on_write`` runs (another process writes "k"),
    and during whose undo of "k" ``on_delete`` runs (before this tier drops it)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.on_write: Callable[[], object] | None = None
        self.on_delete: Callable[[], object] | None = None

    def set(self, key: str, entry: Entry) -> None:
        super().set(key, entry)
        if key == "k" and self.on_write is not None:
            on_write, self.on_write = self.on_write, None
            on_write()

    def delete_many(self, keys: Sequence[str]) -> None:
        if "k" in keys and self.on_delete is not None:
            on_delete, self.on_delete = self.on_delete, None
            on_delete()
        super().delete_many(keys)


def test_a_set_undone_by_another_processes_write_leaves_no_value_in_memory(
    clock: FakeClock,
) -> None:
    """Another process writes "k" while this one's set writes the shared tier: the set's fill
    is undone in the order it was written, the shared tier first, then memory (an
    invalidation's order). A read of "k" in between finds the set's own value still in memory
    (the set has not returned) and copies nothing up; the undo then drops it, and neither
    value is kept, since which write came last at the source cannot be told. (Undone memory
    first, that read copied the other value up from the shared tier, and only the set's
    invalidation, still open, refused the copy.)"""
    bus = LocalBus()
    shared = WrittenAndReadDuringTheSet(clock)
    memory = MemoryTier(name="l1", clock=clock)
    source = DictSource()
    cache = TieredCache([memory, shared], source, clock=clock, ttl=60, bus=bus)
    other = TieredCache(
        [MemoryTier(name="l1", clock=clock), shared], source, clock=clock, ttl=60, bus=bus
    )
    read: list[object] = []
    shared.on_write = lambda: other.set("k", "other's")
    shared.on_delete = lambda: read.append(cache.get("k"))
    cache.set("k", "mine")
    assert read == ["mine"]  # the read between the two drops of the undo
    assert memory.get("k") is MISSING and shared.get("k") is MISSING
    assert cache.stats()["fills_refused"] == 1  # the set's fill, undone


class ReadBeforeItsFill(SharedTier):
    """A shared tier whose next write (a ``set``'s fill, after the set dropped memory) first
    lets a read of this process find the old value here; that read then waits, between its
    read and its copy into memory, until ``write_returned``."""

    def __init__(self, clock: FakeClock, read: Callable[[], object]) -> None:
        super().__init__(clock)
        self.read = read
        self.armed = False
        self.reading = False
        self.read_answered = threading.Event()
        self.write_returned = threading.Event()
        self.reader: threading.Thread | None = None

    def _before_write(self) -> None:
        if self.armed:
            self.armed = False
            self.reading = True
            self.reader = threading.Thread(target=self.read)
            self.reader.start()
            assert self.read_answered.wait(10)

    def _after_read(self) -> None:
        if self.reading:
            self.reading = False
            self.read_answered.set()
            assert self.write_returned.wait(10)

    def set(self, key: str, entry: Entry) -> None:
        self._before_write()
        super().set(key, entry)

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self._before_write()
        super().set_many(entries)

    def get(self, key: str) -> object:
        entry = super().get(key)
        self._after_read()
        return entry

    def get_many(self, keys: Sequence[str]) -> object:
        found = super().get_many(keys)
        self._after_read()
        return found


@pytest.mark.parametrize("write", ["set", "set_many"])
@pytest.mark.parametrize("read", ["get", "get_many"])
def test_a_read_during_the_processs_own_set_does_not_copy_the_old_value_up_after_it(
    clock: FakeClock, write: str, read: str
) -> None:
    """A read that missed memory after this process's set dropped it, and found the old
    value in the shared tier before the set's fill reached it, copied that value into memory
    after the set's own memory fill: this process then read its previous value after its set
    returned, until the memory ttl (the history checker, seed 2033, schedule 548). The set's
    invalidation is open until its fill is done, so that read's copy is refused."""
    got: list[object] = []
    memory = MemoryTier(name="l1", clock=clock)
    cache: TieredCache

    def reading() -> None:
        got.append(cache.get("k") if read == "get" else cache.get_many(["k"])["k"])

    shared = ReadBeforeItsFill(clock, reading)
    cache = TieredCache([memory, shared], DictSource(), clock=clock, ttl=60)
    cache.set("k", "old")
    shared.armed = True
    if write == "set":
        cache.set("k", "new")
    else:
        cache.set_many({"k": "new"})
    shared.write_returned.set()
    assert shared.reader is not None
    shared.reader.join(10)
    assert got == ["old"]  # it overlapped the set: either value may be served to it
    kept = memory.get("k")
    assert kept is MISSING or kept.value == "new"
    assert cache.get("k") == "new"
    assert cache.stats()["fills_refused"] == 1
