"""An asyncio chain used in the parent works in a forked child, on the child's own loop.

The parent runs its chain on an event loop (here on a thread of its own, as a sync
application driving an async client does; or the fork comes from inside a coroutine,
multiprocessing's fork start in an async service). The fork copies that instant: the
parent's coroutines in flight, its tasks, and the locks its other threads hold -- none of
which runs in the child. The child runs its own loop (``asyncio.run``) on the same chain.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.bus import LocalBus
from tiered_cache.testing import FakeClock
from tiered_cache.testing.async_conformance import LoopThread
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.gates import Held

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 30.0


def constant(value: str) -> Callable[[], Any]:
    async def load() -> str:
        return value

    return load


def memory_chain(**kwargs: Any) -> AsyncTieredCache:
    clock = FakeClock()
    return AsyncTieredCache(
        [MemoryTier(max_entries=100, clock=clock)], ttl=60, clock=clock, **kwargs
    )


def the_child_reads(cache: AsyncTieredCache) -> Callable[[Callable[[Any], None]], None]:
    """The child, on a loop of its own: reads "k" (loaded), writes "w", reads both back, and
    closes the chain; reports what it read."""

    def child(report: Callable[[Any], None]) -> None:
        async def main() -> list[Any]:
            seen = [await cache.get("k", constant("child's k"))]
            await cache.set("w", "written")
            seen += [await cache.get("k", constant("again")), await cache.get("w")]
            await cache.aclose()
            return seen

        report(asyncio.run(main()))

    return child


EXPECTED = ["child's k", "child's k", "written"]


def fork_and_read(child: Callable[[Callable[[Any], None]], None]) -> Any:
    forked = ForkedChild(child)
    seen = forked.read(timeout=HUNG)
    assert forked.wait() == 0
    return seen


def fork_while_held(held: Held, busy: Callable[[], object], child: Any) -> Any:
    """Fork while a thread running ``busy`` waits at ``held``; what the child reported."""
    thread = threading.Thread(target=busy)
    held.armed = True
    thread.start()
    try:
        assert held.inside.wait(HUNG)
        return fork_and_read(child)
    finally:
        held.go.set()
        thread.join(HUNG)


def test_a_child_forked_while_a_thread_holds_the_flight_tables_lock_reads() -> None:
    """The coroutine flight table is guarded by a thread lock (loops of several threads
    share it); held by another thread at the fork, the child's first miss waited for ever."""
    cache = memory_chain()
    held = Held()
    lock = cache._loader.flights._lock

    def in_the_table() -> None:
        with lock:
            held.hold()

    assert fork_while_held(held, in_the_table, the_child_reads(cache)) == EXPECTED
    asyncio.run(cache.aclose())


def test_a_child_forked_while_a_parent_coroutine_loads_a_key_loads_it_itself() -> None:
    """A flight the parent's loop was leading at the fork has no leader in the child: the
    child's read of that key joined it, and waited for ever."""
    cache = memory_chain()
    loop = LoopThread()
    started, release = threading.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "parent's k"

    parent = asyncio.run_coroutine_threadsafe(cache.get("k", slow), loop.loop)
    try:
        assert started.wait(HUNG)
        assert fork_and_read(the_child_reads(cache)) == EXPECTED
    finally:
        loop.loop.call_soon_threadsafe(release.set)
        assert parent.result(HUNG) == "parent's k"
        loop.run(cache.aclose())
        loop.close()


def test_a_child_forked_while_a_parent_coroutine_writes_closes_its_chain() -> None:
    """A write runs to its end in a task of the parent's loop, which ``aclose`` waits for:
    in the child that task never runs, and ``aclose`` (and ``wait_background``) waited for
    ever."""
    loop = LoopThread()
    started, release = threading.Event(), asyncio.Event()

    class SlowBus(LocalBus):
        """A bus whose publish (run in a thread by the async chain) waits once armed."""

        held = False

        def publish(self, message: Any) -> None:
            if self.held:
                self.held = False
                started.set()
                asyncio.run_coroutine_threadsafe(release.wait(), loop.loop).result(HUNG)
            super().publish(message)

    bus = SlowBus()
    cache = memory_chain(bus=bus)
    bus.held = True
    parent = asyncio.run_coroutine_threadsafe(cache.set("x", "parent"), loop.loop)
    try:
        assert started.wait(HUNG)
        assert fork_and_read(the_child_reads(cache)) == EXPECTED
    finally:
        loop.loop.call_soon_threadsafe(release.set)
        parent.result(HUNG)
        loop.run(cache.aclose())
        loop.close()


def test_a_child_forked_while_a_thread_holds_a_local_bus_lock_writes() -> None:
    """A :class:`LocalBus` copies its listeners under a lock to publish; held by another
    thread at the fork, the child's first write waited for ever."""
    bus = LocalBus()
    cache = memory_chain(bus=bus)
    held = Held()

    def publishing() -> None:
        with bus._lock:
            held.hold()

    assert fork_while_held(held, publishing, the_child_reads(cache)) == EXPECTED
    asyncio.run(cache.aclose())
