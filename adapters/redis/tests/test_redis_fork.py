"""The Redis tiers and the asyncio bus in a forked child (gunicorn ``--preload``, Celery
prefork, multiprocessing's fork start from a service), against a private redis-server.

The sync tier's connections restart by themselves (redis-py's pool checks its pid, the wire
reader forgets its parked connections: test_redis_wire). ``redis.asyncio`` has no such
check: its connections in a child are the parent's sockets, bound to the parent's loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
from tiered_cache_redis import RedisTier, make_client

from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.gates import Held
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING, Entry, MissingType

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 30.0


def value(entry: Entry | MissingType) -> Any:
    return MISSING if entry is MISSING else entry.value


def test_a_child_forked_while_a_thread_connects_the_tier_reads_it(
    redis_server: RedisServer, namespace: str
) -> None:
    """A tier made with ``connect`` makes its client on first use, under its lock (a
    cluster client discovers its nodes there: round trips). Held by another thread at the
    fork, the lock stayed held in the child, whose first read waited for ever."""
    held = Held()

    def connect() -> redis.Redis:
        held.hold()
        return make_client(redis_server.url, timeout=2.0)

    tier = RedisTier(connect=connect, namespace=namespace)
    make_client(redis_server.url).set(tier.redis_key("k"), b"")  # unreadable: a miss
    held.armed = True
    thread = threading.Thread(target=lambda: tier.get("k"))
    thread.start()
    try:
        assert held.inside.wait(HUNG)

        def child(report: Callable[[Any], None]) -> None:
            tier.set("c", Entry("child", 0.0))
            report(value(tier.get("c")))

        forked = ForkedChild(child)
        try:
            assert forked.read(timeout=HUNG) == "child"
        finally:
            held.go.set()
        assert forked.wait() == 0
    finally:
        held.go.set()
        thread.join(HUNG)
    assert value(tier.get("c")) == "child"
    tier.clear()
    tier.close()
