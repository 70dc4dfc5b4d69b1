"""A copy memory kept while the bus is down is never copied up into Redis above it.

A chain whose memory tier comes after Redis (``[redis, memory]``), its bus down: memory keeps
what it is filled with for ``max_stale_when_disconnected`` (an outage copy: while nothing is
heard, another process's invalidation of the key reaches Redis and not this memory). Another
process invalidates a key there; this process's next read misses Redis, finds the outage copy
in memory and serves it (as the bound allows). Until 2026-12-07 that read also copied it up
into Redis (the copy-up of every hit below tier 0), where every process read the old value
the other process had just deleted: a copy allowed in one process for a bounded second became
the fleet's, until its expiry, past the outage. Both faces, ``get`` and ``get_many``, with
leases off (a leasing Redis takes no copy without its lease, so ``"auto"`` passed already).

Seen failing first (on main, 00141af; leases off, all four cases)::

    assert other.get("k", lambda: "new") == "new"
    AssertionError: assert 'old' == 'new'

Real parts: a private redis-server for the tier, another for the bus, killed (the bus down
for the chain, the tier up); the other process is a chain of the Redis tier alone.
"""

from __future__ import annotations

from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.polling import async_until, eventually
from tiered_cache.testing.servers import RedisServer

from .test_redis_first_joined_bypass import settings as redis_first

#: With leases off, a copy-up into Redis needs none; with them (``"auto"``) Redis takes no
#: copy without its lease (``Fence.needs_lease``), which already kept this one out: the
#: hole was a chain without leases, a key its Redis cannot lease, a shared tier without them.
LEASES = ["off", "auto"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def redis_tier(url: str) -> dict[str, Any]:
    return {"kind": "redis", "url": url, "timeout": "2s"}


def settings(tier_url: str, bus_url: str, namespace: str, lease: str) -> dict[str, Any]:
    """This process: Redis first, memory below it (``admission = "always"``), the bus on a
    server of its own, ``max_stale_when_disconnected`` 60 s."""
    return {**redis_first(tier_url, bus_url, namespace), "protection": {"lease": lease}}


def read(cache: TieredCache, method: str, value: str) -> Any:
    if method == "get":
        return cache.get("k", lambda: value)
    return cache.get_many(["k"], lambda keys: dict.fromkeys(keys, value))["k"]


async def aread(cache: AsyncTieredCache, method: str, value: str) -> Any:
    async def load() -> str:
        return value

    async def load_many(keys: list[str]) -> dict[str, str]:
        return dict.fromkeys(keys, value)

    if method == "get":
        return await cache.get("k", load)
    return (await cache.get_many(["k"], load_many))["k"]


@pytest.mark.parametrize("lease", LEASES)
@pytest.mark.parametrize("method", ["get", "get_many"])
def test_an_outage_copy_in_memory_is_not_copied_up_into_redis(
    redis_server: RedisServer, bus_server: RedisServer, namespace: str, method: str, lease: str
) -> None:
    cache = TieredCache.from_config(**settings(redis_server.url, bus_server.url, namespace, lease))
    other = TieredCache.from_config(
        namespace=namespace, tiers=[redis_tier(redis_server.url)], ttl="10m"
    )
    try:
        assert eventually(lambda: cache.stats()["bus"] == "connected", 10)
        bus_server.kill()
        assert eventually(lambda: cache.stats()["bus"] == "down", 10)
        assert read(cache, method, "old") == "old"  # loaded: in Redis, and memory's copy
        other.invalidate("k")  # the source changed; unheard here (the bus is down)
        # Memory's outage copy, within the bound: served, as max_stale_when_disconnected allows.
        assert read(cache, method, "new") == "old"
        assert cache.stats()["bus_down_served"] == 1
        # ... but not made the fleet's: Redis missed it, and misses it still.
        assert other.get("k", lambda: "new") == "new"
    finally:
        other.close()
        cache.close()


@pytest.mark.anyio
@pytest.mark.parametrize("lease", LEASES)
@pytest.mark.parametrize("method", ["get", "get_many"])
async def test_asyncio_an_outage_copy_in_memory_is_not_copied_up_into_redis(
    redis_server: RedisServer, bus_server: RedisServer, namespace: str, method: str, lease: str
) -> None:
    cache = AsyncTieredCache.from_config(
        **settings(redis_server.url, bus_server.url, namespace, lease)
    )
    other = TieredCache.from_config(
        namespace=namespace, tiers=[redis_tier(redis_server.url)], ttl="10m"
    )
    try:
        await cache.lookup_many(["warm"])  # listens on this loop (a read's first call)
        await async_until(lambda: cache.stats()["bus"] == "connected", "the bus subscribed")
        bus_server.kill()
        await async_until(lambda: cache.stats()["bus"] == "down", "the bus down")
        assert await aread(cache, method, "old") == "old"
        other.invalidate("k")
        assert await aread(cache, method, "new") == "old"
        assert cache.stats()["bus_down_served"] == 1
        assert other.get("k", lambda: "new") == "new"
    finally:
        other.close()
        await cache.aclose()
