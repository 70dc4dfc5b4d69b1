"""A value the Redis tier's codec cannot store is refused before anything is sent: the
source keeps its old item, Redis its old entry and its lease keys, the bus hears nothing.

Before, the source took the value first (a table now held what no read could cache: every
later read of the key failed with the same ``CodecError``), and the write then dropped the key
from every tier and process: on a chain without a source (Django's backend) the old value
was lost, and every process was told.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, RedisTier

from tiered_cache import AsyncTieredCache, CodecError, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.buses import CuttableBus
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource, DictSource

#: A value json cannot hold, alone and inside a container.
UNENCODABLE = [object(), {"a": [1, object()]}]
LEASES = ["auto", "off"]


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server for this test alone: the assertions count every command the server ran,
    and the session's shared server also serves what earlier tests left running (a full run
    counted one command more than the refused write, which sent none)."""
    with RedisServer() as server:
        yield server


def commands(client: redis.Redis) -> int:
    """Commands Redis has run, the INFO calls that ask it left out."""
    stats = client.info("commandstats")
    return sum(int(row["calls"]) for name, row in stats.items() if name != "cmdstat_info")


def written(how: str, bad: Any) -> dict[str, Any]:
    return {"k": bad} if how == "set" else {"j": "fine", "k": bad}


#: How the value is written, and whether the chain has a source.
CASES = [(how, sourced) for how in ("set", "set_many") for sourced in (True, False)]


@pytest.mark.parametrize("bad", UNENCODABLE)
@pytest.mark.parametrize("lease", LEASES)
@pytest.mark.parametrize("case", CASES)
def test_a_value_the_codec_refuses_is_refused_before_anything_is_sent(
    own_server: RedisServer, namespace: str, bad: Any, lease: str, case: tuple[str, bool]
) -> None:
    how, sourced = case
    bus = CuttableBus()
    source = DictSource({"k": "old"}) if sourced else None
    tier = RedisTier(redis.Redis.from_url(own_server.url), namespace=namespace)
    cache = TieredCache([MemoryTier(), tier], source, bus=bus, protection=Protection(lease=lease))
    cache.set("k", "old")
    client = redis.Redis.from_url(own_server.url)
    before, heard = commands(client), len(bus.heard)
    with pytest.raises(CodecError):
        if how == "set":
            cache.set("k", bad)
        else:
            cache.set_many(written(how, bad))
    assert commands(client) == before  # failed: Redis ran the write's commands
    assert len(bus.heard) == heard
    assert source is None or source.items == {"k": "old"}
    assert cache.get("k") == "old"
    client.close()
    cache.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("lease", LEASES)
@pytest.mark.parametrize("case", CASES)
async def test_an_async_value_the_codec_refuses_is_refused_before_anything_is_sent(
    own_server: RedisServer, namespace: str, lease: str, case: tuple[str, bool]
) -> None:
    how, sourced = case
    bus = CuttableBus()
    source = AsyncDictSource({"k": "old"}) if sourced else None
    tier = AsyncRedisTier(aioredis.Redis.from_url(own_server.url), namespace=namespace)
    cache = AsyncTieredCache(
        [MemoryTier(), tier], source, bus=bus, protection=Protection(lease=lease)
    )
    await cache.set("k", "old")
    client = redis.Redis.from_url(own_server.url)
    before, heard = commands(client), len(bus.heard)
    with pytest.raises(CodecError):
        if how == "set":
            await cache.set("k", UNENCODABLE[0])
        else:
            await cache.set_many(written(how, UNENCODABLE[0]))
    assert commands(client) == before  # failed: Redis ran the write's commands
    assert len(bus.heard) == heard
    assert source is None or source.inner.items == {"k": "old"}
    assert await cache.get("k") == "old"
    client.close()
    await cache.aclose()
