"""GET and MGET near the wire, for the Redis tier's reads on a single server.

An L2 hit is one round trip (~50-80 us on loopback), and redis-py wraps each command in work of
its own: a pool checkout and return with locks and observability records (4-8 us on the
blocking pool the tier uses), the command packed by a general encoder, a retry closure, response
callbacks. :class:`WireReader` keeps what matters and drops the rest:

- a few connections stay checked out of the client's pool between reads (a lock-free list:
  ``pop``/``append`` are atomic), so a read does not pay the pool's checkout and return; more
  readers at once than parked connections take theirs from the pool as usual and give back
  what is not parked;
- the command is packed once by hand (GET and MGET of ``str`` keys are all the tier sends);
- the connection's own :class:`redis.retry.Retry` still runs the round trip, with the same
  disconnect-and-retry on a broken connection as redis-py (a server restart); redis-py's
  connection sends, and with hiredis installed reads and parses; without it the reply is read
  off the socket in one piece (:mod:`tiered_cache_redis.replies`), not value by value.

Used only for a plain ``redis.Redis`` on its own pool (not a cluster, not a single-connection
client, not a client-side cache, whose state lives in redis-py's command path); anything else
reads through redis-py as before. These reads are not in redis-py's own command metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import redis
from redis.cluster import RedisCluster

from tiered_cache.forking import restart_after_fork

from .replies import raw_reads, read_reply

#: Connections kept checked out between reads: enough for a few threads reading at once,
#: few enough that the rest of the pool stays for everyone else (writes, leases, the bus). A
#: small pool parks fewer (under half of it), a pool of one or two none.
PARKED = 4


def parked_limit(max_connections: int) -> int:
    """How many connections of a pool of ``max_connections`` a reader may keep parked."""
    return max(0, min(PARKED, (max_connections - 1) // 2))


class Reads(Protocol):
    """How the Redis tier reads: GET and MGET of its (already prefixed) Redis keys."""

    def get(self, name: str) -> bytes | None:
        """``GET name``: the value's bytes, or ``None``."""
        ...

    def mget(self, names: Sequence[str]) -> list[bytes | None]:
        """The values of ``names`` in order, ``None`` for a missing key."""
        ...

    def close(self) -> None:
        """Give back what the reads hold (not the client: that is the tier's to close)."""
        ...


def reads_for(client: redis.Redis | RedisCluster) -> Reads:
    """The fastest :class:`Reads` that keeps ``client``'s behaviour."""
    if (
        isinstance(client, redis.Redis)
        and client.connection is None  # a single-connection client serialises on its own lock
        and client.get_cache() is None  # client-side caching lives in redis-py's command path
    ):
        return WireReader(client)
    return ClientReads(client)


class ClientReads:
    """Reads through redis-py's own commands: one MGET per hash slot on a cluster."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self._client = client

    def get(self, name: str) -> bytes | None:
        """``GET name`` through redis-py."""
        return cast("bytes | None", self._client.get(name))

    def mget(self, names: Sequence[str]) -> list[bytes | None]:
        """``MGET`` through redis-py; on a cluster one per slot, pipelined per node."""
        client = self._client
        if isinstance(client, RedisCluster):
            return cast("list[bytes | None]", client.mget_nonatomic(names))
        return cast("list[bytes | None]", client.mget(names))

    def close(self) -> None:
        """Nothing held."""


#: ``GET name`` is ``GET_HEAD + bulk(name)`` (inline on the hit path: one call less).
GET_HEAD = b"*2\r\n$3\r\nGET\r\n"


def bulk(text: str) -> bytes:
    """``text`` as a RESP bulk string."""
    data = text.encode("utf-8")
    return b"$%d\r\n%b\r\n" % (len(data), data)


def mget_command(names: Sequence[str]) -> bytes:
    """``MGET names``, packed: for ASCII names (one byte a character, what keys almost
    always are) as one text encoded once, not one ``bytes`` per name."""
    head = f"*{len(names) + 1}\r\n$4\r\nMGET\r\n"
    if "".join(names).isascii():
        return (head + "".join([f"${len(name)}\r\n{name}\r\n" for name in names])).encode()
    return head.encode() + b"".join([bulk(name) for name in names])


class WireReader:
    """GET and MGET on the connections of ``client``'s pool (see the module's docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._parked: list[Any] = []
        self._limit = parked_limit(self._pool.max_connections)
        self._closed = False
        restart_after_fork(self)

    def get(self, name: str) -> bytes | None:
        """``GET name``: the value's bytes, or ``None``."""
        data = name.encode("utf-8")  # bulk(name), inline: one call less per L2 hit
        return cast(
            "bytes | None", self._round_trip(b"%b$%d\r\n%b\r\n" % (GET_HEAD, len(data), data))
        )

    def mget(self, names: Sequence[str]) -> list[bytes | None]:
        """``MGET names``: one reply per name, ``None`` for a missing key."""
        return cast("list[bytes | None]", self._round_trip(mget_command(names)))

    def _round_trip(self, packed: bytes) -> Any:
        try:  # a parked connection, else the pool's
            conn = self._parked.pop()
        except IndexError:
            conn = self._pool.get_connection()
        try:
            # The failure handler is the connection's disconnect itself (it takes the error).
            reply = conn.retry.call_with_retry(
                lambda: self._send_and_read(conn, packed), conn.disconnect
            )
        except redis.ResponseError:
            self._give_back(conn)  # an error reply, read whole: the connection is in step
            raise
        except BaseException:
            # Anything else may leave the reply, or its tail, unread: an exception landing
            # between the send and the read (a signal handler's: a soft time limit, an
            # alarm) is seen by neither redis-py nor the reply reader, and a parked
            # connection skips the pool's check for unread data. The next read on it would
            # get this one's reply: disconnect (it reconnects on its next send).
            conn.disconnect()
            self._give_back(conn)
            raise
        self._give_back(conn)
        return reply

    @staticmethod
    def _send_and_read(conn: Any, packed: bytes) -> Any:
        conn.send_packed_command((packed,))
        if raw_reads(conn):
            return read_reply(conn)
        return conn.read_response()

    def _give_back(self, conn: Any) -> None:
        # A connection asked to reconnect (a server's maintenance notice) goes back to the pool,
        # which reconnects it; so do the ones beyond the limit, and all of them once closed.
        if self._closed or len(self._parked) >= self._limit or conn.should_reconnect():
            self._pool.release(conn)
        else:
            self._parked.append(conn)
            if self._closed:  # closed meanwhile: close() may have missed this one
                self._release_parked()

    def close(self) -> None:
        """Give the parked connections back to the pool (the pool stays the client's)."""
        self._closed = True
        self._release_parked()

    def _release_parked(self) -> None:
        # One atomic pop at a time: a reader popping at the same moment never gets one of these.
        while True:
            try:
                conn = self._parked.pop()
            except IndexError:
                return
            self._pool.release(conn)

    def after_fork_in_child(self) -> None:
        """The parked connections are the parent's sockets: forget them, never close them
        (the pool, which resets itself in a child, owns nothing of them either)."""
        self._parked = []
