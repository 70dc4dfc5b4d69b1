"""A key UTF-8 cannot encode (a lone surrogate: a path decoded with ``surrogateescape``,
``os.fsdecode`` of bytes that are not UTF-8) is the caller's data, which Redis cannot hold:
it skips Redis (an error counted for that call) and is served through memory and the
loader, and the Redis tier's circuit breaker does not count it.

Before, the breaker counted the failed encoding as Redis failing: one request with such a
key opened it, and every process read past Redis for every key until the cool-down ended (a
client able to send such keys kept it open). (A memory-only chain holds such keys as any
other: tests/test_fast_paths.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.servers import RedisServer

HOSTILE = ["\udcff", "tweet:\udc80"]


def settings(url: str, namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "1s"},
        ],
        "ttl": "10m",
    }


SYNC_CALLS: list[Callable[[TieredCache, str], object]] = [
    lambda cache, key: cache.get(key, lambda: "loaded"),
    lambda cache, key: cache.get_many([key], lambda keys: dict.fromkeys(keys, "loaded")),
    lambda cache, key: cache.set(key, "written"),
    lambda cache, key: cache.invalidate(key),
    lambda cache, key: cache.invalidate_prefix(key),
]


def breaker_of_redis(stats: dict[str, Any]) -> tuple[Any, ...]:
    redis = stats["tiers"][1]
    return redis["breaker"], redis["breaker_opened"]


@pytest.mark.parametrize("key", HOSTILE)
def test_a_key_utf8_cannot_encode_skips_redis_without_opening_its_breaker(
    redis_server: RedisServer, namespace: str, key: str
) -> None:
    cache = TieredCache.from_config(**settings(redis_server.url, namespace))
    cache.set("other", "in redis")
    assert [call(cache, key) for call in SYNC_CALLS] == [
        "loaded",
        {key: "loaded"},
        None,
        None,
        None,
    ]
    assert cache.get(key, lambda: "again") == "again"  # invalidated, from memory too
    assert cache.get(key, lambda: "never") == "again"  # then from memory
    cache.tiers[0].clear()  # type: ignore[union-attr]
    hits = cache.stats()["tiers"][1]["hits"]
    assert cache.get("other", lambda: "loaded") == "in redis"
    assert cache.stats()["tiers"][1]["hits"] == hits + 1
    assert breaker_of_redis(cache.stats()) == ("closed", 0)
    cache.close()


@pytest.mark.parametrize("key", HOSTILE)
def test_the_async_chain_skips_redis_for_it_and_only_for_it(
    redis_server: RedisServer, namespace: str, key: str
) -> None:
    """The async tier sends the GETs of one loop tick as one MGET: a key that cannot be
    encoded must not fail the other callers' reads gathered with it."""

    def constant(value: str) -> Callable[[], Any]:
        async def load() -> str:
            return value

        return load

    async def load_many(keys: Any) -> dict[str, str]:
        return dict.fromkeys(keys, "loaded")

    async def main() -> list[Any]:
        cache = AsyncTieredCache.from_config(**settings(redis_server.url, namespace))
        await cache.set("other", "in redis")
        seen = [
            await cache.get(key, constant("loaded")),
            await cache.get_many([key], load_many),
            await cache.set(key, "written"),
            await cache.invalidate(key),
            await cache.invalidate_prefix(key),
        ]
        cache.tiers[0].clear()  # type: ignore[union-attr]
        together = await asyncio.gather(
            cache.get(key, constant("loaded")), cache.get("other", constant("not from redis"))
        )
        seen += [together, breaker_of_redis(cache.stats())]
        await cache.aclose()
        return seen

    assert asyncio.run(main()) == [
        "loaded",
        {key: "loaded"},
        None,
        None,
        None,
        ["loaded", "in redis"],
        ("closed", 0),
    ]
