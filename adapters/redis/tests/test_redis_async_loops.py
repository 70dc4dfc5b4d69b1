"""One asyncio chain kept across event loops (a job runner that runs each job in
``asyncio.run``): the Redis tier's connections belong to the loop that opened them, and the
next loop must not try them."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tiered_cache_redis import AsyncRedisTier, make_async_client

from tiered_cache import AsyncTieredCache, EventLoopConflict, MemoryTier
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


def test_a_second_event_loop_running_at_once_is_refused_before_any_tier_is_asked(
    redis_server: RedisServer, namespace: str
) -> None:
    """Two threads, each with its loop, one chain: the second loop's calls failed inside
    redis-py (``attached to a different loop``), 59 to 112 errors of the tier in about 420
    calls, each failed delete an old value left in Redis, and nothing said it was not
    supported. Seen failing: the second loop's get read through (no error raised)."""
    source = AsyncDictSource({"k": 1})
    cache = AsyncTieredCache(
        [
            MemoryTier(max_entries=2),
            AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace),
        ],
        source,
        namespace=namespace,
    )
    holding, done = threading.Event(), threading.Event()

    async def first() -> None:
        assert await cache.get("k") == 1
        holding.set()
        while not done.is_set():  # the first loop runs on
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=lambda: asyncio.run(first()), daemon=True)
    thread.start()
    assert holding.wait(10)
    before = cache.stats()["tiers"][1]

    async def second() -> None:
        with pytest.raises(EventLoopConflict):
            await cache.get("j")
        with pytest.raises(EventLoopConflict):
            await cache.get_many(["j", "k"])
        with pytest.raises(EventLoopConflict):
            await cache.invalidate("k")
        with pytest.raises(EventLoopConflict):
            await cache.set("k", 2)

    try:
        asyncio.run(second())
    finally:
        done.set()
        thread.join(10)
    after = cache.stats()["tiers"][1]
    assert (after["hits"], after["misses"], after["errors"]) == (
        before["hits"],
        before["misses"],
        before["errors"],
    )
    assert source.inner.loads == ["k"]

    async def next_job() -> None:  # the first loop ended: one loop after another is fine
        source.inner.write("k", 3)
        await cache.invalidate("k")
        assert await cache.get("k") == 3
        await cache.aclose()

    asyncio.run(next_job())
    assert cache.stats()["tiers"][1]["errors"] == 0
