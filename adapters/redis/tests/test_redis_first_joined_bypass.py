"""A chain whose first tier is Redis, its bus down: every read of the outage counts one
``bus_down_bypasses`` (a read served without the bus's protection, memory not answering it),
the reads that join another's load too, on both faces.

Seen failing: of ten reads of one key, one loading and nine joining its load, the counter
said 1 (the leader's): a joined read counted a bypass only when memory was tier 0.

Real parts: a private redis-server for the tier, another for the bus, killed (the bus down for
the chain, the tier up).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.polling import async_until, eventually, until
from tiered_cache.testing.servers import RedisServer

READERS = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(tier_url: str, bus_url: str, namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "tiers": [
            {"kind": "redis", "url": tier_url, "timeout": "2s"},
            {"kind": "memory", "admission": "always", "ttl": "10m"},
        ],
        "ttl": "10m",
        "bus": {
            "kind": "redis",
            "url": bus_url,
            "health_check_interval": "1s",
            "timeout": "1s",
            "max_stale_when_disconnected": "60s",
        },
    }


def read_counts(cache: TieredCache | AsyncTieredCache) -> tuple[int, int, int, int]:
    """``(loads, singleflight_waits, bus_down_served, bus_down_bypasses)``."""
    stats = cache.stats()
    return (
        stats["loads"],
        stats["singleflight_waits"],
        stats["bus_down_served"],
        stats["bus_down_bypasses"],
    )


def test_reads_joining_a_load_on_a_redis_first_chain_count_a_bypass_each(
    redis_server: RedisServer, bus_server: RedisServer, namespace: str
) -> None:
    cache = TieredCache.from_config(**settings(redis_server.url, bus_server.url, namespace))
    try:
        assert eventually(lambda: cache.stats()["bus"] == "connected", 10)
        bus_server.kill()
        assert eventually(lambda: cache.stats()["bus"] == "down", 10)
        go = threading.Event()

        def load() -> str:
            go.wait(30)
            return "v"

        got: list[Any] = []
        readers = [
            threading.Thread(target=lambda: got.append(cache.get("k", load)))
            for _ in range(READERS)
        ]
        for reader in readers:
            reader.start()
        until(lambda: cache.stats()["singleflight_waits"] == READERS - 1, "nine joined the load")
        go.set()
        for reader in readers:
            reader.join()
        assert got == ["v"] * READERS
        assert read_counts(cache) == (1, READERS - 1, 0, READERS)
    finally:
        cache.close()


@pytest.mark.anyio
async def test_asyncio_reads_joining_a_load_on_a_redis_first_chain_count_a_bypass_each(
    redis_server: RedisServer, bus_server: RedisServer, namespace: str
) -> None:
    cache = AsyncTieredCache.from_config(**settings(redis_server.url, bus_server.url, namespace))
    try:
        await cache.lookup_many(["warm"])  # listens on this loop (a read's first call)
        await async_until(lambda: cache.stats()["bus"] == "connected", "the bus subscribed")
        bus_server.kill()
        await async_until(lambda: cache.stats()["bus"] == "down", "the bus down")
        before = read_counts(cache)
        go = asyncio.Event()

        async def load() -> str:
            await go.wait()
            return "v"

        readers = [asyncio.ensure_future(cache.get("k", load)) for _ in range(READERS)]
        await async_until(
            lambda: cache.stats()["singleflight_waits"] == READERS - 1, "nine joined the load"
        )
        go.set()
        assert await asyncio.gather(*readers) == ["v"] * READERS
        counts = read_counts(cache)
        assert tuple(now - then for now, then in zip(counts, before, strict=True)) == (
            1,
            READERS - 1,
            0,
            READERS,
        )
    finally:
        await cache.aclose()
