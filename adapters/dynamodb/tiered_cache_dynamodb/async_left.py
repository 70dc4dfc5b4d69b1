"""What the aiobotocore source does with the client of an event loop left open: run by hand
(``run_until_complete``), never closed, not running, and the source used on another loop
since (:mod:`tiered_cache.loop_end`).

The client's HTTP sessions (aiohttp's) belong to that loop: a request the next loop sent on
one failed inside aiohttp (``got Future attached to a different loop``), a ``SourceError``
for every load, and the client cannot be closed from the next loop (its close awaits the
first loop's futures). Its connections are closed without waiting instead, as the Redis
parts close theirs (:mod:`tiered_cache_redis.async_left`): each transport closed on its own
loop, which is not running, its socket let go of when that loop runs again (its shutdown
included); the session's connector is then closed, so that nothing complains of an unclosed
session when the client is collected, and the next loop makes a client of its own. That
loop, should it run again, finds a request on the old client refused (a closed session), not
answered on another loop's connection.

aiobotocore and aiohttp offer no way to do it that does not wait on the loop: the client's
HTTP sessions are read from their private parts (:mod:`.aio_pools`), and a connector's
``close()`` makes a task of the first loop that must be awaited (else a ``DeprecationWarning``);
its ``_close()`` is the part of it that closes, without the wait.
"""

from __future__ import annotations

from typing import Any

from .aio_pools import client_sessions

__all__ = ["close_a_left_loops_client"]


def close_a_left_loops_client(client: Any) -> int:
    """Close the connections of every HTTP session of an aiobotocore ``client`` without
    waiting for its loop, and mark the sessions closed; how many sessions were open. A
    client on another HTTP session class (``AioConfig(http_session_cls=...)``) is not
    reached (0): dropped, its connections wait for the collector, as a closed loop's."""
    open_ones = 0
    for session in client_sessions(client):
        connector = session.connector
        if connector is not None and not connector.closed:
            open_ones += 1
            connector._close()
    return open_ones
