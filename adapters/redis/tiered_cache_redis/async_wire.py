"""GET and MGET near the wire for the asyncio Redis tier: :mod:`tiered_cache_redis.wire`'s
reader, awaited.

``redis.asyncio`` wraps each command in work of its own: a pool checkout and return under an
``asyncio.Lock`` with observability records, a general command encoder, response callbacks.
An L2 hit is one round trip, so that work is a large share of it. :class:`AsyncWireReader`
keeps a few connections checked out of the client's pool between reads (a list: ``pop`` and
``append`` never yield to the loop, so two coroutines never get one connection), packs GET
and MGET once by hand, and lets the connection send, read and parse (with hiredis when
installed) under its own :class:`~redis.asyncio.retry.Retry`, as ``redis.asyncio`` does.

A read that fails or is cancelled half-way leaves its connection disconnected
(``redis.asyncio`` disconnects on any error in a send or a read, and the reader on any
exception between the two but an error reply), so a parked connection never holds a reply
meant for another read: the next read reconnects it.

Used only for a plain ``redis.asyncio.Redis`` on its own pool (not a cluster, not a
single-connection client); anything else reads through ``redis.asyncio`` as before.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, cast

import redis
import redis.asyncio as aioredis

from .wire import GET_HEAD, bulk, mget_command, parked_limit


class AsyncReads(Protocol):
    """How the asyncio Redis tier reads: GET and MGET of its (already prefixed) Redis keys."""

    async def get(self, name: str) -> bytes | None:
        """``GET name``: the value's bytes, or ``None``."""
        ...

    async def mget(self, names: Sequence[str]) -> list[bytes | None]:
        """The values of ``names`` in order, ``None`` for a missing key."""
        ...

    async def aclose(self) -> None:
        """Give back what the reads hold (not the client: that is the tier's to close)."""
        ...


def async_reads_for(client: Any) -> AsyncReads:
    """The fastest :class:`AsyncReads` that keeps ``client``'s behaviour."""
    # A single-connection client serialises on its own lock: through redis.asyncio. (Its
    # ``connection`` is made on first use, so it cannot tell one apart here.)
    if isinstance(client, aioredis.Redis) and not client.single_connection_client:
        return AsyncWireReader(client)
    return AsyncClientReads(client)


class AsyncClientReads:
    """Reads through ``redis.asyncio``'s own commands: one MGET per hash slot on a cluster."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def get(self, name: str) -> bytes | None:
        """``GET name`` through ``redis.asyncio``."""
        return cast("bytes | None", await self._client.get(name))

    async def mget(self, names: Sequence[str]) -> list[bytes | None]:
        """``MGET`` through ``redis.asyncio``; on a cluster one per slot, pipelined per node."""
        client = self._client
        if isinstance(client, aioredis.Redis):
            return cast("list[bytes | None]", await client.mget(names))
        return cast("list[bytes | None]", await client.mget_nonatomic(names))

    async def aclose(self) -> None:
        """Nothing held."""


class AsyncWireReader:
    """GET and MGET on the connections of ``client``'s pool (see the module's docstring)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool
        self._parked: list[Any] = []
        self._limit = parked_limit(self._pool.max_connections)
        self._closed = False

    # Plain calls returning the round trip's coroutine: no coroutine of their own around it
    # on every read.

    def get(self, name: str) -> Coroutine[Any, Any, bytes | None]:
        """``GET name``: the value's bytes, or ``None``."""
        return self._round_trip(GET_HEAD + bulk(name))

    def mget(self, names: Sequence[str]) -> Coroutine[Any, Any, list[bytes | None]]:
        """``MGET names``: one reply per name, ``None`` for a missing key."""
        return self._round_trip(mget_command(names))

    async def _round_trip(self, packed: bytes) -> Any:
        try:
            conn = self._parked.pop()
        except IndexError:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            reply = await conn.retry.call_with_retry(
                lambda: _send_and_read(conn, packed), lambda _error: conn.disconnect()
            )
        except redis.ResponseError:
            await self._give_back(conn)  # an error reply, read whole: the connection is in step
            raise
        except BaseException:
            # redis.asyncio disconnects when its send or its read fails or is cancelled, but
            # an exception landing between the two (a signal handler's: a soft time limit,
            # an alarm, KeyboardInterrupt) is seen by neither, and a parked connection skips
            # the pool's check for unread data: the next read on it got this one's reply.
            # Disconnect (it reconnects on its next send; a second disconnect is a no-op).
            await conn.disconnect(nowait=True)
            await self._give_back(conn)
            raise
        await self._give_back(conn)
        return reply

    async def _give_back(self, conn: Any) -> None:
        # A connection asked to reconnect (a server's maintenance notice) goes back to the
        # pool, which reconnects it; so do the ones beyond the limit, and all of them once
        # closed.
        if self._closed or len(self._parked) >= self._limit or conn.should_reconnect():
            await self._pool.release(conn)
        else:
            self._parked.append(conn)

    async def aclose(self) -> None:
        """Give the parked connections back to the pool (the pool stays the client's)."""
        self._closed = True
        parked, self._parked = self._parked, []
        for conn in parked:
            await self._pool.release(conn)


async def _send_and_read(conn: Any, packed: bytes) -> Any:
    await conn.send_packed_command(packed)
    return await conn.read_response()
