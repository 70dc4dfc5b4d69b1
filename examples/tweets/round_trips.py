"""Counting the requests a redis-py client sends to Redis (the demo's round trips).

A command, a pipeline or a script call is one send on a connection (``send_packed_command``).
Counting the pool's ``get_connection`` instead counted checkouts: the Redis tier's reads near
the wire keep a few connections checked out between reads (tiered_cache_redis.wire), so their
GETs were never counted (the demo showed about two round trips per miss, not three, and none
for an L2 hit). Each connection the pool hands out is watched from then on, however long it
is kept; so attach before the client's first command (:meth:`RoundTrips.attach_chain` right
after the chain is built).
"""

from __future__ import annotations

import threading
from typing import Any

from tiered_cache import TieredCache


class RoundTrips:
    """Requests sent by the clients attached: one per ``send_packed_command`` of their
    connections."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def attach(self, client: Any) -> None:
        """Count the sends of every connection ``client``'s pool hands out from now on."""
        pool = client.connection_pool
        original = pool.get_connection

        def watched(*args: Any, **kwargs: Any) -> Any:
            conn = original(*args, **kwargs)
            self._watch(conn)
            return conn

        pool.get_connection = watched

    def attach_chain(self, cache: TieredCache) -> None:
        """Attach the clients of ``cache``'s tiers (a guarded tier's inner tier's)."""
        for tier in cache.tiers:
            client = getattr(getattr(tier, "tier", tier), "client", None)  # under the breaker
            if client is not None:
                self.attach(client)

    def _watch(self, conn: Any) -> None:
        if conn.__dict__.get("_counted_by") is self:
            return
        send = conn.send_packed_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.count += 1
            return send(*args, **kwargs)

        conn.send_packed_command = counted
        conn._counted_by = self
