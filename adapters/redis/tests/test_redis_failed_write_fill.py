"""A write whose fill of Redis fails leaves no old value there for other processes.

``set``/``set_many`` write the source, then every tier. A Redis that refused the value (a value
over ``proto-max-bulk-len`` resets the connection; a large value that takes longer than the
tier's ``timeout`` to send; a call skipped by an open breaker) kept the key's *old* value: the
call returned, the writer's memory held the new value, and every other process read the old one
from Redis (its memory copy dropped by the bus, it read Redis again) until the Redis ``ttl``. A
delete that failed is owed (docs/consistency.md, "When Redis fails"); a fill of a write that
failed now deletes the key there in its place, owed in turn if that fails too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, RedisTier

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource, DictSource

#: Over the server's proto-max-bulk-len: Redis resets the connection that sends it, and
#: answers every other call.
TOO_BIG = "x" * (2 * 1024 * 1024)
#: The tier's own bound off: the value must reach Redis to be refused there (by default the
#: tier does not send a value over 1 MiB: test_redis_value_size.py).
NO_BOUND = None


@pytest.fixture(scope="module")
def small_bulk_redis() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--proto-max-bulk-len", "1mb"]) as server:
        yield server


def stored(server: RedisServer, namespace: str) -> Any:
    """The value Redis holds for the key ``k`` of ``namespace``, read by another chain (None:
    none)."""
    with TieredCache([RedisTier(redis.Redis.from_url(server.url), namespace=namespace)]) as other:
        found = other.lookup_many(["k"]).get("k")
    return None if found is None else found.value


#: Every shape of a write: with or without a source, one key or a batch, leases or none.
SHAPES = pytest.mark.parametrize(
    ("with_source", "op", "lease"),
    [
        pytest.param(with_source, op, lease, id=f"{name}-{op}-{lease}")
        for with_source, name in ((False, "sourceless"), (True, "source"))
        for op in ("set", "set_many")
        for lease in ("auto", "off")
    ],
)


def write(cache: Any, op: str, value: Any) -> Any:
    return cache.set("k", value) if op == "set" else cache.set_many({"k": value})


@SHAPES
def test_a_write_redis_refused_leaves_no_old_value_there(
    small_bulk_redis: RedisServer, op: str, with_source: bool, lease: Literal["auto", "off"]
) -> None:
    namespace = f"fw-{uuid.uuid4().hex[:10]}"
    source = DictSource() if with_source else None
    tiers = [
        MemoryTier(),
        RedisTier(
            redis.Redis.from_url(small_bulk_redis.url),
            namespace=namespace,
            max_value_size=NO_BOUND,
        ),
    ]
    with TieredCache(tiers, source, protection=Protection(lease=lease)) as cache:
        cache.set("k", "old")
        assert stored(small_bulk_redis, namespace) == "old"
        write(cache, op, TOO_BIG)
        assert cache.stats()["tiers"][1]["errors"] >= 1  # Redis refused it: the path tested
        assert stored(small_bulk_redis, namespace) is None


@SHAPES
def test_an_async_write_redis_refused_leaves_no_old_value_there(
    small_bulk_redis: RedisServer, op: str, with_source: bool, lease: Literal["auto", "off"]
) -> None:
    namespace = f"fw-{uuid.uuid4().hex[:10]}"

    async def run() -> None:
        source = AsyncDictSource() if with_source else None
        client = aioredis.Redis.from_url(small_bulk_redis.url)
        cache = AsyncTieredCache(
            [MemoryTier(), AsyncRedisTier(client, namespace=namespace, max_value_size=NO_BOUND)],
            source,
        )
        try:
            await cache.set("k", "old")
            await write(cache, op, TOO_BIG)
            assert cache.stats()["tiers"][1]["errors"] >= 1  # Redis refused it
        finally:
            await cache.aclose()

    asyncio.run(run())
    assert stored(small_bulk_redis, namespace) is None
