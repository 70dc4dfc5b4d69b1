"""A forked child's copy of the parent's kept-alive DynamoDB connections, closed without a lock.

After ``fork()`` the child holds a copy of every file descriptor of the parent, the sockets of
the boto3 client's connection pool (urllib3's) included. The child's source makes a client of
its own (:meth:`~tiered_cache_dynamodb.DynamoDBSource.after_fork_in_child`), and the parent's
is kept, never used or closed: its sockets stayed open in the child for the child's life, so a
connection the parent closed was not closed on the wire (the server saw it open) until every
child forked since had ended.

Closing that pool the usual way (``PoolManager.clear``, ``HTTPConnectionPool.close``) takes
the pool container's lock and each pool's queue mutex, which a thread of the parent may have
held at the fork: held for good in the child, where that thread does not exist. And a pool
does not hold every socket: a connection a parent thread was using at the fork is in no
queue (the thread holds it, and does not exist in the child), a socket a reply was reading
its body on alone is held by no connection, and a connection being opened has its socket in
the opening thread's locals. So the source's :class:`~.pools.ConnectionWatch` notes the
socket of every connection its client opens (a fork waits for the openings under way), and
the child closes its copy of each still open, without a lock: the socket detached from its
object and its descriptor closed, the child's copy alone, since the parent's descriptor is
its own, and no byte is written (no TLS close_notify, no shutdown): the parent's connection
goes on.

The asyncio source's aiobotocore client is let go of in the child the same way (kept, never
closed: closing its connections the usual way closes their transports on the parent's loop,
whose epoll set the child shares, and the parent's reads on them then time out). Its
connections, idle or in use by a parent coroutine, are all in its aiohttp connectors
(:mod:`.aio_pools`), and the sockets of those being made are noted as aiohttp makes them;
their sockets are detached and closed here too, which leaves the parent's epoll set alone: a
socket stays in it until every descriptor of it is closed, and the parent's is not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tiered_cache.logs import logger_for

from .pools import LayoutChanged

__all__ = ["close_inherited_sockets"]


def close_inherited_sockets(find: Callable[[], list[Any]]) -> int:
    """In a forked child, close the child's copies of the sockets ``find`` reads (a client's
    of the parent's, which the child never uses again: :func:`.pools.inherited_sockets`,
    :func:`.aio_pools.inherited_sockets`); returns how many: none if ``find`` raises
    :class:`~.pools.LayoutChanged` (logged: their copies stay open)."""
    try:
        sockets = find()
    except LayoutChanged as exc:
        logger_for("source").warning(
            "a forked child could not close the parent's DynamoDB connections (%s); their "
            "copies stay open in the child",
            exc,
        )
        return 0
    closed = 0
    for sock in sockets:
        descriptor = sock.detach()  # the object closed, the descriptor ours to close
        if descriptor >= 0:
            os.close(descriptor)
            closed += 1
    return closed
