"""A copy in memory is never copied up into Redis above it, the bus connected or not.

A chain whose memory tier comes after Redis (``[redis, memory]``), leases off, its bus
connected but slow (a proxy holds every chunk of its subscription back 3 s: a message in
flight, as any message is for a while). Another process invalidates a key: it deletes it from
Redis, then announces it. Before the announcement arrives, this process reads the key: Redis
misses, memory still holds the old value (allowed: the bus's delay is the bound of a memory
copy, docs/consistency.md) and serves it. Until 2026-12-08 that read also copied it up into
Redis (a hit below tier 0 went into every faster tier while the bus was connected): the
announcement, arriving after, dropped this process's memory copy, and nothing dropped the one
it had put into Redis, where every process read the value the other process had invalidated,
until its ``ttl``. The fence's check after a fill cannot catch it: the message arrives after
the fill and says nothing of Redis. So a copy an in-process tier holds is this process's
alone, whatever the bus (``Fence.copy_targets``): it may go into an in-process tier above,
never into a shared one. (With leases Redis takes no copy without its lease already.)

Both faces, ``get`` and ``get_many``.

Seen failing first (on main, 293e1e9; all four cases)::

    assert third.get("k", lambda: "new") == "new"
    AssertionError: assert 'old' == 'new'

Real parts: a private redis-server for the tier (the session's), another for the bus, reached
by this process through a :class:`~tiered_cache.testing.servers.FaultProxy` that delays it;
the writer is a ``[memory, redis]`` chain with the bus straight to its server, the third
process a chain of the Redis tier alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.polling import async_until, eventually
from tiered_cache.testing.servers import FaultProxy, RedisServer

from .test_redis_outage_copies_stay_below import aread, read

#: How long the proxy holds each chunk of the bus back: the message in flight.
DELAY = 3.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def bus_proxy(bus_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(bus_server.host, bus_server.port) as proxy:
        yield proxy


def redis_tier(url: str) -> dict[str, Any]:
    return {"kind": "redis", "url": url, "timeout": "2s"}


def reader_settings(tier_url: str, bus_url: str, namespace: str) -> dict[str, Any]:
    """This process: Redis first, memory below it, leases off; its bus's health check too
    rare to notice the delay (the bus stays connected)."""
    return {
        "namespace": namespace,
        "tiers": [redis_tier(tier_url), {"kind": "memory", "admission": "always", "ttl": "10m"}],
        "ttl": "10m",
        "protection": {"lease": "off"},
        "bus": {
            "kind": "redis",
            "url": bus_url,
            "health_check_interval": "60s",
            "timeout": "30s",
        },
    }


def writer(tier_url: str, bus_url: str, namespace: str) -> TieredCache:
    """Another process, announcing on the bus's server itself."""
    return TieredCache.from_config(
        namespace=namespace,
        tiers=[{"kind": "memory"}, redis_tier(tier_url)],
        ttl="10m",
        bus={"kind": "redis", "url": bus_url},
    )


def third(tier_url: str, namespace: str) -> TieredCache:
    """A third process reading Redis alone."""
    return TieredCache.from_config(namespace=namespace, tiers=[redis_tier(tier_url)], ttl="10m")


@pytest.fixture
def config(redis_server: RedisServer, bus_proxy: FaultProxy, namespace: str) -> dict[str, Any]:
    """This process's settings (its bus through the proxy)."""
    return reader_settings(redis_server.url, bus_proxy.url(), namespace)


@pytest.fixture
def others(
    redis_server: RedisServer, bus_server: RedisServer, namespace: str
) -> Iterator[tuple[TieredCache, ...]]:
    """The writer, subscribed, and the third process."""
    other = writer(redis_server.url, bus_server.url, namespace)
    reader = third(redis_server.url, namespace)
    try:
        assert eventually(lambda: other.stats()["bus"] == "connected", 10)
        yield other, reader
    finally:
        reader.close()
        other.close()


def invalidated_in_flight(proxy: FaultProxy, other: TieredCache) -> None:
    """The writer invalidates the key: Redis deleted, the message held back on its way here."""
    proxy.delay(DELAY)
    other.invalidate("k")


def let_through(proxy: FaultProxy, cache: TieredCache | AsyncTieredCache) -> Callable[[], bool]:
    """The message, not here yet, let through; returns the check that it arrived (the bus
    still connected: the delay was never taken for an outage)."""
    assert cache.stats().get("bus_received", 0) == 0
    proxy.delay(0)
    return lambda: cache.stats().get("bus_received", 0) >= 1 and cache.stats()["bus"] == "connected"


@pytest.mark.parametrize("method", ["get", "get_many"])
def test_a_memory_copy_read_while_an_invalidation_is_in_flight_stays_out_of_redis(
    config: dict[str, Any], bus_proxy: FaultProxy, others: tuple[TieredCache, ...], method: str
) -> None:
    other, reader = others
    cache = TieredCache.from_config(**config)
    try:
        assert eventually(lambda: cache.stats()["bus"] == "connected", 10)
        assert read(cache, method, "old") == "old"  # in Redis, and in memory
        invalidated_in_flight(bus_proxy, other)
        assert read(cache, method, "new") == "old"  # memory's copy, within the bus's delay
        assert eventually(let_through(bus_proxy, cache), 10 + DELAY)
        # The message dropped this process's copy; none was left in Redis for the others.
        assert reader.get("k", lambda: "new") == "new"
        assert read(cache, method, "newer") == "new"
    finally:
        cache.close()


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["get", "get_many"])
async def test_asyncio_a_memory_copy_read_while_an_invalidation_is_in_flight_stays_out_of_redis(
    config: dict[str, Any], bus_proxy: FaultProxy, others: tuple[TieredCache, ...], method: str
) -> None:
    other, reader = others
    cache = AsyncTieredCache.from_config(**config)
    try:
        await cache.lookup_many(["warm"])  # listens on this loop (a read's first call)
        await async_until(lambda: cache.stats()["bus"] == "connected", "the bus subscribed")
        assert await aread(cache, method, "old") == "old"
        invalidated_in_flight(bus_proxy, other)
        assert await aread(cache, method, "new") == "old"
        await async_until(let_through(bus_proxy, cache), "the message arrived", 10 + DELAY)
        assert reader.get("k", lambda: "new") == "new"
        assert await aread(cache, method, "newer") == "new"
    finally:
        await cache.aclose()
