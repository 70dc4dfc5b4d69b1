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
    pooled = make_async_client(redis_server.url, timeout=2.0)
    single = aioredis.Redis.from_url(redis_server.url, single_connection_client=True)
    cluster = make_async_client(redis_cluster.url, cluster=True, timeout=2.0)
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


def _calls(server: RedisServer) -> dict[str, int]:
    stats = redis.Redis.from_url(server.url).info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("get", "mget")}


@pytest.mark.anyio
async def test_the_gets_of_one_loop_tick_leave_as_one_mget(
    redis_server: RedisServer, namespace: str
) -> None:
    """A burst of single-key reads in one pass of the loop is one round trip, not one each
    (one each queued for the pool while the loop was busy, and their timeouts fired on a
    healthy Redis): 600 GETs of 300 keys are one MGET of the 300; each caller gets its own.

    What is counted is round trips, not their speed: through a link that answers late (as
    a loaded machine does, made certain here), with a socket timeout far past the delay.
    With the client's default timeout (50 ms) a reply late under load failed the test with
    a read timeout."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        proxy.delay(0.1)
        client = make_async_client(proxy.url("redis"), timeout=10.0)
        tier = AsyncRedisTier(client, namespace=namespace)
        await tier.set_many({f"k{i}": Entry(i, 0.0) for i in range(0, 300, 2)})
        before = _calls(redis_server)
        got = await asyncio.gather(*(tier.get(f"k{i % 300}") for i in range(600)))
        after = _calls(redis_server)
        assert [entry.value if entry is not MISSING else None for entry in got] == [
            i % 300 if i % 2 == 0 else None for i in range(600)
        ]
        assert {name: after[name] - before[name] for name in after} == {"get": 0, "mget": 1}
        assert await tier.get("k0") is not MISSING  # alone in its tick: a plain GET
        assert _calls(redis_server)["get"] == after["get"] + 1
        await tier.clear()
        await tier.aclose()


@pytest.mark.anyio
async def test_a_failed_mget_is_a_failure_for_each_of_its_callers(
    redis_server: RedisServer, namespace: str
) -> None:
    """Gathered reads are still counted one by one: a burst against a Redis that is gone
    fails every caller, so the breaker opens as soon as it did with one GET each."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        tier = AsyncRedisTier(
            make_async_client(proxy.url("redis"), timeout=0.2), namespace=namespace
        )
        assert await tier.get("k") is MISSING
        proxy.cut()
        results = await asyncio.gather(
            *(tier.get(f"k{i}") for i in range(5)), return_exceptions=True
        )
        assert [isinstance(result, redis.RedisError) for result in results] == [True] * 5
        await tier.aclose()


@pytest.mark.anyio
async def test_the_reads_gathered_by_a_cancelled_read_are_still_answered(
    redis_server: RedisServer, namespace: str
) -> None:
    """The first GET of a tick sends the others' names too; cancelled (its caller went away)
    before it sent them, the others are answered all the same, not cancelled with it."""
    tier = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    await tier.set_many({"a": Entry("A", 0.0), "b": Entry("B", 0.0)})
    first = asyncio.create_task(tier.get("a"))
    others = [asyncio.create_task(tier.get(key)) for key in ("a", "b")]
    await asyncio.sleep(0)  # the three have started: the first leads, the others wait on it
    first.cancel()
    async with asyncio.timeout(10):  # a guard against hanging, not a measure
        got = await asyncio.gather(*others)
    assert [entry.value if entry is not MISSING else None for entry in got] == ["A", "B"]
    assert first.cancelled()
    await tier.clear()
    await tier.aclose()
