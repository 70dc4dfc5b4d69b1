"""A closed asyncio bus in a forked child: its publishes are refused there too, whatever a
thread of the parent was doing with the bus's count of publishes at the fork."""

from __future__ import annotations

import asyncio
import threading

import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisBus

from tiered_cache.bus import Invalidation
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.gates import Held
from tiered_cache.testing.servers import RedisServer

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 15.0


def test_a_closed_async_bus_refuses_a_childs_publish_while_a_parent_thread_held_its_count(
    redis_server: RedisServer, namespace: str
) -> None:
    """The child of a closed bus kept the parent's count of publishes (the threaded bus makes
    its own, closed): a parent thread inside it at the fork (a publish refused as it starts)
    held its lock for good in the child, and the child's publish waited on it for ever
    instead of being refused."""
    channel = f"{namespace}:invalidations"
    bus = AsyncRedisBus(
        lambda: aioredis.Redis.from_url(redis_server.url),
        channel,
        listen_with=lambda: redis.Redis.from_url(redis_server.url),
    )
    asyncio.run(bus.aclose())
    held = Held()

    def inside_the_count() -> None:
        with bus._publishes._lock:
            held.hold()

    def child() -> str:
        try:
            asyncio.run(bus.publish(Invalidation(sender="child", seq=1, keys=("k",))))
        except RuntimeError as refused:
            return str(refused)
        return "sent"

    thread = threading.Thread(target=inside_the_count)
    held.armed = True
    thread.start()
    try:
        assert held.inside.wait(HUNG)
        assert in_a_child(child, timeout=HUNG) == f"bus {channel!r} is closed"
    finally:
        held.go.set()
        thread.join(HUNG)
