"""A forked child's copy of the parent's kept-alive DynamoDB connections, closed without a lock.

After ``fork()`` the child holds a copy of every file descriptor of the parent, the sockets of
the boto3 client's connection pool (urllib3's) included. The child's source makes a client of
its own (:meth:`~tiered_cache_dynamodb.DynamoDBSource.after_fork_in_child`), and the parent's
is kept, never used or closed: its sockets stayed open in the child for the child's life, so a
connection the parent closed was not closed on the wire (the server saw it open) until every
child forked since had ended.

Closing that pool the usual way (``PoolManager.clear``, ``HTTPConnectionPool.close``) takes
the pool container's lock and each pool's queue mutex, which a thread of the parent may have
held at the fork: held for good in the child, where that thread does not exist. So the pools
are read directly, without a lock (:mod:`.pools`, the one module that knows their private
layout), and each idle connection's socket is detached from its object and its descriptor
closed: the child's copy alone, since the parent's descriptor is its own, and no byte is
written (no TLS close_notify, no shutdown): the parent's connection goes on.

A connection a parent thread was using at the fork is in no pool's queue: the thread holds it,
and that thread does not exist in the child (its request never goes on there). Such a copy
stayed open in the child for its life (a request in flight at the fork); the source's
:class:`~.pools.ConnectionWatch` notes every connection its client makes, and the child
closes those copies too, as the idle ones: the socket detached, nothing written, no lock.
"""

from __future__ import annotations

import os
from typing import Any

from tiered_cache.logs import logger_for

from .pools import ConnectionWatch, LayoutChanged, inherited_connections

__all__ = ["close_inherited_sockets"]


def close_inherited_sockets(client: Any, watch: ConnectionWatch) -> int:
    """In a forked child, close the child's copies of the sockets of the parent's ``client``
    (which the child never uses again; ``watch`` noted its connections), idle in its pools or
    in use by a thread of the parent at the fork; returns how many: none if the pools are
    laid out otherwise than this botocore's and urllib3's (logged: their copies stay open)."""
    try:
        connections = inherited_connections(client, watch)
    except LayoutChanged as exc:
        logger_for("source").warning(
            "a forked child could not close the parent's DynamoDB connections (%s); their "
            "copies stay open in the child",
            exc,
        )
        return 0
    closed = 0
    for conn in connections:
        sock = conn.sock
        if sock is None:  # never connected, or closed
            continue
        descriptor = sock.detach()  # the object closed, the descriptor ours to close
        if descriptor >= 0:
            os.close(descriptor)
            closed += 1
    return closed
