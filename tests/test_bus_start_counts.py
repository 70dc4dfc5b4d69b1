"""What a chain counts while its bus is starting (its first subscription not yet confirmed),
and which buses start so: a bus that declares ``confirms_subscription``, and no other.

Starting, memory is used as while the bus is down, but a start is no outage: every deploy
does it. Reads then are counted apart (``bus_starting_served``, ``bus_starting_bypasses``),
so that ``bus_down_served`` / ``bus_down_bypasses`` show outages only.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.bus import BusBase, BusListener, Invalidation, LocalBus
from tiered_cache.testing import FakeClock
from tiered_cache.testing.polling import async_until, until


class ConfirmingBus(BusBase):
    """An in-process bus that says when its subscription is confirmed (as Redis does): its
    listeners hear nothing before :meth:`confirm`, or :meth:`fail`."""

    confirms_subscription = True

    def __init__(self) -> None:
        self.listeners: list[BusListener] = []

    def publish(self, message: Invalidation) -> None:
        for listener in self.listeners:
            listener.on_message(message)

    def subscribe(self, listener: BusListener) -> None:
        self.listeners.append(listener)

    def close(self) -> None:
        self.listeners.clear()

    def confirm(self) -> None:
        for listener in self.listeners:
            listener.on_reconnect()

    def fail(self) -> None:
        for listener in self.listeners:
            listener.on_disconnect()


class PlainBus:
    """A third party's bus: the :class:`~tiered_cache.bus.Bus` protocol, no
    :class:`~tiered_cache.bus.BusBase` (so it declares no capability)."""

    def publish(self, message: Invalidation) -> None: ...

    def subscribe(self, listener: BusListener) -> None: ...

    def close(self) -> None: ...


def chain(
    bus: object,
    clock: FakeClock,
    face: type[TieredCache] | type[AsyncTieredCache] = TieredCache,
    tier: type[MemoryTier] = MemoryTier,
    bound: float = 60,
) -> Any:
    return face(
        [tier(ttl=600, clock=clock)],
        ttl=600,
        clock=clock,
        bus=bus,  # type: ignore[arg-type]
        max_stale_when_disconnected=bound,
    )


def bus_counts(cache: TieredCache) -> tuple[int, int, int, int]:
    stats = cache.stats()
    return (
        stats.get("bus_starting_served", 0),
        stats.get("bus_starting_bypasses", 0),
        stats.get("bus_down_served", 0),
        stats.get("bus_down_bypasses", 0),
    )


def test_reads_while_starting_are_not_counted_as_reads_while_down(clock: FakeClock) -> None:
    bus = ConfirmingBus()
    cache = chain(bus, clock)
    assert cache.stats()["bus"] == "starting"
    assert cache.get("k", lambda: "v") == "v"  # loaded: memory had nothing
    assert cache.get("k", lambda: "never") == "v"  # memory, within the bound
    assert bus_counts(cache) == (1, 1, 0, 0)
    assert cache.stats()["bus_disconnects"] == 0
    bus.confirm()
    assert cache.get("k", lambda: "again") == "again"  # memory was dropped at the confirmation
    assert cache.get("k", lambda: "never") == "again"
    assert bus_counts(cache) == (1, 1, 0, 0)  # connected: neither


def test_a_first_subscription_that_fails_counts_the_reads_after_it_as_down(
    clock: FakeClock,
) -> None:
    bus = ConfirmingBus()
    cache = chain(bus, clock)
    assert cache.get("k", lambda: "v") == "v"
    bus.fail()
    assert cache.stats()["bus"] == "down"
    assert cache.get("k", lambda: "w") == "w"  # memory was dropped on the way down
    assert cache.get("k", lambda: "never") == "w"
    assert bus_counts(cache) == (0, 1, 1, 1)
    assert cache.stats()["bus_disconnects"] == 1


def test_only_a_bus_that_declares_it_starts_unconfirmed(clock: FakeClock) -> None:
    """The capability's default (``BusBase``) is off, and a bus that is no ``BusBase`` has
    it off too: its chain counts it connected from ``subscribe`` (a write announced before
    its server took the subscription is missed, as the docs say)."""
    assert BusBase.confirms_subscription is False
    assert chain(ConfirmingBus(), clock).stats()["bus"] == "starting"
    assert chain(LocalBus(), clock).stats()["bus"] == "connected"
    assert chain(PlainBus(), clock).stats()["bus"] == "connected"


@pytest.mark.parametrize("down", [False, True], ids=["starting", "down"])
@pytest.mark.parametrize("read", ["get", "get_many"])
def test_a_read_memory_answers_while_bounded_counts_as_its_hit_and_a_read_saved(
    clock: FakeClock, read: str, down: bool
) -> None:
    """A ``get`` that memory answered while the bus was starting or down counted neither
    memory's hit (nor, loaded, its miss) nor a read saved, where ``get_many`` of the same key
    counted them: at every process start and in every outage, reads served from memory were
    missing from the hit ratio and the reads (and DynamoDB read units) saved."""
    bus = ConfirmingBus()
    cache = chain(bus, clock)
    if down:
        bus.fail()
    assert cache.get("k", lambda: "v") == "v"  # memory had nothing: its miss, then a load
    if read == "get":
        assert cache.get("k", lambda: "never") == "v"
    else:
        assert cache.get_many(["k"], lambda keys: dict.fromkeys(keys, "never")) == {"k": "v"}
    stats = cache.stats()
    memory = stats["tiers"][0]
    assert (memory["hits"], memory["misses"], stats["loads"]) == (1, 1, 1)
    assert stats["source_reads_saved"] == 1
    assert bus_counts(cache) == ((0, 0, 1, 1) if down else (1, 1, 0, 0))


@pytest.mark.anyio
async def test_the_asyncio_chain_counts_memory_s_serves_while_bounded_too(clock: FakeClock) -> None:
    """The same read on the asyncio face, whose misses take the same steps."""
    cache = AsyncTieredCache(
        [MemoryTier(ttl=600, clock=clock)],
        ttl=600,
        clock=clock,
        bus=ConfirmingBus(),
        max_stale_when_disconnected=60,
    )

    async def load(value: str) -> str:
        return value

    assert await cache.get("k", lambda: load("v")) == "v"
    assert await cache.get("k", lambda: load("never")) == "v"
    stats = cache.stats()
    memory = stats["tiers"][0]
    assert (memory["hits"], memory["misses"], stats["source_reads_saved"]) == (1, 1, 1)
    assert stats["bus_starting_served"] == 1
    await cache.aclose()


# -- every read counted once: memory's hit or miss, and served or bypassed --------------------


def bounded_counts(cache: TieredCache | AsyncTieredCache, down: bool) -> tuple[int, int]:
    """``(served, bypassed)`` of the bus state the test put the chain in."""
    stats = cache.stats()
    state = "down" if down else "starting"
    return stats.get(f"bus_{state}_served", 0), stats.get(f"bus_{state}_bypasses", 0)


def read_counts(cache: TieredCache | AsyncTieredCache, down: bool) -> tuple[int, int, int]:
    """Memory's ``(hits, misses)`` and the reads past it of the bus state the test set."""
    memory = cache.stats()["tiers"][0]
    return memory["hits"], memory["misses"], bounded_counts(cache, down)[1]


@pytest.mark.parametrize("down", [False, True], ids=["starting", "down"])
@pytest.mark.parametrize("read", ["get", "get_many"])
def test_a_read_past_memory_while_bounded_counts_a_bypass_on_every_read_path(
    clock: FakeClock, read: str, down: bool
) -> None:
    """A miss, a hit, then a copy past the bound: get counted (served, bypassed) (1, 2);
    get_many counted (1, 0), its reads past memory on no counter."""
    bus = ConfirmingBus()
    cache = chain(bus, clock)
    if down:
        bus.fail()

    def reread() -> None:
        if read == "get":
            assert cache.get("k", lambda: "v") == "v"
        else:
            assert cache.get_many(["k"], lambda keys: dict.fromkeys(keys, "v")) == {"k": "v"}

    reread()  # memory had nothing
    reread()  # memory's copy, within the bound
    clock.advance(61)
    reread()  # memory's copy is past the bound
    memory = cache.stats()["tiers"][0]
    assert (memory["hits"], memory["misses"]) == (1, 2)
    assert bounded_counts(cache, down) == (1, 2)


@pytest.mark.parametrize("bound", [60, 0], ids=["bounded", "bypassed"])
def test_a_get_that_joins_a_load_while_the_bus_is_down_counts_memory_s_miss_and_a_bypass(
    clock: FakeClock, bound: float
) -> None:
    """Ten threads read one key while the bus is down: one loads, nine join its load. The L1
    lookup leaves memory to the read then, which the flight's leader alone made: memory
    counted 1 miss for 10 reads (get_many, and every read while connected, count 10). With
    memory bypassed (bound 0) it is not read: no miss, and each read one bypass (none was
    counted: ``assert (0, 0, 0) == (0, 0, 10)``)."""
    bus = ConfirmingBus()
    cache = chain(bus, clock, bound=bound)
    bus.fail()
    go = threading.Event()

    def load() -> str:
        go.wait()
        return "v"

    readers = [threading.Thread(target=lambda: cache.get("k", load)) for _ in range(10)]
    for reader in readers:
        reader.start()
    until(lambda: cache.stats()["singleflight_waits"] == 9, "nine readers joined the load")
    go.set()
    for reader in readers:
        reader.join()
    assert cache.stats()["loads"] == 1
    assert read_counts(cache, True) == (0, 10 if bound else 0, 10)


@pytest.mark.anyio
async def test_an_asyncio_get_that_joins_a_load_while_bounded_counts_memory_s_miss_too(
    clock: FakeClock,
) -> None:
    bus = ConfirmingBus()
    cache = chain(bus, clock, AsyncTieredCache)
    bus.fail()
    go = asyncio.Event()

    async def load() -> str:
        await go.wait()
        return "v"

    readers = [asyncio.ensure_future(cache.get("k", load)) for _ in range(10)]
    await async_until(lambda: cache.stats()["singleflight_waits"] == 9, "nine joined the load")
    go.set()
    assert await asyncio.gather(*readers) == ["v"] * 10
    stats = cache.stats()
    memory = stats["tiers"][0]
    assert (memory["hits"], memory["misses"], stats["loads"]) == (0, 10, 1)
    assert bounded_counts(cache, True) == (0, 10)
    await cache.aclose()


class SharedTier(MemoryTier):
    """A tier shared between processes (as Redis is): not the bus's to keep coherent."""

    local = False


def test_a_shared_first_tier_counts_each_miss_once_while_the_bus_is_down(
    clock: FakeClock,
) -> None:
    """The L1 lookup reads a shared tier 0 whatever the bus (only in-process memory is left to
    the read while it is down): its miss was counted there and again by the read."""
    bus = ConfirmingBus()
    cache = chain(bus, clock, tier=SharedTier)
    bus.fail()
    assert cache.get("k", lambda: "v") == "v"
    assert cache.get("k", lambda: "never") == "v"
    first = cache.stats()["tiers"][0]
    assert (first["hits"], first["misses"]) == (1, 1)


# -- memory bypassed (max_stale_when_disconnected = 0): every read a bypass ------------------


@pytest.mark.parametrize("down", [False, True], ids=["starting", "down"])
@pytest.mark.parametrize("read", ["get", "get_many", "lookup_many", "cached"])
def test_every_read_past_a_bypassed_memory_counts_one_bypass(
    clock: FakeClock, read: str, down: bool
) -> None:
    """With ``max_stale_when_disconnected = 0`` memory is bypassed while the bus is down or
    starting: no read counted memory's hit or miss, and none counted a bypass either, so
    hits + misses + bypasses fell short of the reads by every read of the outage."""
    bus = ConfirmingBus()
    cache = chain(bus, clock, bound=0)
    if down:
        bus.fail()

    @cache.cached(key="{name}")
    def decorated(name: str) -> str:
        return "v"

    for _ in range(3):
        if read == "get":
            assert cache.get("k", lambda: "v") == "v"
        elif read == "get_many":
            assert cache.get_many(["k", "j"], lambda keys: dict.fromkeys(keys, "v")) == {
                "k": "v",
                "j": "v",
            }
        elif read == "lookup_many":
            assert cache.lookup_many(["k", "j"]) == {}
        else:
            assert decorated("k") == "v"
    reads = 6 if read in ("get_many", "lookup_many") else 3
    assert read_counts(cache, down) == (0, 0, reads)  # failed: (0, 0, 0) for get
    bus.confirm()  # connected: memory counts again, and no read is a bypass
    assert cache.get("k", lambda: "v") == "v"
    assert read_counts(cache, down) == (0, 1, reads)


@pytest.mark.anyio
@pytest.mark.parametrize("read", ["get", "get_many", "lookup_many", "joined"])
async def test_every_asyncio_read_past_a_bypassed_memory_counts_one_bypass(
    clock: FakeClock, read: str
) -> None:
    bus = ConfirmingBus()
    cache = chain(bus, clock, AsyncTieredCache, bound=0)
    bus.fail()
    go = asyncio.Event()

    async def load() -> str:
        await go.wait()
        return "v"

    async def load_many(keys: list[str]) -> dict[str, str]:
        return dict.fromkeys(keys, "v")

    if read == "joined":
        readers = [asyncio.ensure_future(cache.get("k", load)) for _ in range(10)]
        await async_until(lambda: cache.stats()["singleflight_waits"] == 9, "nine joined")
        go.set()
        assert await asyncio.gather(*readers) == ["v"] * 10
        reads = 10
    else:
        go.set()
        for _ in range(3):
            if read == "get":
                assert await cache.get("k", load) == "v"
            elif read == "get_many":
                assert await cache.get_many(["k", "j"], load_many) == {"k": "v", "j": "v"}
            else:
                assert await cache.lookup_many(["k", "j"]) == {}
        reads = 3 if read == "get" else 6
    assert read_counts(cache, True) == (0, 0, reads)
    await cache.aclose()
