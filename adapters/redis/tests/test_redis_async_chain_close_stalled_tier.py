"""The asyncio chain closed while a ``set`` is stuck in its Redis *tier* (SIGSTOP: a fork for a
save, a swap storm, a loaded machine), the tier's client with a socket timeout longer than the
bus's ``close_wait``: ``aclose()`` waits for the write's tier calls, each bounded by the tier's
own timeout, and bounds by ``close_wait`` only the wait for the publish (the part of a write
that may have no timeout: test_redis_async_chain_close_stalled_publish.py). The write ends
as it would have without the close (its tier's timeout, or its value once Redis resumed),
not with the tier closed under it; nothing is left open on the resumed server.

Seen failing: the close waited ``close_wait`` for the whole write, then closed the tier under
it, and the write's next call was refused (``RuntimeError: tier 'redis' is closed``).

Real parts: a private redis-server for the tier, stopped, the session's for the bus. Waits are
guards against a hang, never measures.
"""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor, wait

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisBus, AsyncRedisTier, RedisTier
from tiered_cache_redis.async_tier import make_async_client
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.client import make_client
from tiered_cache_redis.listening import Health

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.testing.polling import async_until, eventually, until
from tiered_cache.testing.servers import RedisServer

from .server_connections import no_connection_opened_since, opened_since

# The asyncio bus's test's fixtures: ``server``, a private server each test (the tier's,
# stopped), and asyncio. The bus is on the session's server (``redis_server``), never stopped.
from .test_redis_async_bus_close_stalled_publish import anyio_backend, server  # noqa: F401

#: The bus's: its close_wait is 2 * (timeout + poll), 1.4 s.
BUS_HEALTH = Health(interval=0.5, timeout=0.5)
#: The tier's socket timeout: longer than the bus's close_wait (checked below).
TIER_TIMEOUT = 3.0
#: Generous: a close or a write that has not ended by then is stuck, not slow.
STUCK = 30.0


def bus_on(on: RedisServer) -> AsyncRedisBus:
    publisher = aioredis.Redis(host=on.host, port=on.port, socket_timeout=1.0)
    return AsyncRedisBus(
        lambda: publisher,
        "stalled-tier",
        listen_with=lambda: redis.Redis(host=on.host, port=on.port),
        publisher=publisher,
        health=BUS_HEALTH,
    )


async def outcome_of(task: asyncio.Task[None]) -> str:
    """What ``task`` ended with: "done", the type and message of what it raised, or "stuck"."""
    await asyncio.wait({task}, timeout=STUCK)
    if not task.done():
        return "stuck"
    error = task.exception()
    return "done" if error is None else f"{type(error).__name__}: {error}"


@pytest.mark.anyio
@pytest.mark.parametrize("resumed", ["never", "before-the-tier-timeout"])
async def test_the_chains_aclose_waits_for_a_write_stuck_in_its_redis_tier(
    server: RedisServer,  # noqa: F811 (the fixture imported above)
    redis_server: RedisServer,
    resumed: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = redis.Redis(host=server.host, port=server.port)
    before = {int(client["id"]) for client in watch.client_list()}
    client = make_async_client(server.url, timeout=TIER_TIMEOUT)  # the config's
    tier = AsyncRedisTier(client, namespace="stalled-tier")
    bus = bus_on(redis_server)
    assert bus.close_wait < TIER_TIMEOUT
    cache = AsyncTieredCache([MemoryTier(max_entries=10), tier], namespace="s", bus=bus)
    await cache.set("warm", 1)  # the tier's connection pooled, the bus listening
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    stopped = True
    try:
        writer = asyncio.create_task(cache.set("k", 2))
        await async_until(lambda: tier._calls._running, "the write's call on the wire")
        closer = asyncio.create_task(cache.aclose())
        if resumed == "before-the-tier-timeout":
            # The close past its bus's close_wait (it warns when it stops waiting for a
            # publish; it must not close the tier before the write's call has ended).
            await asyncio.wait({closer}, timeout=2 * bus.close_wait)
            os.kill(pid, signal.SIGCONT)
            stopped = False
        outcomes = [await outcome_of(writer), await outcome_of(closer)]
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
    said = [record.getMessage() for record in caplog.records]
    # The write as it would have gone without the close: its tier's timeout (a set's tier
    # failure is logged, the key invalidated) or its value stored; its publish sent (the bus
    # closed after it), not refused.
    failed = [line for line in said if line.startswith("tier 'redis' failed")]
    timed_out = (
        f"tier 'redis' failed (TimeoutError: Timeout reading from {server.host}:"
        f"{server.port}); reading through to the next tier"
    )
    stats = cache.stats()
    assert [outcomes, failed, watch.exists(tier.redis_key("k"))] == [
        ["done", "done"],
        [timed_out] if resumed == "never" else [],
        0 if resumed == "never" else 1,
    ]
    assert [line for line in said if "is closed" in line] == []
    assert (stats["bus_sent"], stats["bus_publish_errors"]) == (2, 0)
    assert await no_connection_opened_since(watch, before) == []
    watch.close()


def test_the_threaded_close_with_a_write_stuck_in_its_redis_tier(
    server: RedisServer,  # noqa: F811 (the fixture imported above)
    redis_server: RedisServer,
) -> None:
    """The threaded chain's ``close()`` waits for no write (they run on their callers'
    threads): its bus is closed first, then its tier's close waits for the write's call
    running (``CallsInFlight``), not for the write. The write ends as without the close
    (its tier's timeout: the set returns, the key invalidated), nothing hangs or is left
    open, and what the close cost it is counted, never silent: its publish sent, or refused
    by the closed bus (``bus_publish_errors``: the bus is closed well before the tier's
    timeout, so refused in practice: other processes keep their memory's copy up to its
    bound), and the delete it owed the stopped Redis dropped (``deletes_owed_dropped``)."""
    watch = redis.Redis(host=server.host, port=server.port)
    before = {int(client["id"]) for client in watch.client_list()}
    client = make_client(server.url, timeout=TIER_TIMEOUT)  # the config's
    tier = RedisTier(client, namespace="stalled-tier")
    bus = RedisBus(
        lambda: redis.Redis(host=redis_server.host, port=redis_server.port, socket_timeout=1.0),
        "stalled-tier",
        health=BUS_HEALTH,
    )
    cache = TieredCache([MemoryTier(max_entries=10), tier], namespace="s", bus=bus)
    cache.set("warm", 1)
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(2) as threads:
            writer = threads.submit(cache.set, "k", 2)
            until(lambda: tier._calls._running, "the write's call on the wire")
            closer = threads.submit(cache.close)
            _, stuck = wait([writer, closer], timeout=STUCK)
    finally:
        os.kill(pid, signal.SIGCONT)
    ended = [not stuck, writer.exception(), closer.exception()]
    stats = cache.stats()
    assert [ended, watch.exists(tier.redis_key("k"))] == [[True, None, None], 0]
    assert stats["bus_sent"] + stats["bus_publish_errors"] == 2  # the warm-up's and this one's
    assert stats["deletes_owed_dropped"] == 1
    assert eventually(lambda: opened_since(watch, before) == [], 5), opened_since(watch, before)
    watch.close()
