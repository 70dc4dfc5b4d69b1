"""A caller that stops without loading gives back the Redis lease it took, or hands it to
the load that goes on: refused a slot (``max_abandoned_loads``), or interrupted.

The lease is taken before the wait for a slot; a caller that then serves its stale value
without loading must give it back, or every process waits ``lease_wait`` on the key for a
fill nobody makes (until ``lease_ttl``).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, RedisTier

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.interrupts import Interrupted, interrupting
from tiered_cache.testing.servers import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def slot_protection() -> Protection:
    """A soft timeout of 0.2 s, one timed load at a time, leases waited for 0.3 s."""
    return Protection(
        stale_while_revalidate=False,
        early_refresh_beta=0.0,
        soft_timeout=0.2,
        hard_timeout=30.0,
        max_abandoned_loads=1,
        max_timed_loads=1,
        lease_ttl=30.0,
        lease_wait=0.3,
        lease_poll=0.01,
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
        protection=slot_protection(),
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


@pytest.mark.anyio
async def test_async_stale_served_for_want_of_a_slot_gives_the_lease_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """As the threaded test: the asyncio loader's refusal gives the lease back through the
    same rule as its other exits (load()'s)."""
    clock = FakeClock(time.time())

    async def no_wait(seconds: float) -> None:
        clock.advance(seconds)

    cache = AsyncTieredCache(
        [
            MemoryTier(clock=clock),
            AsyncRedisTier(
                aioredis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock
            ),
        ],
        clock=clock,
        sleep=no_wait,
        protection=slot_protection(),
    )
    await cache.set("b", "old", ttl=1.0)
    clock.advance(2.0)
    release, entered = asyncio.Event(), asyncio.Event()

    async def hang() -> str:
        entered.set()
        await release.wait()
        return "a"

    async def new() -> str:
        return "new"

    holder = asyncio.create_task(cache.get("a", hang))
    await entered.wait()
    assert await cache.get("b", new) == "old"  # no slot within the soft timeout
    release.set()
    assert await holder == "a"
    assert await cache.get("b", new) == "new"
    assert cache.stats()["lease_waits"] == 0
    await cache.aclose()


def leasing_cache(
    redis_server: RedisServer, namespace: str, **protection: float | None
) -> TieredCache:
    clock = FakeClock(time.time())  # near the real time: Redis's PX uses it
    return TieredCache(
        [
            MemoryTier(clock=clock),
            RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock),
        ],
        clock=clock,
        sleep=clock.advance,  # a lease wait takes no real time
        protection=Protection.never_stale(
            lease_ttl=30.0, lease_wait=0.3, lease_poll=0.01, **protection
        ),
    )


@pytest.mark.parametrize("hard_timeout", [None, 30.0], ids=["untimed", "timed"])
def test_a_load_interrupted_gives_the_lease_back(
    redis_server: RedisServer, namespace: str, hard_timeout: float | None
) -> None:
    """The loader itself is interrupted (a BaseException, not an Exception): the caller
    held the lease until lease_ttl, and the next read waited lease_wait for it."""
    cache = leasing_cache(redis_server, namespace, hard_timeout=hard_timeout)

    def load() -> str:
        raise Interrupted

    with pytest.raises(Interrupted):
        cache.get("k", load)
    assert cache.get("k", lambda: "new") == "new"
    assert cache.stats()["lease_waits"] == 0
    cache.close()


def test_a_caller_interrupted_while_its_load_runs_leaves_the_lease_to_the_load(
    redis_server: RedisServer, namespace: str
) -> None:
    """The interrupt comes to the caller while its timed load runs: the load goes on and
    holds the lease from then on (here it fails, and gives it back). The interrupted caller
    kept it, and the load had no one to give it back: the next read waited lease_wait."""
    cache = leasing_cache(redis_server, namespace, hard_timeout=30.0)
    release = threading.Event()
    with interrupting() as interrupt:

        def load() -> str:
            interrupt()  # the caller is waiting for this load
            release.wait(30)
            raise ConnectionError("the source went away")

        with pytest.raises(Interrupted):
            cache.get("k", load)
    release.set()
    assert cache.wait_background(10)
    assert cache.get("k", lambda: "new") == "new"
    assert cache.stats()["lease_waits"] == 0
    cache.close()
