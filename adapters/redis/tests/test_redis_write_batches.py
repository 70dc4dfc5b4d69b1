"""A write of many keys takes their leases in one round trip.

Taken one round trip each, the leases of a large ``set_many`` were stolen over seconds on a
slow link, so that the first had expired (``lease_ttl``) before the write filled under them:
those keys were lost from every tier, Redis and memory alike, with only ``lease_lost`` to say
so (found by a test on a machine at load 16-30: 2,000 keys, 6 s, 1,130 keys lost). Here a
proxy holds every chunk back 10 ms each way: 300 keys one by one take 6 s, well past the
lease's 1 s; in one round trip, tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from tiered_cache_redis import AsyncRedisBus

from tiered_cache import AsyncTieredCache
from tiered_cache.testing.bus_chains import subscribed_chain
from tiered_cache.testing.servers import FaultProxy, RedisServer

KEYS = 300


@pytest.fixture
def slow_link(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        proxy.delay(0.01)
        yield proxy


def settings(proxy: FaultProxy, namespace: str) -> dict[str, object]:
    return {
        "namespace": namespace,
        "protection": {"lease_ttl": "1s"},
        "tiers": [
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": f"redis://{proxy.host}:{proxy.port}/0", "timeout": "5s"},
        ],
    }


def stored(redis_server: RedisServer, namespace: str) -> int:
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        return sum(1 for _ in client.scan_iter(f"{namespace}*", count=1000) if b"lease" not in _)
    finally:
        client.close()


def test_a_large_set_many_keeps_every_key_on_a_slow_link(
    redis_server: RedisServer, slow_link: FaultProxy, namespace: str
) -> None:
    items = {f"k{index}": index for index in range(KEYS)}
    # Subscribed first: what memory takes while the bus is starting is dropped once it is.
    with subscribed_chain(settings(slow_link, namespace)) as cache:
        cache.set_many(items)
        stats = cache.stats()
        assert stats["lease_lost"] == 0
        assert stats["tiers"][0]["entries"] == KEYS
        assert stats["tiers"][1]["fills"] == KEYS
    assert stored(redis_server, namespace) == KEYS


@pytest.mark.anyio
async def test_a_large_async_set_many_keeps_every_key_on_a_slow_link(
    redis_server: RedisServer, slow_link: FaultProxy, namespace: str
) -> None:
    items = {f"k{index}": index for index in range(KEYS)}
    cache = AsyncTieredCache.from_config(**settings(slow_link, namespace))
    try:
        link = cache._bus_link
        assert link is not None and isinstance(link.bus, AsyncRedisBus)
        assert await link.bus.wait_subscribed(10)  # as the threaded chain, above
        await cache.set_many(items)
        stats = cache.stats()
    finally:
        await cache.aclose()
    assert stats["lease_lost"] == 0
    assert stats["tiers"][0]["entries"] == KEYS
    assert stats["tiers"][1]["fills"] == KEYS
    assert stored(redis_server, namespace) == KEYS
