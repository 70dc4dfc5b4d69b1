"""Replies read off the socket (tiered_cache_redis.replies) are what redis-py's parser reads."""

from __future__ import annotations

import select
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from tiered_cache_redis.replies import raw_reads, read_reply
from tiered_cache_redis.wire import GET_HEAD, WireReader, bulk, mget_command

from tiered_cache.testing.servers import RedisServer

#: Values around the reply reader's edges: empty, CRLF and RESP markers inside, one larger
#: than a chunk of the socket (so that it and the values after it arrive in several reads).
VALUES = {"a": b"1", "empty": b"", "crlf": b"\r\n$3\r\n*2\r\n", "big": b"x" * 300_000}


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, protocol=request.param)
    yield client
    client.close()


@pytest.fixture
def conn(client: redis.Redis, namespace: str) -> Iterator[Any]:
    client.mset({f"{namespace}:{name}": value for name, value in VALUES.items()})
    client.hset(f"{namespace}:hash", "f", "v")
    conn = client.connection_pool.get_connection()
    yield conn
    client.connection_pool.release(conn)


def raw(conn: Any, packed: bytes) -> Any:
    conn.send_packed_command((packed,))
    assert raw_reads(conn)
    return read_reply(conn)


def parsed(conn: Any, packed: bytes) -> Any:
    conn.send_packed_command((packed,))
    return conn.read_response()


def test_get_and_mget_replies_are_redis_pys(conn: Any, namespace: str) -> None:
    names = [f"{namespace}:{name}" for name in [*VALUES, "missing"]] * 20
    assert raw(conn, mget_command(names)) == parsed(conn, mget_command(names))
    assert len(raw(conn, mget_command(names))) == len(names)
    for name in names[: len(VALUES) + 1]:
        assert raw(conn, GET_HEAD + bulk(name)) == parsed(conn, GET_HEAD + bulk(name))


def test_an_error_reply_is_raised_as_redis_py_raises_it_and_the_connection_kept(
    conn: Any, namespace: str
) -> None:
    with pytest.raises(redis.ResponseError, match="WRONGTYPE") as raised:
        raw(conn, GET_HEAD + bulk(f"{namespace}:hash"))
    with pytest.raises(type(raised.value), match="WRONGTYPE"):
        parsed(conn, GET_HEAD + bulk(f"{namespace}:hash"))
    assert raw(conn, GET_HEAD + bulk(f"{namespace}:a")) == b"1"  # still in step


def test_a_push_before_the_reply_is_read_by_redis_py(
    redis_server: RedisServer, namespace: str
) -> None:
    """RESP3 client tracking makes the server push an invalidation onto the reading
    connection: the raw reader hands it to redis-py's parser, which reads the push and then
    the reply, on the same connection (no error, no reconnect: this client retries nothing)."""
    client = redis.Redis.from_url(redis_server.url, protocol=3)
    writer = redis.Redis.from_url(redis_server.url)
    key = f"{namespace}:tracked"
    writer.set(key, b"old")
    reader = WireReader(client)
    assert reader.get(key) == b"old"  # parks a connection
    conn = reader._parked[-1]
    conn.send_command("CLIENT", "TRACKING", "ON")
    assert conn.read_response() in (b"OK", "OK")
    sock = conn._sock
    before = b"old"
    for value in (b"new", b"newer"):
        assert reader.get(key) == before  # the key is now tracked on that connection
        writer.set(key, value)  # the server pushes an invalidation to the reader
        # The push is on the socket before the next command (waited for, not read).
        assert select.select([conn._sock], [], [], 1.0)[0]
        assert raw_reads(conn)
        assert reader.mget([key, f"{namespace}:missing"]) == [value, None]
        before = value
    assert conn._sock is sock
    reader.close()
    writer.close()
    client.close()


def test_a_push_after_the_reply_is_left_for_redis_py(
    redis_server: RedisServer, namespace: str
) -> None:
    """A push that arrives with the reply, after it, is not dropped: it waits in redis-py's
    buffer, whose parser reads it before the next reply."""
    client = redis.Redis.from_url(redis_server.url, protocol=3)
    writer = redis.Redis.from_url(redis_server.url)
    key = f"{namespace}:tracked"
    writer.set(key, b"old")
    conn = client.connection_pool.get_connection()
    conn.send_command("CLIENT", "TRACKING", "ON")
    assert conn.read_response() in (b"OK", "OK")
    assert raw(conn, GET_HEAD + bulk(key)) == b"old"  # tracked
    conn.send_packed_command((GET_HEAD + bulk(key),))
    writer.set(key, b"new")  # its invalidation is pushed after the GET's reply
    assert select.select([conn._sock], [], [], 1.0)[0]
    assert read_reply(conn) == b"old"
    assert conn._parser._buffer.unread_bytes() > 0  # the push, given back
    assert not raw_reads(conn)
    assert parsed(conn, mget_command([key])) == [b"new"]  # the push read first, then this
    assert raw(conn, GET_HEAD + bulk(key)) == b"new"
    client.connection_pool.release(conn)
    writer.close()
    client.close()
