"""The asyncio Redis tier's reads near the wire (tiered_cache_redis.async_wire) keep
``redis.asyncio``'s behaviour: the same replies and errors, a small pool never parked empty,
a cancelled read that leaves nothing behind for the next one, a server restart survived."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, make_async_client
from tiered_cache_redis.async_wire import AsyncClientReads, AsyncWireReader, async_reads_for

from tiered_cache.testing.servers import FaultProxy, RedisCluster, RedisServer
from tiered_cache.tier import MISSING, Entry


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_plain_clients_read_near_the_wire_others_through_redis_asyncio(
    redis_server: RedisServer, redis_cluster: RedisCluster
) -> None:
    pooled = make_async_client(redis_server.url)
    single = aioredis.Redis.from_url(redis_server.url, single_connection_client=True)
    cluster = make_async_client(redis_cluster.url, cluster=True)
    assert isinstance(async_reads_for(pooled), AsyncWireReader)
    assert isinstance(async_reads_for(single), AsyncClientReads)  # one socket under its lock
    assert isinstance(async_reads_for(cluster), AsyncClientReads)
    for client in (pooled, single, cluster):
        await client.aclose()


@pytest.mark.anyio
async def test_get_and_mget_read_what_redis_holds(
    redis_server: RedisServer, namespace: str
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    reader = AsyncWireReader(client)
    names = [f"{namespace}:{i}" for i in range(5)] + [f"{namespace}:é \r\n$*"]
    await client.mset({name: f"v{i}".encode() for i, name in enumerate(names[:3] + names[5:])})
    assert await reader.get(names[0]) == b"v0"
    assert await reader.get(names[3]) is None
    assert await reader.mget(names) == [b"v0", b"v1", b"v2", None, None, b"v3"]
    await client.hset(f"{namespace}:h", "f", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):  # as redis.asyncio's GET
        await reader.get(f"{namespace}:h")
    assert await reader.get(names[1]) == b"v1"  # the connection is still in step
    await reader.aclose()
    await client.aclose()


@pytest.mark.anyio
async def test_a_small_pool_is_never_parked_empty(
    redis_server: RedisServer, namespace: str
) -> None:
    """With a pool of one connection nothing is parked: a write after a read still gets one."""
    client = make_async_client(redis_server.url, timeout=0.5, pool_size=1)
    tier = AsyncRedisTier(client, namespace=namespace)
    await tier.set("k", Entry("v", 0.0))
    for _ in range(3):
        got = await tier.get("k")
        assert got is not MISSING and got.value == "v"
        await tier.set("k", Entry("v", 0.0))  # times out if a read kept the connection
    await tier.clear()
    await tier.aclose()


@pytest.mark.anyio
async def test_a_cancelled_read_leaves_no_reply_for_the_next_one(
    redis_server: RedisServer, namespace: str
) -> None:
    """A read cancelled while its reply is on the way (its caller went away) must not leave
    that reply on a parked connection, where the next read would take it for its own."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        client = aioredis.Redis.from_url(proxy.url("redis"))
        tier = AsyncRedisTier(client, namespace=namespace)
        await tier.set("a", Entry("value of a", 0.0))
        await tier.set("b", Entry("value of b", 0.0))
        assert (await tier.get("a")) is not MISSING  # a connection is parked now
        proxy.delay(0.3)
        slow = asyncio.create_task(tier.get("a"))
        await asyncio.sleep(0.1)  # sent, its reply held back by the proxy
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        proxy.restore()
        await asyncio.sleep(0.4)  # the held-back reply has arrived wherever it goes
        got = await tier.get("b")
        assert got is not MISSING and got.value == "value of b"
        await tier.aclose()


@pytest.mark.anyio
async def test_a_parked_connection_survives_a_server_restart(namespace: str) -> None:
    """The parked connection's socket dies with the server; the next read reconnects (the
    connection's own retry, as redis.asyncio does), it does not fail."""
    with RedisServer() as server:
        tier = AsyncRedisTier(make_async_client(server.url, timeout=2.0), namespace=namespace)
        await tier.set("k", Entry("v", 0.0))
        assert (await tier.get("k")) is not MISSING  # a connection is parked now
        server.kill()
        server.start()
        await tier.set("k", Entry("after", 0.0))
        got = await tier.get("k")
        assert got is not MISSING and got.value == "after"
        await tier.aclose()
