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
import threading
from collections.abc import Callable, Sequence
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


def sync_chain(bus: ConfirmingBus, clock: FakeClock, bound: float, below: bool = False) -> Any:
    FlappingMemory.flap = Flap()
    SharedFlapping.flap = Flap()
    FlappingKey.flap = Flap()
    tiers: list[MemoryTier] = [FlappingMemory(ttl=600, clock=clock)]
    if below:
        tiers.append(SharedFlapping(ttl=600, clock=clock))
    return TieredCache(tiers, ttl=600, clock=clock, bus=bus, max_stale_when_disconnected=bound)


def async_chain(bus: ConfirmingBus, clock: FakeClock, bound: float, below: bool = False) -> Any:
    FlappingMemory.flap = Flap()
    SharedFlapping.flap = Flap()
    FlappingKey.flap = Flap()
    tiers: list[MemoryTier] = [FlappingMemory(ttl=600, clock=clock)]
    if not below:
        return AsyncTieredCache(
            tiers, ttl=600, clock=clock, bus=bus, max_stale_when_disconnected=bound
        )
    tiers.append(SharedFlapping(ttl=600, clock=clock))
    with pytest.warns(BlockingTierWarning):  # a sync shared tier: its calls go to threads
        return AsyncTieredCache(
            tiers, ttl=600, clock=clock, bus=bus, max_stale_when_disconnected=bound
        )


BOUNDS = pytest.mark.parametrize("bound", [0, 60], ids=["bypassed", "bounded"])


# -- the bus goes down after the memory lookup read memory: memory's miss, no bypass -----------


@BOUNDS
@pytest.mark.parametrize("read", ["get", "cached"])
def test_a_get_that_read_memory_as_the_bus_went_down_counts_its_miss_alone(
    clock: FakeClock, bound: float, read: str
) -> None:
    bus = ConfirmingBus()
    cache = sync_chain(bus, clock, bound)
    bus.confirm()

    @cache.cached(key="{name}")
    def decorated(name: str) -> str:
        return "v"

    FlappingMemory.flap.then = bus.fail
    if read == "get":
        assert cache.get("k", lambda: "v") == "v"
    else:
        assert decorated("k") == "v"
    assert FlappingMemory.flap.then is None, "the bus went down during the read"
    # Failed on main: (0, 1, 1) bypassed, (0, 2, 1) bounded: one read counted twice.
    assert read_counts(cache, True) == (0, 1, 0)


@BOUNDS
def test_a_get_many_that_read_memory_as_the_bus_went_down_counts_its_misses_alone(
    clock: FakeClock, bound: float
) -> None:
    bus = ConfirmingBus()
    cache = sync_chain(bus, clock, bound)
    bus.confirm()
    FlappingMemory.flap.then = bus.fail
    assert cache.get_many(["k", "j"], lambda keys: dict.fromkeys(keys, "v")) == {
        "k": "v",
        "j": "v",
    }
    assert FlappingMemory.flap.then is None, "the bus went down during the read"
    assert read_counts(cache, True) == (0, 2, 0)


# -- the bus comes back after the memory lookup left memory to the read: counted as down ------


@BOUNDS
def test_a_get_that_skipped_memory_as_the_bus_came_back_counts_one_bypass(
    clock: FakeClock, bound: float
) -> None:
    bus = ConfirmingBus()
    cache = sync_chain(bus, clock, bound)
    bus.fail()
    FlappingKey.flap.then = bus.confirm
    assert cache.get(FlappingKey("k"), lambda: "v") == "v"
    assert FlappingKey.flap.then is None, "the bus came back during the read"
    # Bypassed memory is not read; bounded memory is, by the read (its miss).
    assert read_counts(cache, True) == (0, 1 if bound else 0, 1)


@BOUNDS
def test_a_get_many_that_skipped_memory_as_the_bus_came_back_counts_a_bypass_per_key(
    clock: FakeClock, bound: float
) -> None:
    bus = ConfirmingBus()
    cache = sync_chain(bus, clock, bound, below=True)
    bus.fail()
    SharedFlapping.flap.then = bus.confirm
    assert cache.get_many(["k", "j"], lambda keys: dict.fromkeys(keys, "v")) == {
        "k": "v",
        "j": "v",
    }
    assert SharedFlapping.flap.then is None, "the bus came back during the read"
    assert read_counts(cache, True) == (0, 2 if bound else 0, 2)


# -- the asyncio chain, both ways ----------------------------------------------------------------


async def load() -> str:
    return "v"


async def load_many(keys: list[str]) -> dict[str, str]:
    return dict.fromkeys(keys, "v")


@pytest.mark.anyio
@BOUNDS
async def test_an_asyncio_get_that_read_memory_as_the_bus_went_down_counts_its_miss_alone(
    clock: FakeClock, bound: float
) -> None:
    bus = ConfirmingBus()
    cache = async_chain(bus, clock, bound)
    bus.confirm()
    FlappingMemory.flap.then = bus.fail
    assert await cache.get("k", load) == "v"
    assert FlappingMemory.flap.then is None, "the bus went down during the read"
    assert read_counts(cache, True) == (0, 1, 0)
    await cache.aclose()


@pytest.mark.anyio
@BOUNDS
async def test_an_asyncio_get_that_skipped_memory_as_the_bus_came_back_counts_one_bypass(
    clock: FakeClock, bound: float
) -> None:
    bus = ConfirmingBus()
    cache = async_chain(bus, clock, bound)
    bus.fail()
    FlappingKey.flap.then = bus.confirm
    assert await cache.get(FlappingKey("k"), load) == "v"
    assert FlappingKey.flap.then is None, "the bus came back during the read"
    assert read_counts(cache, True) == (0, 1 if bound else 0, 1)
    await cache.aclose()


@pytest.mark.anyio
@BOUNDS
@pytest.mark.parametrize("way", ["down", "up"])
async def test_an_asyncio_get_many_counts_each_key_once_as_the_bus_flaps(
    clock: FakeClock, bound: float, way: str
) -> None:
    bus = ConfirmingBus()
    cache = async_chain(bus, clock, bound, below=True)
    if way == "down":
        bus.confirm()
        flap = FlappingMemory.flap
        flap.then = bus.fail
    else:
        bus.fail()
        flap = SharedFlapping.flap
        flap.then = bus.confirm
    assert await cache.get_many(["k", "j"], load_many) == {"k": "v", "j": "v"}
    assert flap.then is None, "the bus flapped during the read"
    if way == "down":
        assert read_counts(cache, True) == (0, 2, 0)
    else:
        assert read_counts(cache, True) == (0, 2 if bound else 0, 2)
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
    assert read_counts(cache, True) == (0, 2 if bound else 0, 2)


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
    assert read_counts(cache, True) == (0, 2 if bound else 0, 2)
    await cache.aclose()
