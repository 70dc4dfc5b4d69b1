"""Writes and invalidations still in flight when their event loop ends: ``asyncio.run``'s end
(a server's shutdown likewise) cancels every task left, the chain's write tasks included. What
they were to drop from Redis must be gone from it all the same, or every process reads the old
value there until its TTL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis
from tiered_cache_redis import AsyncRedisBus, AsyncRedisTier, make_async_client

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource

KEYS = [f"k{i}" for i in range(40)]

#: The tests' Redis timeouts (connecting, and each call): long, for the tier errors they count
#: must be the loop end's, never a loaded machine's. 40 writes at once open 40 connections as
#: the loop ends; with 2 s, one run under load 20 timed 16 of them out connecting (``assert
#: 16 == 0``): the old copies were gone all the same, by the deletes owed and paid.
TIMEOUT = 30.0

#: How a service leaves its writes behind: fire-and-forget tasks it never awaits, begun
#: (``yields``: how many times the service's coroutine gives the loop a turn before it
#: returns: 0, the callers spawn their write tasks in the loop's last turn, and the loop's
#: end cancels them not begun; 1 or more, they have begun and are on the wire), or
#: awaited under a client timeout that gives up first (the write goes on in the chain).
Write = Callable[[AsyncTieredCache, str], Coroutine[Any, Any, None]]
WRITES: dict[str, Write] = {
    "invalidate": lambda cache, key: cache.invalidate(key),
    "invalidate_many": lambda cache, key: cache.invalidate_many([key]),
    "set": lambda cache, key: cache.set(key, "new"),
    "set_many": lambda cache, key: cache.set_many({key: "new"}),
}


def chain(server: RedisServer, namespace: str, source: AsyncDictSource) -> AsyncTieredCache:
    return AsyncTieredCache(
        [
            MemoryTier(max_entries=100),
            AsyncRedisTier(make_async_client(server.url, timeout=TIMEOUT), namespace=namespace),
        ],
        source,
        namespace=namespace,
    )


def warmed(
    server: RedisServer, namespace: str, keys: list[str]
) -> tuple[AsyncTieredCache, AsyncDictSource]:
    """A chain whose tiers hold the old value of every key, and its source."""
    source = AsyncDictSource({key: f"old {key}" for key in keys})
    cache = chain(server, namespace, source)

    async def warm() -> None:
        for key in keys:
            await cache.get(key)

    asyncio.run(warm())
    return cache, source


def old_in_redis(server: RedisServer, namespace: str, keys: list[str] = KEYS) -> list[str]:
    """The keys whose Redis copy still holds the value from before the writes."""
    tier = AsyncRedisTier(make_async_client(server.url, timeout=TIMEOUT), namespace=namespace)
    client = redis.Redis.from_url(server.url)
    try:
        return [
            key
            for key in keys
            if (data := client.get(tier.redis_key(key))) is not None and b"old" in data
        ]
    finally:
        client.close()


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 6])
@pytest.mark.parametrize("write", sorted(WRITES))
def test_writes_left_in_flight_as_asyncio_run_ends_leave_no_old_copy_in_redis(
    redis_server: RedisServer, namespace: str, write: str, yields: int
) -> None:
    """Seen failing (invalidate, 1 yield): 40 of 40 keys kept the old value in Redis."""
    source = AsyncDictSource({key: f"old {key}" for key in KEYS})
    cache = chain(redis_server, namespace, source)

    async def warm() -> None:
        for key in KEYS:
            assert await cache.get(key) == f"old {key}"

    asyncio.run(warm())
    assert len(old_in_redis(redis_server, namespace)) == len(KEYS)

    async def service() -> None:
        for key in KEYS:
            source.inner.write(key, "new")  # the service wrote its database itself
        left = [asyncio.create_task(WRITES[write](cache, key)) for key in KEYS]
        for _ in range(yields):
            await asyncio.sleep(0)
        assert left  # never awaited: the loop ends with them

    asyncio.run(service())
    assert old_in_redis(redis_server, namespace) == []

    async def read() -> list[Any]:
        return [await cache.get(key) for key in KEYS]

    assert asyncio.run(read()) == ["new"] * len(KEYS)
    asyncio.run(cache.aclose())
    assert cache.stats()["tiers"][1]["errors"] == 0


@pytest.mark.parametrize("write", sorted(WRITES))
def test_writes_whose_callers_gave_up_leave_no_old_copy_in_redis_as_the_loop_ends(
    redis_server: RedisServer, namespace: str, write: str
) -> None:
    """The callers' client timeouts end first; their writes, run on by the chain, are still
    in flight when the loop ends."""
    cache, source = warmed(redis_server, namespace, KEYS)

    async def service() -> None:
        for key in KEYS:
            source.inner.write(key, "new")
        calls = [asyncio.create_task(WRITES[write](cache, key)) for key in KEYS]
        await asyncio.sleep(0)  # each spawned its write
        for call in calls:
            call.cancel()  # the client went away
        await asyncio.gather(*calls, return_exceptions=True)

    asyncio.run(service())
    assert old_in_redis(redis_server, namespace) == []
    asyncio.run(cache.aclose())
    assert cache.stats()["tiers"][1]["errors"] == 0


def test_invalidations_left_in_flight_reach_the_other_processes_as_the_loop_ends(
    redis_server: RedisServer, namespace: str
) -> None:
    """With the bus: another process's memory drops the keys too, and the next loop's
    announcements find no connection of the ended loop in the publisher's pool."""
    settings: dict[str, Any] = {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "admission": "always", "ttl": "10m"},
            {"kind": "redis", "url": redis_server.url, "timeout": TIMEOUT},
        ],
        "ttl": "10m",
        "bus": {"kind": "redis", "url": redis_server.url, "timeout": TIMEOUT},
    }
    truth = {key: f"old {key}" for key in KEYS}
    other = TieredCache.from_config(**settings)  # another process's chain
    link = other._bus_link
    assert link is not None and link.bus.wait_subscribed(10)  # type: ignore[attr-defined]
    assert [other.get(key, lambda key=key: truth[key]) for key in KEYS] == list(truth.values())
    cache = AsyncTieredCache.from_config(**settings)
    bus = cache._bus_link.bus if cache._bus_link is not None else None
    assert isinstance(bus, AsyncRedisBus)

    async def service() -> None:
        assert await bus.wait_subscribed(10)
        for key in KEYS:
            truth[key] = "new"
        left = [asyncio.create_task(cache.invalidate(key)) for key in KEYS]
        await asyncio.sleep(0)
        assert left

    asyncio.run(service())
    assert old_in_redis(redis_server, namespace) == []
    # The bus listens from its thread, not from the loop: the loop's end leaves it
    # subscribed, once (the other process's and this chain's), until the chain is closed.
    raw = redis.Redis.from_url(redis_server.url)
    assert dict(raw.pubsub_numsub(bus.channel)) == {bus.channel.encode(): 2}
    deadline = time.monotonic() + 10  # the other process hears the bus on its thread
    while time.monotonic() < deadline and other.stats().get("bus_received", 0) < len(KEYS):
        time.sleep(0.05)
    assert [other.get(key, lambda key=key: truth[key]) for key in KEYS] == ["new"] * len(KEYS)

    async def next_job() -> None:
        await cache.invalidate("another")

    asyncio.run(next_job())
    stats = cache.stats()
    # Each invalidation announced once, and the next job's: a caller cancelled with its
    # write task, once that had begun, leaves the finishing to the task. And each payment of
    # what the deletes the sweep stopped left owed (tiered_cache.deletes) announces it again.
    assert stats["bus_sent"] == len(KEYS) + 1 + stats["deletes_owed_payments"]
    assert stats.get("bus_publish_errors", 0) == 0
    assert stats["tiers"][1]["errors"] == 0
    asyncio.run(cache.aclose())
    # Its close ends the listening thread, its subscription closed: the other's alone.
    assert dict(raw.pubsub_numsub(bus.channel)) == {bus.channel.encode(): 1}
    raw.close()
    other.close()


NAMED = [f"p:{i}" for i in range(10)]
OTHERS = [f"q:{i}" for i in range(10)]
#: A write of several keys, of a prefix, or of everything, and the keys it drops.
SCOPED: dict[str, tuple[Callable[[AsyncTieredCache], Coroutine[Any, Any, None]], list[str]]] = {
    "invalidate_many": (lambda cache: cache.invalidate_many(NAMED), NAMED),
    "set_many": (lambda cache: cache.set_many(dict.fromkeys(NAMED, "new")), NAMED),
    "invalidate_prefix": (lambda cache: cache.invalidate_prefix("p:"), NAMED),
    "clear": (lambda cache: cache.clear(), NAMED + OTHERS),
}


@pytest.mark.parametrize("yields", [0, 3])
@pytest.mark.parametrize("write", sorted(SCOPED))
def test_a_write_stopped_as_the_loop_ends_drops_what_it_names_and_nothing_else(
    redis_server: RedisServer,
    namespace: str,
    write: str,
    yields: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One write left in flight, not begun (0 yields: its caller finishes it) or on the wire
    (3: its own task does): what finishes it is an invalidation of what it named -- its
    keys, its prefix, or everything -- and the other keys keep their copies in Redis. The
    write task ends cancelled, which nothing logs as an error of the loop."""
    caplog.set_level(logging.WARNING)
    both = NAMED + OTHERS
    cache, source = warmed(redis_server, namespace, both)
    assert old_in_redis(redis_server, namespace, both) == both
    run, dropped = SCOPED[write]

    async def service() -> None:
        for key in dropped:
            source.inner.write(key, "new")
        left = asyncio.create_task(run(cache))
        for _ in range(yields):
            await asyncio.sleep(0)
        assert not left.done()  # the loop ends with it

    asyncio.run(service())
    assert old_in_redis(redis_server, namespace, both) == [k for k in both if k not in dropped]
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] == []
    asyncio.run(cache.aclose())
    assert cache.stats()["tiers"][1]["errors"] == 0
