"""The Redis tier's reads near the wire (tiered_cache_redis.wire) keep redis-py's behaviour."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.connection import Connection
from tiered_cache_redis import RedisTier, make_client
from tiered_cache_redis.wire import PARKED, ClientReads, WireReader, mget_command, reads_for

from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.servers import RedisCluster, RedisServer
from tiered_cache.tier import MISSING, Entry


def test_plain_clients_read_near_the_wire_others_through_redis_py(
    redis_server: RedisServer, redis_cluster: RedisCluster
) -> None:
    pooled = make_client(redis_server.url)
    single = redis.Redis.from_url(redis_server.url, single_connection_client=True)
    cluster = make_client(redis_cluster.url, cluster=True)
    assert isinstance(cluster, ClusterClient)
    try:
        assert isinstance(reads_for(pooled), WireReader)
        assert isinstance(reads_for(single), ClientReads)  # its own lock around one socket
        assert isinstance(reads_for(cluster), ClientReads)
    finally:
        for client in (pooled, single, cluster):
            client.close()


def test_get_and_mget_read_what_redis_holds(redis_server: RedisServer, namespace: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    reader = WireReader(client)
    names = [f"{namespace}:{i}" for i in range(5)] + [f"{namespace}:é \r\n$*"]
    client.mset({name: f"v{i}".encode() for i, name in enumerate(names[:3] + names[5:])})
    assert reader.get(names[0]) == b"v0"
    assert reader.get(names[3]) is None
    assert reader.mget(names) == [b"v0", b"v1", b"v2", None, None, b"v3"]
    client.hset(f"{namespace}:h", "f", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):  # as redis-py's GET raises
        reader.get(f"{namespace}:h")
    assert reader.get(names[1]) == b"v1"  # the connection is still in step after the error
    reader.close()
    client.close()


@pytest.mark.parametrize(
    "names",
    [["ns:tweet:1", "ns:tweet:22", ""], ["ns:é", "ns:plain"], ["ns:\r\n$*", "ns:\U0001f600"]],
)
def test_mget_is_packed_as_redis_py_packs_it(names: list[str]) -> None:
    # ASCII names are packed as one text; any other name byte by byte.
    assert mget_command(names) == b"".join(Connection().pack_command("MGET", *names))


def test_a_small_pool_is_never_parked_empty(redis_server: RedisServer, namespace: str) -> None:
    """With a pool of one connection nothing is parked: a write after a read still gets one."""
    tier = RedisTier(make_client(redis_server.url, timeout=0.5, pool_size=1), namespace=namespace)
    tier.set("k", Entry("v", 0.0))
    for _ in range(3):
        got = tier.get("k")
        assert got is not MISSING and got.value == "v"
        tier.set("k", Entry("v", 0.0))  # waits 0.5 s and raises if a read kept the connection
    tier.clear()
    tier.close()


def test_close_gives_the_parked_connections_back(redis_server: RedisServer) -> None:
    client = make_client(redis_server.url, timeout=0.5, pool_size=2 * PARKED + 1)
    pool = client.connection_pool
    reader = WireReader(client)
    held = [pool.get_connection() for _ in range(PARKED)]  # the readers below each take a new one
    # Each reader holds the connection it took until all have taken theirs: a reader that
    # began after another had parked its connection would read on that one (seen under load:
    # fewer parked, and the pool not exhausted below).
    checkout = pool.get_connection
    all_taken = threading.Barrier(PARKED)

    def taken_together(*args: Any, **kwargs: Any) -> Any:
        conn = checkout(*args, **kwargs)
        all_taken.wait(10)
        return conn

    pool.get_connection = taken_together  # type: ignore[method-assign]
    threads = [threading.Thread(target=reader.get, args=("nothing",)) for _ in range(PARKED)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    del pool.get_connection  # the pool's own again
    for conn in held:
        pool.release(conn)
    # 2 * PARKED + 1 connections, at most PARKED of them parked: the others can be taken.
    taken = [pool.get_connection() for _ in range(PARKED + 1)]
    with pytest.raises(redis.ConnectionError):
        pool.get_connection()  # all the rest is parked
    reader.close()
    taken += [pool.get_connection() for _ in range(PARKED)]  # given back by close()
    assert len(taken) == 2 * PARKED + 1
    for conn in taken:
        pool.release(conn)
    client.close()


def test_a_forked_child_reads_on_sockets_of_its_own(
    redis_server: RedisServer, namespace: str
) -> None:
    """Parent and child read at the same time: on a shared socket their replies would mix."""
    tier = RedisTier(make_client(redis_server.url, timeout=2.0), namespace=namespace)
    tier.set_many({f"k{i}": Entry(f"v{i}", 0.0) for i in range(20)})
    assert tier.get("k0") is not MISSING  # the parent now holds a parked connection

    def reads(report: Callable[[Any], None] | None = None) -> list[str]:
        wrong = []
        for n in range(300):
            key = f"k{n % 20}"
            got = tier.get(key)
            if got is MISSING or got.value != f"v{n % 20}":
                wrong.append(key)
        if report is not None:
            report(wrong)
        return wrong

    forked = ForkedChild(reads)
    assert reads() == []
    assert forked.read() == []
    assert forked.wait() == 0
    tier.clear()
    tier.close()
