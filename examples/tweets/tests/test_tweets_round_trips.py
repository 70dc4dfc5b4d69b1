"""The demo's Redis round trips are the requests the chain sent, as the server counts them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from tiered_cache_redis import RedisTier, make_client

from examples.tweets.round_trips import RoundTrips
from tiered_cache import TieredCache
from tiered_cache.memory import LruPolicy, MemoryTier
from tiered_cache.testing.servers import RedisServer, redis_server_binary
from tiered_cache.tier import Entry


def calls(client: redis.Redis, *commands: str) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in commands)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server


def test_round_trips_count_the_reads_sent_on_connections_kept_between_reads(
    redis_server: RedisServer,
) -> None:
    """L2 hits are GETs on the connections the Redis tier keeps checked out (wire.py): counted
    by the pool's checkouts, 50 GETs and an MGET showed as one round trip."""
    namespace = f"rt-{uuid.uuid4().hex[:8]}"
    now = time.time()
    keys = [f"tweet:{i}" for i in range(50)]
    writer = RedisTier(make_client(redis_server.url), namespace=namespace)
    writer.set_many({key: Entry(key, now, now + 600, now + 600) for key in keys})
    tier = RedisTier(make_client(redis_server.url), namespace=namespace)
    # Plain LRU: the 40 keys read again are then surely gone from memory (the default policy
    # may keep some of them back in its 10 entries).
    cache = TieredCache([MemoryTier(policy=LruPolicy(10)), tier], namespace=namespace)
    round_trips = RoundTrips()
    round_trips.attach_chain(cache)  # before the chain's first read
    raw = redis.Redis.from_url(redis_server.url)
    raw.config_resetstat()
    for key in keys:  # 50 keys through 10 entries of memory: every read an L2 hit
        assert cache.get(key) == key
    assert cache.get_many(keys[:40]) == {key: key for key in keys[:40]}  # one MGET
    sent = calls(raw, "get", "mget")
    assert sent == 51
    assert round_trips.count == sent
    assert cache.stats()["tiers"][1]["hits"] == 90
    cache.close()
    writer.clear()
    writer.close()
    raw.close()
