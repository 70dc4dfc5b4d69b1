"""One asyncio chain kept across event loops (a job runner that runs each job in
``asyncio.run``): the Redis tier's connections belong to the loop that opened them, and the
next loop must not try them."""

from __future__ import annotations

import asyncio

from tiered_cache_redis import AsyncRedisTier, make_async_client

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource


def test_a_chain_kept_across_asyncio_run_calls_reads_redis_without_an_error(
    redis_server: RedisServer, namespace: str
) -> None:
    """Seen failing: 9 errors of the Redis tier over 5 jobs (``RuntimeError: Event loop is
    closed``), from the connections the reader parked and the pool kept on the loops that
    ended; each counted for the tier's breaker."""
    source = AsyncDictSource({f"k{i}": i for i in range(20)})
    cache = AsyncTieredCache(
        [
            MemoryTier(max_entries=2),  # most reads go to Redis
            AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace),
        ],
        source,
        namespace=namespace,
        protection=Protection.never_stale(lease_ttl=30.0, lease_wait=30.0, lease_poll=0.01),
    )

    async def job(n: int) -> None:
        for i in range(20):
            assert await cache.get(f"k{i}") == source.inner.load(f"k{i}")
        source.inner.write("k3", f"job {n}")
        await cache.invalidate("k3")

    for n in range(5):
        asyncio.run(job(n))
    asyncio.run(cache.aclose())
    redis_tier = cache.stats()["tiers"][1]
    assert redis_tier["hits"] > 0  # Redis did serve reads
    assert redis_tier["errors"] == 0
