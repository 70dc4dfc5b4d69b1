"""A timed load refused a slot (``max_abandoned_loads``) gives back the Redis lease it took.

The lease is taken before the wait for a slot; a caller that then serves its stale value
without loading must give it back, or every process waits ``lease_wait`` on the key for a
fill nobody makes (until ``lease_ttl``).
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.servers import RedisServer


@pytest.mark.xfail(
    strict=True,
    reason="loader.py (helper-50's): SourceLoader.load's `except ServeStale` returns the "
    "stale value without _give_back of the caller's lease token when TimedSlots.take (or "
    "_await_abandoned) raised it; only the orphaned worker owns the token (async_loader "
    "releases it in _timed_task)",
)
def test_stale_served_for_want_of_a_slot_gives_the_lease_back(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = FakeClock(time.time())  # near the real time: Redis's PX uses it
    cache = TieredCache(
        [
            MemoryTier(clock=clock),
            RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock),
        ],
        clock=clock,
        sleep=clock.advance,  # a lease wait takes no real time
        protection=Protection(
            stale_while_revalidate=False,
            early_refresh_beta=0.0,
            soft_timeout=0.2,
            hard_timeout=30.0,
            max_abandoned_loads=1,
            max_timed_loads=1,
            lease_ttl=30.0,
            lease_wait=0.3,
            lease_poll=0.01,
        ),
    )
    cache.set("b", "old", ttl=1.0)
    clock.advance(2.0)  # "b" is stale
    release, entered = threading.Event(), threading.Event()

    def hang() -> str:
        entered.set()
        release.wait(30)
        return "a"

    # A load whose caller still waits (hard timeout 30 s) holds the one slot.
    holder = threading.Thread(target=lambda: cache.get("a", hang))
    holder.start()
    assert entered.wait(10)
    assert cache.get("b", lambda: "new") == "old"  # no slot within the soft timeout
    release.set()
    holder.join(10)
    assert cache.get("b", lambda: "new") == "new"
    assert cache.stats()["lease_waits"] == 0  # failed: 1 (its own lease, never given back)
    cache.close()
