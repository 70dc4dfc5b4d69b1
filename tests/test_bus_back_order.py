"""A bus coming back says "connected" to the chain's reads only once the outage's copies are
dropped.

While the bus is down memory keeps what it is filled with for ``max_stale_when_disconnected``
(a copy of the outage); when it is back those copies are dropped (a gap: whatever another
process wrote meanwhile was never heard). ``ChainPaths.set_bus_connected`` set the state a
read takes (``ChainPaths.state``) to connected *before* that drop: a read that takes its
state from the chain, not from the L1 lookup (``get_many`` and ``lookup_many`` of any chain,
every read of a chain whose in-process tier is not first), read in between took the bus as
connected and was served the outage's copy as a connected read (counted a plain hit of
memory, no ``bus_down_served``), while the link still showed the bus down. The bus link
had the same order one level up (14e694d: the drop first, "connected" after).

The drop is held here (memory's clear, on the thread that brings the bus back) while a
read runs: it must take the bus as still down.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.testing import FakeClock

from .test_bus_start_counts import ConfirmingBus

#: Waits of the test's own threads: a guard against a hang, never a measure.
GUARD = 30.0


class SharedMemory(MemoryTier):
    """A shared tier (as Redis is), first in the chain: memory comes after it."""

    local = False


class HeldMemory(MemoryTier):
    """Memory whose next clear, once :attr:`armed` (the drop of the outage's copies as the
    bus comes back), is held until :attr:`go`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.armed = False
        self.reached, self.go = threading.Event(), threading.Event()

    def clear(self) -> None:
        if self.armed:
            self.armed = False
            self.reached.set()
            assert self.go.wait(GUARD)
        super().clear()


def sync_chain(
    bus: ConfirmingBus, memory: HeldMemory, clock: FakeClock, shared_first: bool
) -> TieredCache:
    tiers = (
        [SharedMemory(name="shared", ttl=600, clock=clock), memory] if shared_first else [memory]
    )
    return TieredCache(tiers, ttl=600, clock=clock, bus=bus, max_stale_when_disconnected=60)


def written_unheard(cache: Any, shared_first: bool) -> None:
    """Another process writes "v1" while the bus is down, unheard: it deletes the key from
    the shared tier; memory keeps the copy it took meanwhile."""
    assert cache.stats()["bus"] == "down"
    if shared_first:
        shared = cache._tiers[0].tier
        assert isinstance(shared, SharedMemory)
        shared.delete("k")  # the other process's write reached the shared tier


def down_served(cache: Any) -> int:
    return int(cache.stats().get("bus_down_served", 0))


def back_with_the_drop_held(
    bus: ConfirmingBus, cache: Any, held: HeldMemory, read: Callable[[], Any]
) -> list[Any]:
    """Bring the bus back on a thread of its own, its drop held; ``read()`` meanwhile: what
    it served, the bus as ``stats()`` shows it, and whether the read took the bus as down
    (one more ``bus_down_served``)."""
    held.armed = True
    back = threading.Thread(target=bus.confirm, name="test-bus-back", daemon=True)
    back.start()
    try:
        assert held.reached.wait(GUARD), "the drop of the outage's copies never came"
        before = down_served(cache)
        served = read()
        seen = [served, cache.stats()["bus"], down_served(cache) - before]
    finally:
        held.go.set()
        back.join(GUARD)
    assert not back.is_alive()
    return seen


READS = {
    "get_many, memory first": (False, lambda cache: cache.get_many(["k"], lambda keys: {})),
    "lookup_many, memory first": (
        False,
        lambda cache: {key: entry.value for key, entry in cache.lookup_many(["k"]).items()},
    ),
    "get_many, memory second": (True, lambda cache: cache.get_many(["k"], lambda keys: {})),
    "get, memory second": (True, lambda cache: {"k": cache.get("k", lambda: "never")}),
}


@pytest.mark.parametrize("case", READS.values(), ids=READS)
def test_a_read_while_the_outages_copies_are_dropped_takes_the_bus_as_down(
    clock: FakeClock, case: tuple[bool, Callable[[TieredCache], Any]]
) -> None:
    """Failed on main 9598935: the read took the bus as connected while its drop was held,
    served the outage's copy, and counted no read while down:
    ``assert [{'k': 'v0'}, 'down', 0] == [{'k': 'v0'}, 'down', 1]``."""
    shared_first, read = case
    bus = ConfirmingBus()
    memory = HeldMemory(ttl=600, clock=clock)
    cache = sync_chain(bus, memory, clock, shared_first)
    bus.confirm()
    bus.fail()
    assert cache.get("k", lambda: "v0") == "v0"  # kept while down, within the bound
    written_unheard(cache, shared_first)
    # Held: the bus still down as far as any read goes (memory serves its copy, as while
    # down, within the bound); not a connected read served an outage's copy.
    assert back_with_the_drop_held(bus, cache, memory, lambda: read(cache)) == [
        {"k": "v0"},
        "down",
        1,
    ]
    assert cache.stats()["bus"] == "connected"
    assert cache.get("k", lambda: "v1") == "v1"  # the outage's copy is gone
    cache.close()


def test_the_asyncio_chains_read_while_the_outages_copies_are_dropped_takes_the_bus_as_down(
    clock: FakeClock,
) -> None:
    """The same for the asyncio chain (its bus's listener is a thread, its reads the loop's):
    failed on main 9598935 as the threaded chain's did."""
    bus = ConfirmingBus()
    memory = HeldMemory(ttl=600, clock=clock)
    cache = AsyncTieredCache(
        [memory],
        ttl=600,
        clock=clock,
        bus=bus,  # type: ignore[arg-type]
        max_stale_when_disconnected=60,
    )

    async def main() -> list[Any]:
        bus.confirm()
        bus.fail()
        assert await cache.get("k", asyncio_value("v0")) == "v0"

        def read() -> Any:
            return asyncio.run_coroutine_threadsafe(cache.get_many(["k"], nothing), loop).result(
                GUARD
            )

        loop = asyncio.get_running_loop()
        seen = await asyncio.to_thread(back_with_the_drop_held, bus, cache, memory, read)
        after = await cache.get("k", asyncio_value("v1"))
        await cache.aclose()
        return [seen, after]

    assert asyncio.run(main()) == [[{"k": "v0"}, "down", 1], "v1"]


def asyncio_value(value: str) -> Callable[[], Any]:
    async def load() -> str:
        return value

    return load


async def nothing(keys: Any) -> dict[str, Any]:
    return {}
