"""What the ``redis.asyncio`` parts (the tier, the bus's publisher) do with the connections of
an event loop left open: run by hand (``run_until_complete``), never closed, not running, and
the part used on another loop since (:mod:`tiered_cache.loop_end`); and with those of a loop
closed by hand.

Those connections belong to that loop: a command the next loop sent on one failed inside
redis-py (``got Future attached to a different loop``), an error of the tier each, the reads
going through to the source, until the pool had none left; and they cannot be disconnected
from the next loop (the disconnect awaits the first loop's futures). They are closed without
waiting instead, as redis-py closes a connection outside its loop (``_close``: the transport
is closed on its own loop, which is not running; the socket is let go of when that loop runs
again, its shutdown included, or as it is closed if it is closed first:
:mod:`tiered_cache.left_transports`), and taken out of the pool, so that this loop opens its own.
The first loop, should it run again, finds its calls on them failed (a connection error of
the tier), not answered with another loop's replies.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tiered_cache.left_transports import finish_if_closed_first

from .async_pool import take_connections

__all__ = ["close_a_left_loops_connections", "drop_a_closed_loops_connections"]


def close_a_left_loops_connections(client: Any, loop: asyncio.AbstractEventLoop) -> int:
    """Close every connection of a plain ``redis.asyncio`` client's pool (idle, in use,
    parked by the reads), which belong to ``loop``, without waiting, and empty the pool; how
    many were open. Their sockets are closed when ``loop`` runs again, or as it is closed if
    it does not (:mod:`tiered_cache.left_transports`). A cluster client's nodes are not
    reached (0): as after a fork, its connections stay."""
    transports: list[asyncio.BaseTransport] = []
    for connection in take_connections(client) or ():
        writer = connection._writer
        if connection.is_connected and writer is not None:
            transports.append(writer.transport)
            connection._close()  # type: ignore[no-untyped-call]
    finish_if_closed_first(loop, transports)
    return len(transports)


def drop_a_closed_loops_connections(client: Any) -> None:
    """The loop the connections belong to was closed without its end being seen (run by
    hand, :mod:`tiered_cache.loop_end`): they cannot be closed without it. Taken out of the
    pool, so that this loop's commands open their own (they were tried first, an error each);
    their sockets close when the collector finds them. A cluster client's nodes keep theirs
    (not reached, as after a fork)."""
    take_connections(client)
