"""A chain with Redis, used after close(): the chain's ChainClosedError, not the Redis tier's
bare ``RuntimeError: tier 'redis' is closed`` (which came from ``can_lease``, outside the
failure accounting)."""

from __future__ import annotations

from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, ChainClosedError, TieredCache
from tiered_cache.testing.servers import RedisServer


def settings(url: str, namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "max_entries": 100, "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "2s"},
        ],
    }


def test_a_closed_chain_with_redis_refuses_reads_and_writes(
    redis_server: RedisServer, namespace: str
) -> None:
    cache = TieredCache.from_config(**settings(redis_server.url, namespace))
    assert cache.get("k", lambda: "v") == "v"
    cache.close()
    for call in (
        lambda: cache.get("k", lambda: "v"),
        lambda: cache.get("other", lambda: "v"),
        lambda: cache.get_many(["k", "other"], lambda keys: {}),
        lambda: cache.set("k", "w"),
        lambda: cache.invalidate("k"),
    ):
        with pytest.raises(ChainClosedError):
            call()
    tiers = cache.stats()["tiers"]
    assert [(tier["errors"], tier.get("breaker")) for tier in tiers] == [
        (0, None),
        (0, "closed"),
    ]


@pytest.mark.anyio
async def test_a_closed_async_chain_with_redis_refuses_reads_and_writes(
    redis_server: RedisServer, namespace: str
) -> None:
    cache = AsyncTieredCache.from_config(**settings(redis_server.url, namespace))

    async def load() -> str:
        return "v"

    assert await cache.get("k", load) == "v"
    await cache.aclose()
    with pytest.raises(ChainClosedError):
        await cache.get("other", load)
    with pytest.raises(ChainClosedError):
        await cache.set("k", "w")
    assert [tier["errors"] for tier in cache.stats()["tiers"]] == [0, 0]
