"""A fail-safe rest on an outage copy in memory is never written into Redis above it.

A chain whose memory tier comes after Redis (``[redis, memory]``), its bus down: memory keeps
what it is filled with for ``max_stale_when_disconnected`` (an outage copy: another process's
invalidation of the key reaches Redis and not this memory). Another process invalidates a key
there; past the copy's freshness, this process's next read misses Redis, finds the outage copy
in memory, stale, and its load fails: fail-safe serves the copy and rests the source on it
(``fail_safe_throttle``: the copy served as fresh for a while, so the failing source is not
asked by every read). Until 2026-12-08 the rest wrote it into tier 0, whatever tier it was
found in: into Redis, where every process read the old value the other process had deleted
(``Fence.copy_targets`` kept the copy-ups out of Redis, not the rest). The rest now goes
through the same home (``Fence.rest_targets``): here into memory itself, where the copy was,
within its own bound; the source still rests (one load for two reads).

Three ways to the rest, both faces: a ``get`` whose load fails (``stale_while_revalidate``
off), a ``get_many`` whose batch fails, a ``get`` whose background refresh fails. Leases off:
a leasing Redis takes no fill without its lease, and the rest carries none.

Seen failing first (on main, 293e1e9; all six cases)::

    assert other.get("k", lambda: "new") == "new"
    AssertionError: assert 'old' == 'new'

Real parts: a private redis-server for the tier, another for the bus, killed (the bus down
for the chain, the tier up); the other process is a chain of the Redis tier alone. The
chain's clock is a fake one (to pass the copy's freshness without waiting).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.polling import async_until, eventually
from tiered_cache.testing.servers import RedisServer

from .test_redis_first_joined_bypass import settings as redis_first

#: The chain's freshness; the clock moves past it (the outage copy's bound is 60 s).
TTL = 10.0
WAYS = ["get", "get_many", "refresh"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Failing(Exception):
    """The source failing (a throttle, an outage)."""


def settings(tier_url: str, bus_url: str, namespace: str, way: str) -> dict[str, Any]:
    """Redis first, memory below it, the bus on a server of its own (outage copies kept 60 s);
    leases off; the stale copy served at once and refreshed only for ``"refresh"``."""
    return {
        **redis_first(tier_url, bus_url, namespace),
        "ttl": f"{TTL}s",
        "protection": {
            "lease": "off",
            "stale_while_revalidate": way == "refresh",
            "fail_safe_throttle": "5s",
            "soft_timeout": None,
            "early_refresh_beta": 0.0,
        },
    }


def redis_alone(url: str, namespace: str) -> TieredCache:
    return TieredCache.from_config(
        namespace=namespace, tiers=[{"kind": "redis", "url": url, "timeout": "2s"}], ttl="10m"
    )


class Source:
    """Counts its loads; serves ``value`` or fails."""

    def __init__(self) -> None:
        self.loads = 0
        self.value: str | None = "old"

    def one(self, key: str) -> str:
        self.loads += 1
        if self.value is None:
            raise Failing(key)
        return self.value

    def many(self, keys: list[str]) -> dict[str, str]:
        return {key: self.one(key) for key in keys}

    async def aone(self, key: str) -> str:
        return self.one(key)

    async def amany(self, keys: list[str]) -> dict[str, str]:
        return self.many(keys)


def read(cache: TieredCache, way: str, source: Source) -> Any:
    if way == "get_many":
        return cache.get_many(["k"], source.many)["k"]
    value = cache.get("k", lambda: source.one("k"))
    if way == "refresh":
        assert cache.wait_background(10)
    return value


async def aread(cache: AsyncTieredCache, way: str, source: Source) -> Any:
    if way == "get_many":
        return (await cache.get_many(["k"], source.amany))["k"]

    async def load() -> str:
        return await source.aone("k")

    value = await cache.get("k", load)
    if way == "refresh":
        assert await cache.wait_background(10)
    return value


@pytest.mark.parametrize("way", WAYS)
def test_a_rest_on_an_outage_copy_in_memory_stays_out_of_redis(
    redis_server: RedisServer, bus_server: RedisServer, namespace: str, way: str
) -> None:
    clock = FakeClock(time.time())
    config = settings(redis_server.url, bus_server.url, namespace, way)
    cache = TieredCache.from_config(**config, clock=clock)
    other = redis_alone(redis_server.url, namespace)
    source = Source()
    try:
        assert eventually(lambda: cache.stats()["bus"] == "connected", 10)
        bus_server.kill()
        assert eventually(lambda: cache.stats()["bus"] == "down", 10)
        assert read(cache, way, source) == "old"  # loaded: in Redis, and memory's copy
        other.invalidate("k")  # the source changed; unheard here (the bus is down)
        clock.advance(TTL + 1)  # memory's copy is stale now, still within its bound
        source.value = None  # ... and the source fails
        assert read(cache, way, source) == "old"  # fail-safe: the stale copy served
        assert cache.stats()["stale_served_on_error" if way != "refresh" else "refresh_failures"]
        # The source rests (the copy served as fresh, in memory): no new load ...
        loads = source.loads
        assert read(cache, way, source) == "old"
        assert source.loads == loads
        # ... and the rest is this process's: Redis missed the key, and misses it still.
        assert other.get("k", lambda: "new") == "new"
    finally:
        other.close()
        cache.close()


@pytest.mark.anyio
@pytest.mark.parametrize("way", WAYS)
async def test_asyncio_a_rest_on_an_outage_copy_in_memory_stays_out_of_redis(
    redis_server: RedisServer, bus_server: RedisServer, namespace: str, way: str
) -> None:
    clock = FakeClock(time.time())
    config = settings(redis_server.url, bus_server.url, namespace, way)
    cache = AsyncTieredCache.from_config(**config, clock=clock)
    other = redis_alone(redis_server.url, namespace)
    source = Source()
    try:
        await cache.lookup_many(["warm"])  # listens on this loop (a read's first call)
        await async_until(lambda: cache.stats()["bus"] == "connected", "the bus subscribed")
        bus_server.kill()
        await async_until(lambda: cache.stats()["bus"] == "down", "the bus down")
        assert await aread(cache, way, source) == "old"
        other.invalidate("k")
        clock.advance(TTL + 1)
        source.value = None
        assert await aread(cache, way, source) == "old"
        assert cache.stats()["stale_served_on_error" if way != "refresh" else "refresh_failures"]
        loads = source.loads
        assert await aread(cache, way, source) == "old"
        assert source.loads == loads
        assert other.get("k", lambda: "new") == "new"
    finally:
        other.close()
        await cache.aclose()
