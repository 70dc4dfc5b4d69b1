"""A value larger than the Redis tier's ``max_value_size`` is not kept there: its key's older
copy is deleted (never served again), the write goes on, and the tier counts it.

Before, no bound: a 600 MB value (over Redis's own 512 MB ``proto-max-bulk-len``) was sent
whole, Redis reset the connection after 25 s, and the write counted as the tier failing (five
such open its breaker for every key); a value kept but too large to read within the tier's
``timeout`` fails every read of it the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, RedisTier

from tiered_cache import AsyncTieredCache, ConfigError, MemoryTier, TieredCache
from tiered_cache.contrib.series import series
from tiered_cache.protection import Protection
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource, DictSource

LIMIT = 1000
SMALL = "s" * 10
LARGE = "L" * (2 * LIMIT)


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def chain(
    url: str, namespace: str, source: DictSource, lease: str = "auto", **redis_tier: Any
) -> TieredCache:
    tier = RedisTier(
        redis.Redis.from_url(url, socket_timeout=2.0),
        namespace=namespace,
        **{"max_value_size": LIMIT, **redis_tier},
    )
    return TieredCache(
        [MemoryTier(), tier],
        source=source,
        namespace=namespace,
        protection=Protection(lease=lease),
    )


@pytest.mark.parametrize("lease", ["auto", "off"])
def test_a_write_over_the_bound_deletes_the_older_copy_and_is_counted_not_failed(
    redis_server: RedisServer,
    raw: redis.Redis,
    namespace: str,
    lease: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = DictSource({"k": SMALL})
    writer = chain(redis_server.url, namespace, source, lease)
    other = chain(redis_server.url, namespace, source, lease)
    with writer, other:
        assert writer.get("k") == SMALL
        assert raw.exists(f"{namespace}:k") == 1  # the small value is kept
        with caplog.at_level(logging.WARNING, logger="tiered_cache_redis.tier"):
            writer.set("k", LARGE)
        logged = [r for r in caplog.records if r.__dict__.get("event") == "too_large"]
        assert source.items["k"] == LARGE  # the write stands
        assert raw.exists(f"{namespace}:k") == 0  # the old copy is gone, the large one not kept
        assert writer.get("k") == LARGE  # the writer's memory keeps it
        assert other.get("k") == LARGE  # another process: from the source, not a stale SMALL
        stats = writer.stats()["tiers"][1]
        assert (stats["too_large"], stats["errors"]) == (1, 0)
        assert other.stats()["tiers"][1]["too_large"] == 1  # its fill was not kept either
        assert raw.exists(f"{namespace}:k") == 0
        [record] = logged
        assert "over max_value_size (1000): not kept" in record.getMessage()
        assert "k" not in record.__dict__  # the key is never logged raw
        published = {item.spec.name: item.samples for item in series(writer.stats())}
        assert published["tier_too_large"] == [({"namespace": namespace, "tier": "redis"}, 1.0)]


def test_a_read_through_fill_over_the_bound_is_served_and_not_kept(
    redis_server: RedisServer, raw: redis.Redis, namespace: str
) -> None:
    source = DictSource({"big": LARGE, "small": SMALL, "edge": "e" * (LIMIT - 2)})
    with chain(redis_server.url, namespace, source) as cache:
        assert cache.get_many(["big", "small", "edge"]) == {
            "big": LARGE,
            "small": SMALL,
            "edge": "e" * (LIMIT - 2),  # json's quotes make it LIMIT bytes: kept
        }
        assert cache.get("big") == LARGE
        assert [raw.exists(f"{namespace}:{key}") for key in ("big", "small", "edge")] == [0, 1, 1]
        assert cache.stats()["tiers"][1]["too_large"] == 1


def test_a_tier_with_no_bound_keeps_any_value(
    redis_server: RedisServer, raw: redis.Redis, namespace: str
) -> None:
    with chain(redis_server.url, namespace, DictSource({}), max_value_size=None) as cache:
        cache.set("k", LARGE)
        assert raw.exists(f"{namespace}:k") == 1
        assert cache.stats()["tiers"][1]["too_large"] == 0


def test_the_default_bound_is_a_mebibyte(
    redis_server: RedisServer, raw: redis.Redis, namespace: str
) -> None:
    tier = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    with TieredCache([MemoryTier(), tier], source=DictSource({})) as cache:
        cache.set("mib", "m" * (1024 * 1024 - 2))
        cache.set("over", "o" * (1024 * 1024 - 1))
        assert [raw.exists(f"{namespace}:{key}") for key in ("mib", "over")] == [1, 0]


def test_the_setting_reaches_the_tier(
    redis_server: RedisServer, raw: redis.Redis, namespace: str
) -> None:
    with TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory"},
            {"kind": "redis", "url": redis_server.url, "timeout": "2s", "max_value_size": "1KB"},
        ],
        bus={"kind": "off"},
    ) as cache:
        cache.set("fits", "f" * 900)
        cache.set("over", "o" * 1100)
        assert [raw.exists(f"{namespace}:{key}") for key in ("fits", "over")] == [1, 0]


@pytest.mark.parametrize("bad", [0, -1, "1 parsec", True])
def test_a_wrong_bound_names_the_field(redis_server: RedisServer, bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"tiers\[1\]\.max_value_size"):
        TieredCache.from_config(
            tiers=[
                {"kind": "memory"},
                {"kind": "redis", "url": redis_server.url, "max_value_size": bad},
            ],
            bus={"kind": "off"},
        )


def test_the_asyncio_tier_keeps_the_same_bound(
    redis_server: RedisServer, raw: redis.Redis, namespace: str
) -> None:
    raw.set(f"{namespace}:warm", b"")  # the server answers before the loop starts
    source = AsyncDictSource({"k": SMALL})

    async def run() -> tuple[Any, Any, dict[str, Any]]:
        tier = AsyncRedisTier(
            aioredis.Redis.from_url(redis_server.url), namespace=namespace, max_value_size=LIMIT
        )
        cache = AsyncTieredCache(
            [MemoryTier(), tier], source=source, protection=Protection(lease="auto")
        )
        async with cache:
            first = await cache.get("k")
            await cache.set("k", LARGE)
            memory = await cache.get("k")
            cache.tiers[0].clear()
            again = await cache.get("k")  # Redis holds nothing: from the source
            assert (first, memory) == (SMALL, LARGE)
            return again, source.inner.items["k"], cache.stats()["tiers"][1]

    again, stored, stats = asyncio.run(run())
    assert (again, stored) == (LARGE, LARGE)
    assert raw.exists(f"{namespace}:k") == 0
    assert (stats["too_large"], stats["errors"]) == (2, 0)  # the write, then the refill
