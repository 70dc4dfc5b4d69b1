"""The connections of a ``redis.asyncio`` client's pool, taken out of it: the one place that
reads the pool's private lists (redis-py offers no public way to list its connections).

A part whose connections are not this loop's (a forked child's, the parent's sockets; those
of a loop left open or closed by hand) takes them out of the pool, so that the next command
connects anew, and then does what its case needs with them (:mod:`.async_fork` keeps them
for the child's life, :mod:`.async_left` closes them without waiting, a closed loop's are
dropped).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

__all__ = ["take_connections"]


def take_connections(client: Any) -> list[AbstractConnection] | None:
    """Every connection of a plain ``redis.asyncio`` client's pool (idle and in use), the
    pool emptied; None for any other client (a cluster client's nodes are not reached)."""
    if not isinstance(client, aioredis.Redis):
        return None
    pool = client.connection_pool
    connections = [*pool._available_connections, *pool._in_use_connections]
    pool.reset()  # type: ignore[no-untyped-call]
    return connections
