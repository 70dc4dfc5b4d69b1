"""A chain forked while another thread of the parent is inside it works in the child.

The chain's own threads (the bus listener applying another process's invalidation, the
background pool filling a refresh) and the application's run inside the memory tier's lock and
inside the fence's invalidations at any instant, and a fork (gunicorn ``--preload`` recycling
a worker, Celery prefork) copies that instant into the child, without the thread. A lock that
thread held stayed held in the child forever: the child's first fill deadlocked. An
invalidation that thread was dropping stayed open forever: every mark the child took was from
before it, so a key the child invalidated was never cached again (and after a clear, nothing
was).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.breaker import CircuitBreakerTier
from tiered_cache.bus import Invalidation, LocalBus
from tiered_cache.compiled import compiled_core
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.gates import Held, HeldDrop
from tiered_cache.testing.pure_core import on_the_pure_core
from tiered_cache.tier import MISSING, Entry, MissingType

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 30.0


class HeldSize(Held):
    """A memory tier's ``sizeof``: called inside the tier's lock on a fill."""

    def __call__(self, value: object) -> int:
        self.hold()
        return 1


class HeldPublish(LocalBus):
    """A bus whose publish waits once armed (a stalled server: up to the bus's timeout)."""

    def __init__(self, held: Held) -> None:
        super().__init__()
        self.held = held

    def publish(self, message: Invalidation) -> None:
        self.held.hold()
        super().publish(message)


def in_the_child(cache: TieredCache) -> Callable[[Callable[[Any], None]], None]:
    """What the child does: invalidate, read twice, write, clear, read twice; reports how
    many loads its reads made (each key once, if the child caches)."""

    def child(report: Callable[[Any], None]) -> None:
        loads: list[str] = []

        def loader(key: str) -> Callable[[], str]:
            return lambda: loads.append(key) or f"v-{key}"  # type: ignore[func-returns-value]

        cache.invalidate("k")
        seen = [cache.get("k", loader("k")), cache.get("k", loader("k"))]
        cache.set("w", "written")
        seen.append(cache.get("w", loader("w")))
        cache.clear()
        seen += [cache.get("c", loader("c")), cache.get("c", loader("c"))]
        report([seen, loads])

    return child


def fork_while_doing(
    held: Held, busy: Callable[[], object], child: Callable[[Callable[[Any], None]], None]
) -> Any:
    """Fork while another thread, running ``busy``, is held inside the chain; what ``child``
    reported (the thread finishes in the parent afterwards)."""
    thread = threading.Thread(target=busy)
    held.armed = True
    thread.start()
    try:
        assert held.inside.wait(HUNG)
        forked = ForkedChild(child)
        try:
            seen = forked.read(timeout=HUNG)
        finally:
            held.go.set()
        assert forked.wait() == 0
        return seen
    finally:
        held.go.set()
        thread.join(HUNG)


def fork_while(held: Held, busy: Callable[[], object], cache: TieredCache) -> Any:
    """:func:`fork_while_doing` with :func:`in_the_child`'s reads and writes."""
    return fork_while_doing(held, busy, in_the_child(cache))


#: The child's report: each key loaded once (cached after its first read), the write read back.
EXPECTED = [["v-k", "v-k", "written", "v-c", "v-c"], ["k", "c"]]


def test_a_child_forked_while_a_thread_holds_the_memory_tiers_lock_fills_it() -> None:
    clock = FakeClock()
    held = HeldSize()
    tier = MemoryTier(max_entries=100, max_bytes=10_000, sizeof=held, clock=clock)
    cache = TieredCache([tier], ttl=60, clock=clock)
    assert fork_while(held, lambda: cache.set("x", "parent"), cache) == EXPECTED
    assert cache.get("x") == "parent"  # the parent's thread finished its fill
    cache.close()


def test_a_child_forked_while_a_thread_drops_an_invalidation_caches_again() -> None:
    clock = FakeClock()
    held = Held()
    tier = HeldDrop(held, max_entries=100, clock=clock)
    cache = TieredCache([tier], ttl=60, clock=clock)
    cache.set("x", "old")
    assert fork_while(held, lambda: cache.invalidate("x"), cache) == EXPECTED
    assert cache.get("x", lambda: "new") == "new"
    cache.close()


def test_a_child_forked_while_a_thread_publishes_an_invalidation_writes() -> None:
    """The bus link numbers and publishes under one lock, held across the publish."""
    clock = FakeClock()
    held = Held()
    bus = HeldPublish(held)
    cache = TieredCache([MemoryTier(max_entries=100, clock=clock)], ttl=60, clock=clock, bus=bus)
    assert fork_while(held, lambda: cache.set("x", "parent"), cache) == EXPECTED
    assert cache.get("x") == "parent"
    assert cache.stats()["bus_sent"] >= 1
    cache.close()


def test_a_child_forked_while_a_thread_reads_the_stats_counts_on_new_threads() -> None:
    """``stats()`` (a metrics scrape on a thread of its own) adds the threads' counters up
    under the metrics' lock, which a thread also takes to start counting: held at the fork,
    every new thread of the child (the background pool's) hung at its first count, and a
    stale entry was never refreshed there."""
    clock = FakeClock()
    cache = TieredCache(
        [MemoryTier(max_entries=100, clock=clock)],
        ttl=10,
        clock=clock,
        protection=Protection(max_stale=3600, stale_while_revalidate=True),
    )
    assert cache.get("k", lambda: "old") == "old"
    clock.advance(11)  # stale: the next read is served "old" and refreshed in the background
    held = Held()
    metrics_lock = cache._metrics._lock  # what stats() holds while it adds the cells up

    def scrape() -> None:
        with metrics_lock:
            held.hold()

    def child(report: Callable[[Any], None]) -> None:
        served = cache.get("k", lambda: "new")
        refreshed = cache.wait_background(HUNG / 2)
        report([served, refreshed, cache.get("k", lambda: "newer")])

    assert fork_while_doing(held, scrape, child) == ["old", True, "new"]
    cache.close()


class Flaky(MemoryTier):
    """A memory tier that fails its reads while ``failing``, and holds one read once armed."""

    def __init__(self, held: Held, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held = held
        self.failing = False

    def get(self, key: str) -> Entry | MissingType:
        if self.failing:
            raise ConnectionError("down")
        self.held.hold()
        return super().get(key)


def breaker_chain(held: Held, clock: FakeClock) -> tuple[TieredCache, Flaky, CircuitBreakerTier]:
    """l1 -> l2 (behind a breaker that opens at one failure, cools down for 1 s); "k" is in
    l2 only."""
    l2 = Flaky(held, name="l2", max_entries=100, clock=clock)
    guarded = CircuitBreakerTier(l2, failure_threshold=1, cool_down=1.0, clock=clock)
    cache = TieredCache([MemoryTier(max_entries=100, clock=clock), guarded], ttl=60, clock=clock)
    l2.set("k", Entry("from l2", clock(), clock() + 60, clock() + 60))
    return cache, l2, guarded


def reads_k_from_l2(cache: TieredCache) -> Callable[[Callable[[Any], None]], None]:
    def child(report: Callable[[Any], None]) -> None:
        report([cache.get("k", lambda: "loaded"), cache.stats()["tiers"][1]["hits"]])

    return child


def test_a_child_forked_while_a_thread_probes_a_tier_reads_it() -> None:
    """A half-open breaker lets one call through as the probe, and refuses the others until
    it ends. A probe in flight at the fork never ended in the child: its breaker refused
    every call there for good, and the child never read that tier again."""
    clock = FakeClock()
    held = Held()
    cache, l2, _ = breaker_chain(held, clock)
    l2.failing = True
    assert cache.get("x", lambda: "loaded") == "loaded"  # l2 failed: the circuit opens
    clock.advance(2)  # cooled down: the next call is the probe
    l2.failing = False
    hits_before = cache.stats()["tiers"][1]["hits"]
    assert fork_while_doing(held, lambda: cache.get("y", lambda: "y"), reads_k_from_l2(cache)) == [
        "from l2",
        hits_before + 1,
    ]
    cache.close()


def test_a_child_forked_while_a_thread_holds_a_breakers_lock_reads_the_tier() -> None:
    """The breaker's lock is held for a few statements around each guarded call."""
    clock = FakeClock()
    held = Held()
    cache, _, guarded = breaker_chain(held, clock)
    breaker_lock = guarded.breaker._lock

    def bookkeeping() -> None:
        with breaker_lock:
            held.hold()

    hits_before = cache.stats()["tiers"][1]["hits"]
    assert fork_while_doing(held, bookkeeping, reads_k_from_l2(cache)) == [
        "from l2",
        hits_before + 1,
    ]
    cache.close()


class HeldReader(MemoryTier):
    """A memory tier whose ``hit_reader`` waits once armed: the chain asks for it while it
    changes its ``l1_hit`` (the bus went down or came back), with the followers' lock held."""

    def __init__(self, held: Held, **kwargs: Any) -> None:
        self.held = held
        super().__init__(**kwargs)

    def hit_reader(self, clock: Callable[[], float], margin: float, hits: Any) -> Any:
        self.held.hold()
        return super().hit_reader(clock, margin, hits)


def test_a_child_forked_while_the_chain_changes_its_reader_decorates_and_reads() -> None:
    """The chain tells the decorated functions of a new plain-hit reader under a lock
    (``L1Reader.follow_l1_hit``): held by the parent's thread at the fork, the child's first
    decoration waited for ever."""
    clock = FakeClock()
    held = Held()
    cache = TieredCache([HeldReader(held, max_entries=100, clock=clock)], ttl=60, clock=clock)

    def child(report: Callable[[Any], None]) -> None:
        loads: list[str] = []

        @cache.cached(key="k:{k}")
        def read(k: str) -> str:
            loads.append(k)
            return f"v-{k}"

        seen = [read("1"), read("1")]  # loaded, then a hit
        cache._set_bus_connected(True)  # the chain's reader again, not held this time
        seen += [read("2"), read("2")]
        report([seen, loads, cache.stats()["tiers"][0]["hits"]])

    assert fork_while_doing(held, lambda: cache._set_bus_connected(True), child) == [
        ["v-1", "v-1", "v-2", "v-2"],
        ["1", "2"],
        2,
    ]
    cache.close()


def test_a_child_forked_as_the_memory_lock_is_handed_to_a_waiting_thread_fills_it() -> None:
    """The child's restart asked the memory tier's lock ``locked()``, which reads a flag the
    thread a lock is handed to sets only once it runs again (CPython's lock: the semaphore is
    that thread's first). Forked in between (threads writing at once, one waiting for the
    lock), the lock said it was free and stayed taken in the child for good: its first write
    waited for ever (on the pure core, 35 to 40 forks of 40 under 2 to 4 writing threads;
    compiled, whose threads seldom give up the interpreter inside the lock, 0 of 40)."""
    if compiled_core():
        on_the_pure_core(
            test_a_child_forked_as_the_memory_lock_is_handed_to_a_waiting_thread_fills_it
        )
        return
    clock = FakeClock()
    tier = MemoryTier(max_entries=100, clock=clock)
    stop = threading.Event()

    def write(number: int) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            tier.set(f"{number}-{turn % 50}", Entry(turn, clock(), clock() + 60, clock() + 60))

    def child(report: Callable[[Any], None]) -> None:
        tier.set("x", Entry("child", clock(), clock() + 60, clock() + 60))
        entry = tier.get("x")
        report(None if entry is MISSING else entry.value)

    writers = [threading.Thread(target=write, args=(number,)) for number in range(4)]
    for writer in writers:
        writer.start()
    reports: list[Any] = []
    try:
        for _ in range(20):
            forked = ForkedChild(child)
            try:
                reports.append(forked.read(timeout=HUNG / 3))
            except TimeoutError:
                reports.append("hung")  # one is enough: each costs the timeout
                break
            assert forked.wait() == 0
    finally:
        stop.set()
        for writer in writers:
            writer.join(HUNG)
    assert reports == ["child"] * 20
