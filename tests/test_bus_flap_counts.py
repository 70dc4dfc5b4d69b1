"""Every read counted once when the bus flaps during the read.

A read decides whether the bus is down once, at the memory lookup (the L1 lookup reads an
in-process tier 0 only while the bus is up), and carries that decision through the rest of
the read: memory's hit or miss, or one ``bus_down_bypasses`` (per key for get_many). Found by
an adversarial pass: the read asked again later (``ChainPaths.down``), so a read the bus left
during counted memory's miss and a bypass, and one that skipped memory as the bus came back
counted nothing (threads through a TCP proxy cutting the bus: 2 to 12 reads too many of
29k-51k; asyncio: 21 to 43 too few of 39k-44k).

The flap is injected at the instant that matters: a tier whose read fails the bus (it went
down after the lookup decided), or a key whose hash (taken by the flight table, after the
lookup) confirms it (it came back after).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.async_accessor import BlockingTierWarning
from tiered_cache.testing import FakeClock
from tiered_cache.testing.polling import async_until, until
from tiered_cache.tier import Entry, MissingType

from .test_bus_start_counts import ConfirmingBus, read_counts


class Flap:
    """Calls ``then`` once, the first time it is called while armed."""

    def __init__(self) -> None:
        self.then: Callable[[], None] | None = None

    def __call__(self) -> None:
        then, self.then = self.then, None
        if then is not None:
            then()


class FlappingMemory(MemoryTier):
    """Memory whose next read (the L1 lookup's ``get_at``, or ``get_many``) flaps the bus."""

    flap = Flap()

    def get_at(self, key: str, now: float) -> Entry | MissingType:
        self.flap()
        return super().get_at(key, now)

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        self.flap()
        return super().get_many(keys)


class SharedFlapping(FlappingMemory):
    """A shared tier (as Redis is) below memory, whose read flaps the bus."""

    local = False


class FlappingKey(str):
    """A key whose hash flaps the bus: taken by the flight table, after the L1 lookup."""

    flap = Flap()

    def __hash__(self) -> int:
        self.flap()
        return str.__hash__(self)


def flapping_tiers(clock: FakeClock, below: bool) -> list[MemoryTier]:
    """Memory, and a shared tier below it if ``below``; every flap disarmed."""
    FlappingMemory.flap = Flap()
    SharedFlapping.flap = Flap()
    FlappingKey.flap = Flap()
    tiers: list[MemoryTier] = [FlappingMemory(ttl=600, clock=clock)]
    if below:
        tiers.append(SharedFlapping(name="shared", ttl=600, clock=clock))
    return tiers


def sync_chain(bus: ConfirmingBus, clock: FakeClock, bound: float, below: bool = False) -> Any:
    tiers = flapping_tiers(clock, below)
    return TieredCache(tiers, ttl=600, clock=clock, bus=bus, max_stale_when_disconnected=bound)


def async_chain(bus: ConfirmingBus, clock: FakeClock, bound: float, below: bool = False) -> Any:
    tiers = flapping_tiers(clock, below)
    # A sync shared tier below: its calls go to threads, which the chain warns of.
    with pytest.warns(BlockingTierWarning) if below else contextlib.nullcontext():
        return AsyncTieredCache(
            tiers, ttl=600, clock=clock, bus=bus, max_stale_when_disconnected=bound
        )


BOUNDS = pytest.mark.parametrize("bound", [0, 60], ids=["bypassed", "bounded"])

#: The two flaps: the bus goes down after the memory lookup read memory, or comes back after
#: the lookup left memory to the read.
DOWN, UP = "went down", "came back"


def flapped(bus: ConfirmingBus, way: str, flap: Flap) -> Flap:
    """The bus set as the read starts, and ``flap`` armed to flap it ``way`` during the read."""
    if way == DOWN:
        bus.confirm()
        flap.then = bus.fail
    else:
        bus.fail()
        flap.then = bus.confirm
    return flap


def counts(way: str, bound: float, keys: int) -> tuple[int, int, int]:
    """Memory's ``(hits, misses)`` and the bypasses once a read of ``keys`` keys flapped ``way``."""
    if way == DOWN:
        # Memory's miss alone. Failed on main: (0, 1, 1) bypassed, (0, 2, 1) bounded for a
        # get: one read counted twice.
        return (0, keys, 0)
    # One bypass a key. Bypassed memory is not read; bounded memory is, by the read (its miss).
    return (0, keys if bound else 0, keys)


@dataclass(frozen=True)
class Flapped:
    """A read the bus flaps during, ``way``: by the flap of ``flapper`` (memory's read, after
    the lookup decided; the shared tier's read below it, ``below``; the key's hash, taken by
    the flight table after the lookup), reading ``keys`` keys to ``value``."""

    way: str
    flapper: Callable[[], Flap]
    read: Callable[[Any], Any]
    below: bool = False
    keys: int = 1

    @property
    def value(self) -> Any:
        return "v" if self.keys == 1 else {"k": "v", "j": "v"}


def named(name: str) -> str:
    return "v"


def load_many_now(keys: Sequence[str]) -> dict[str, str]:
    return dict.fromkeys(keys, "v")


def memory() -> Flap:
    return FlappingMemory.flap


def shared() -> Flap:
    return SharedFlapping.flap


def key() -> Flap:
    return FlappingKey.flap


SYNC_READS = {
    "get, went down": Flapped(DOWN, memory, lambda cache: cache.get("k", lambda: "v")),
    "decorated, went down": Flapped(
        DOWN, memory, lambda cache: cache.cached(key="{name}")(named)("k")
    ),
    "get_many, went down": Flapped(
        DOWN, memory, lambda cache: cache.get_many(["k", "j"], load_many_now), keys=2
    ),
    "get, came back": Flapped(UP, key, lambda cache: cache.get(FlappingKey("k"), lambda: "v")),
    "get_many, came back": Flapped(
        UP, shared, lambda cache: cache.get_many(["k", "j"], load_many_now), below=True, keys=2
    ),
}


@BOUNDS
@pytest.mark.parametrize("case", SYNC_READS.values(), ids=SYNC_READS)
def test_a_read_counts_each_key_once_as_the_bus_flaps(
    clock: FakeClock, bound: float, case: Flapped
) -> None:
    bus = ConfirmingBus()
    cache = sync_chain(bus, clock, bound, below=case.below)
    flap = flapped(bus, case.way, case.flapper())
    assert case.read(cache) == case.value
    assert flap.then is None, f"the bus {case.way} during the read"
    assert read_counts(cache, True) == counts(case.way, bound, case.keys)


# -- the asyncio chain, both ways ----------------------------------------------------------------


async def load() -> str:
    return "v"


async def load_many(keys: list[str]) -> dict[str, str]:
    return dict.fromkeys(keys, "v")


ASYNC_READS = {
    "get, went down": Flapped(DOWN, memory, lambda cache: cache.get("k", load)),
    "get, came back": Flapped(UP, key, lambda cache: cache.get(FlappingKey("k"), load)),
    "get_many, went down": Flapped(
        DOWN, memory, lambda cache: cache.get_many(["k", "j"], load_many), below=True, keys=2
    ),
    "get_many, came back": Flapped(
        UP, shared, lambda cache: cache.get_many(["k", "j"], load_many), below=True, keys=2
    ),
}


@pytest.mark.anyio
@BOUNDS
@pytest.mark.parametrize("case", ASYNC_READS.values(), ids=ASYNC_READS)
async def test_an_asyncio_read_counts_each_key_once_as_the_bus_flaps(
    clock: FakeClock, bound: float, case: Flapped
) -> None:
    bus = ConfirmingBus()
    cache = async_chain(bus, clock, bound, below=case.below)
    flap = flapped(bus, case.way, case.flapper())
    assert await case.read(cache) == case.value
    assert flap.then is None, f"the bus {case.way} during the read"
    assert read_counts(cache, True) == counts(case.way, bound, case.keys)
    await cache.aclose()


# -- a read that joins another's load carries its own decision -----------------------------------


@BOUNDS
def test_a_get_that_joins_a_load_as_the_bus_came_back_counts_one_bypass(
    clock: FakeClock, bound: float
) -> None:
    """The first read leads the load while the bus is down; the second skips memory, then the
    bus comes back as it joins (or, the fence's gap refusing the join, waits and leads)."""
    bus = ConfirmingBus()
    cache = sync_chain(bus, clock, bound)
    bus.fail()
    go = threading.Event()

    def load() -> str:
        go.wait()
        return "v"

    leader = threading.Thread(target=lambda: cache.get("k", load))
    leader.start()
    until(lambda: cache.stats()["bus_down_bypasses"] == 1, "the leader counted its read")
    FlappingKey.flap.then = bus.confirm
    joiner = threading.Thread(target=lambda: cache.get(FlappingKey("k"), load))
    joiner.start()
    until(lambda: FlappingKey.flap.then is None, "the bus came back during the second read")
    go.set()
    leader.join()
    joiner.join()
    assert read_counts(cache, True) == counts(UP, bound, 2)


@pytest.mark.anyio
@BOUNDS
async def test_an_asyncio_get_that_joins_a_load_as_the_bus_came_back_counts_one_bypass(
    clock: FakeClock, bound: float
) -> None:
    bus = ConfirmingBus()
    cache = async_chain(bus, clock, bound)
    bus.fail()
    go = asyncio.Event()

    async def slow() -> str:
        await go.wait()
        return "v"

    leader = asyncio.ensure_future(cache.get("k", slow))
    await async_until(lambda: cache.stats()["bus_down_bypasses"] == 1, "the leader counted")
    FlappingKey.flap.then = bus.confirm
    joiner = asyncio.ensure_future(cache.get(FlappingKey("k"), slow))
    await async_until(lambda: FlappingKey.flap.then is None, "the bus came back meanwhile")
    go.set()
    assert await asyncio.gather(leader, joiner) == ["v", "v"]
    assert read_counts(cache, True) == counts(UP, bound, 2)
    await cache.aclose()


# -- the decorated function, as the bus comes back during its load ------------------------------


def down_until_a_load(bus: ConfirmingBus) -> tuple[Flap, list[str]]:
    """The bus down; the next load (recorded) brings it back."""
    bus.fail()
    flap = Flap()
    flap.then = bus.confirm
    return flap, []


def came_back_once(cache: Any, flap: Flap, loads: list[str]) -> tuple[Any, ...]:
    """What a test asserts after each of its two calls."""
    return flap.then, len(loads), read_counts(cache, True)


@BOUNDS
def test_a_decorated_read_whose_load_the_bus_came_back_during_counts_one_bypass(
    clock: FakeClock, bound: float
) -> None:
    """The wrapper's lookup skipped (or read, bounded) memory while the bus was down; the bus
    comes back while its function runs: one read past memory, and the outage's load is not
    kept in memory (the next call reads memory, misses, and loads again)."""
    bus = ConfirmingBus()
    cache = sync_chain(bus, clock, bound)
    flap, loads = down_until_a_load(bus)

    @cache.cached(key="{name}")
    def decorated(name: str) -> str:
        loads.append(name)
        flap()
        return "v"

    first = (decorated("k"), *came_back_once(cache, flap, loads))
    second = (decorated("k"), *came_back_once(cache, flap, loads))
    assert [first, second] == CAME_BACK_DURING_THE_LOAD[bound]
    cache.close()


#: The two calls: the bus came back during the first (one read past memory; bounded memory
#: read, its miss), the second missed memory and loaded again.
CAME_BACK_DURING_THE_LOAD = {
    0: [("v", None, 1, (0, 0, 1)), ("v", None, 2, (0, 1, 1))],
    60: [("v", None, 1, (0, 1, 1)), ("v", None, 2, (0, 2, 1))],
}


@pytest.mark.anyio
@BOUNDS
async def test_an_asyncio_decorated_read_whose_load_the_bus_came_back_during_counts_one_bypass(
    clock: FakeClock, bound: float
) -> None:
    bus = ConfirmingBus()
    cache = async_chain(bus, clock, bound)
    flap, loads = down_until_a_load(bus)

    @cache.cached(key="{name}")
    async def decorated(name: str) -> str:
        loads.append(name)
        flap()
        return "v"

    first = (await decorated("k"), *came_back_once(cache, flap, loads))
    second = (await decorated("k"), *came_back_once(cache, flap, loads))
    assert [first, second] == CAME_BACK_DURING_THE_LOAD[bound]
    await cache.aclose()


# -- after the bus came back, the lookup's state of the last outage is never read again ----------


@BOUNDS
def test_reads_after_the_bus_came_back_count_memory_not_the_last_outage(
    clock: FakeClock, bound: float
) -> None:
    """The L1 lookup keeps the state it was last switched off with (never reset: a lookup
    that found memory off, then the state, would otherwise take the bus as connected without
    reading memory); once switched on it reads memory and returns no state: after two
    outages, get and the decorated function count memory's miss then hit, no read past it."""
    bus = ConfirmingBus()
    cache = sync_chain(bus, clock, bound)

    @cache.cached(key="{name}")
    def decorated(name: str) -> str:
        return "v"

    counts = []
    for turn in range(4):
        if turn < 2:
            bus.fail()
        counts.append((cache.get("k", lambda: "v"), decorated("j"), read_counts(cache, True)))
        if turn < 2:
            bus.confirm()
    assert counts[2:] == AFTER_TWO_OUTAGES[bound]
    cache.close()


#: get and the decorated function read after two outages: memory's misses, then its hits.
AFTER_TWO_OUTAGES = {
    0: [("v", "v", (0, 2, 4)), ("v", "v", (2, 2, 4))],
    60: [("v", "v", (0, 6, 4)), ("v", "v", (2, 6, 4))],
}


@pytest.mark.anyio
@BOUNDS
async def test_asyncio_reads_after_the_bus_came_back_count_memory_not_the_last_outage(
    clock: FakeClock, bound: float
) -> None:
    bus = ConfirmingBus()
    cache = async_chain(bus, clock, bound)

    @cache.cached(key="{name}")
    async def decorated(name: str) -> str:
        return "v"

    counts = []
    for turn in range(4):
        if turn < 2:
            bus.fail()
        counts.append((await cache.get("k", load), await decorated("j"), read_counts(cache, True)))
        if turn < 2:
            bus.confirm()
    assert counts[2:] == AFTER_TWO_OUTAGES[bound]
    await cache.aclose()
