"""A background refresh is a load of its key: a miss while it runs loads nothing beside it.

Single-flight promises one load of a key at a time in a process (docs/consistency.md). A
refresh (stale-while-revalidate here; an early XFetch refresh takes the same path) ran in a
flight table of its own, so a miss of its key meanwhile -- after an invalidation, or once the
stale copy was past serving -- started a second load of the key beside it. Now the refresh
leads a flight of the key in the readers' table: a miss the fence lets join it takes its value
(or, if the refresh fails, loads after it); one after an invalidation waits for it to end, then
loads. Memory and a private Redis, both faces.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.singleflight import FlightTable, Landing
from tiered_cache.testing import FakeClock
from tiered_cache.testing.held_loads import HeldLoads as Loads
from tiered_cache.testing.held_loads import start_async_refresh, start_refresh
from tiered_cache.testing.polling import async_until, until
from tiered_cache.testing.servers import RedisServer

TTL = 60.0
MAX_STALE = 60.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(server: RedisServer, namespace: str) -> dict[str, Any]:
    """Stale served at once while a refresh runs; no early refresh, no timeouts, no leases."""
    return {
        "namespace": namespace,
        "ttl": f"{int(TTL)}s",
        "tiers": [
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": server.url, "timeout": "5s"},
        ],
        "protection": {
            "lease": "off",
            "max_stale": f"{int(MAX_STALE)}s",
            "stale_while_revalidate": True,
            "early_refresh_beta": 0,
            "soft_timeout": None,
            "hard_timeout": None,
        },
        "bus": {"kind": "off"},
    }


def waiters(flights: FlightTable[Any], key: str) -> int:
    flight: Landing | None = flights.in_flight(key)
    return 0 if flight is None else flight.waiters


def decided(loads: Loads, flights: FlightTable[Any], count: int) -> bool:
    """The miss after the refresh began either started a load or waits on the key's flight."""
    return len(loads.started) > count or waiters(flights, "k") >= 1


#: What happens between the refresh's start and the miss: the key invalidated (the miss may
#: not take the refresh's value: it waits for it to end, then loads), or the stale copy past
#: serving (the miss joins the refresh), whose load then succeeds or fails.
CASES = ["invalidated", "expired", "expired, the refresh fails"]

#: The loads seen, and the miss's value, per case.
EXPECTED = {
    "invalidated": (["v1", "refresh", "new"], "new"),
    "expired": (["v1", "refresh"], "refresh"),
    "expired, the refresh fails": (["v1", "refresh", "new"], "new"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_miss_while_its_key_refreshes_loads_nothing_beside_the_refresh(
    redis_server: RedisServer, namespace: str, case: str
) -> None:
    clock = FakeClock(1_000_000.0)
    cache = TieredCache.from_config(clock=clock, **settings(redis_server, namespace))
    loads = Loads()
    try:
        start_refresh(cache, clock, loads, TTL + 1)
        if case == "invalidated":
            cache.invalidate("k")
        else:
            clock.advance(MAX_STALE + 1)  # past serving: a miss in every tier
        result: dict[str, object] = {}
        miss = threading.Thread(target=lambda: result.update(v=cache.get("k", loads.loader("new"))))
        miss.start()
        until(lambda: decided(loads, cache._loader.flights, 2), "the miss decided")
        assert loads.started == ["v1", "refresh"]  # no load beside the refresh
        loads.release("refresh", fail=case.endswith("fails"))
        loads.release("new")
        miss.join(10)
        assert cache.wait_background(10)
        assert (loads.started, result.get("v")) == EXPECTED[case]
        assert loads.most == 1
    finally:
        for value in ("refresh", "new"):
            loads.release(value)
        cache.close()


@pytest.mark.anyio
@pytest.mark.parametrize("case", CASES)
async def test_an_async_miss_while_its_key_refreshes_loads_nothing_beside_the_refresh(
    redis_server: RedisServer, namespace: str, case: str
) -> None:
    clock = FakeClock(1_000_000.0)
    cache = AsyncTieredCache.from_config(clock=clock, **settings(redis_server, namespace))
    loads = Loads()
    try:
        await start_async_refresh(cache, clock, loads, TTL + 1)
        if case == "invalidated":
            await cache.invalidate("k")
        else:
            clock.advance(MAX_STALE + 1)
        miss = asyncio.create_task(cache.get("k", loads.async_loader("new")))
        await async_until(lambda: decided(loads, cache._loader.flights, 2), "the miss decided")
        assert loads.started == ["v1", "refresh"]
        loads.release("refresh", fail=case.endswith("fails"))
        loads.release("new")
        value = await asyncio.wait_for(miss, 10)
        assert await cache.wait_background(10)
        assert (loads.started, value) == EXPECTED[case]
        assert loads.most == 1
    finally:
        for value in ("refresh", "new"):
            loads.release(value)
        await cache.aclose()


def test_a_refresh_run_inline_by_the_read_that_started_it_refreshes_the_key(
    redis_server: RedisServer, namespace: str
) -> None:
    """A ``background`` that runs the refresh at once, in the read that serves the stale
    value (inside that read's flight of the key): the refresh loads inside it, once, and
    fills; it neither waits for the flight it runs in nor reads as a recursive load."""
    clock = FakeClock(1_000_000.0)
    client = redis.Redis.from_url(redis_server.url)
    protection = Protection(
        lease="off", max_stale=MAX_STALE, early_refresh_beta=0, soft_timeout=None
    )
    cache = TieredCache(
        [
            MemoryTier(clock=clock),
            RedisTier(client, namespace=namespace, clock=clock),
        ],
        clock=clock,
        ttl=TTL,
        protection=protection,
        background=lambda job: job(),
    )
    loads = Loads()
    try:
        for value in ("v1", "refresh"):
            loads.release(value)
        assert cache.get("k", loads.loader("v1")) == "v1"
        clock.advance(TTL + 1)
        assert cache.get("k", loads.loader("refresh")) == "v1"  # stale; refreshed inline
        assert cache.get("k", loads.loader("new")) == "refresh"
        assert loads.started == ["v1", "refresh"]
        assert cache.stats()["refresh_failures"] == 0
    finally:
        cache.close()


def test_a_reader_beside_a_refresh_is_served_the_fresh_copy_redis_holds(
    redis_server: RedisServer, namespace: str
) -> None:
    """Another process wrote the key to Redis (no bus: this one's memory keeps the stale
    copy) while this one's refresh loads: a reader reads the tiers beside the refresh and is
    served Redis's fresh copy, copied up, without waiting for the refresh's load."""
    clock = FakeClock(1_000_000.0)
    cache = TieredCache.from_config(clock=clock, **settings(redis_server, namespace))
    other = TieredCache.from_config(clock=clock, **settings(redis_server, namespace))
    loads = Loads()
    try:
        start_refresh(cache, clock, loads, TTL + 1)
        other.set("k", "v2")
        served: list[str] = []
        reader = threading.Thread(target=lambda: served.append(cache.get("k", loads.loader("r"))))
        reader.start()
        try:
            until(lambda: served == ["v2"], "the reader served while the refresh loads")
        finally:
            loads.release("refresh")
            reader.join(10)
        assert loads.started == ["v1", "refresh"]
        stats = cache.stats()
        assert stats["singleflight_waits"] == 0
        assert stats["tiers"][1]["hits"] == 1  # the reader's, in Redis
    finally:
        loads.release("refresh")
        other.close()
        cache.close()


@pytest.mark.anyio
async def test_an_async_reader_beside_a_refresh_is_served_the_fresh_copy_redis_holds(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = FakeClock(1_000_000.0)
    cache = AsyncTieredCache.from_config(clock=clock, **settings(redis_server, namespace))
    other = AsyncTieredCache.from_config(clock=clock, **settings(redis_server, namespace))
    loads = Loads()
    try:
        await start_async_refresh(cache, clock, loads, TTL + 1)
        await other.set("k", "v2")
        reader = asyncio.create_task(cache.get("k", loads.async_loader("r")))
        try:
            await async_until(reader.done, "the reader served while the refresh loads")
        finally:
            loads.release("refresh")
        assert await reader == "v2"
        assert loads.started == ["v1", "refresh"]
        stats = cache.stats()
        assert stats["singleflight_waits"] == 0
        assert stats["tiers"][1]["hits"] == 1
    finally:
        loads.release("refresh")
        await other.aclose()
        await cache.aclose()
