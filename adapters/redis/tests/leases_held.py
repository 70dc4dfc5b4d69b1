"""The lease keys a Redis holds for a namespace: what a test looks for after a call that
must leave none (a lease left holds until ``lease_ttl``)."""

from __future__ import annotations

import redis

from tiered_cache.testing.servers import RedisServer


def leases_in(server: RedisServer, namespace: str) -> list[bytes]:
    """The lease keys of ``namespace`` on ``server``, sorted."""
    client = redis.Redis.from_url(server.url)
    try:
        return sorted(key for key in client.keys(f"*{namespace}*") if key.endswith(b":lease"))
    finally:
        client.close()
