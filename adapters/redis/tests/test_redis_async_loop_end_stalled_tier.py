"""``asyncio.run`` ending without the chain's ``aclose()`` while a write is stuck in its Redis
*tier* on a stalled server (SIGSTOP), the tier's ``redis.asyncio`` client given by hand with no
socket timeout. The sweep of the loop's end cancels the write task; the write then invalidates
what it wrote (its finishing: :mod:`tiered_cache.write_tasks`; a ``set``, in its own
``except`` first), and each invalidation's delete goes to the stopped server on a new
connection, nothing left to cancel it: the end of ``asyncio.run`` waited until Redis resumed.
A write stopped so waits for each of its tier calls the bus's ``close_wait`` at most, as for its
announcements (test_redis_async_chain_close_stalled_publish.py); a delete given up is owed, as
any delete that failed.

Seen failing: ``TimeoutError: the forked child reported nothing within 30.0 s`` (each case
before its fix; the ``set`` that takes its lease while its steal gave its tokens back itself).

Real parts: a private redis-server for the tier, stopped, the session's for the bus. Run in a
forked child (``asyncio.run`` is what hangs); the server resumes only after the child
reported, or was killed. Waits are guards against a hang, never measures.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer

# The tier's private server, stopped (``server``), and a bus on the session's server, never
# stopped, whose close_wait is 1.4 s.
from .test_redis_async_bus_close_stalled_publish import server  # noqa: F401
from .test_redis_async_chain_close_stalled_tier import bus_on

#: Generous: a child that has not reported by then is stuck, not slow.
STUCK = 30.0

#: The write left running, the chain's protection, and the deletes then owed: an invalidation
#: (its delete on the wire as it is stopped, owed as stopped: tiered_cache.deletes; its
#: finishing's, given up); a ``set`` without
#: leases (its fill on the wire; its own invalidation's delete and its finishing's, each given
#: up); a ``set`` that takes its lease (stopped in its steal, whose tokens the tier keeps to
#: give back later, not then: its finishing's delete, given up, unlinks the lease with the key).
Write = Callable[[AsyncTieredCache], Coroutine[Any, Any, None]]
WRITES: dict[str, tuple[Write, Protection, int]] = {
    "invalidate": (lambda cache: cache.invalidate("k"), Protection(), 2),
    "set-without-leases": (lambda cache: cache.set("k", 2), Protection(lease="off"), 2),
    "set": (lambda cache: cache.set("k", 2), Protection(), 1),
}


@pytest.mark.parametrize("name", list(WRITES))
def test_a_loop_ending_without_aclose_with_a_write_stuck_in_its_redis_tier_ends(
    server: RedisServer,  # noqa: F811 (the fixture imported above)
    redis_server: RedisServer,
    name: str,
) -> None:
    write, protection, owed = WRITES[name]
    pid = server.pid  # the server's process is the parent's: not known to a child
    assert pid is not None

    def body() -> list[Any]:
        chains: list[AsyncTieredCache] = []

        async def main() -> None:
            client = aioredis.Redis(
                host=server.host, port=server.port, socket_timeout=None, socket_connect_timeout=None
            )
            tier = AsyncRedisTier(client, namespace="loop-end")
            cache = AsyncTieredCache(
                [MemoryTier(max_entries=10), tier],
                namespace="loop-end",
                bus=bus_on(redis_server),
                protection=protection,
            )
            chains.append(cache)
            await cache.set("warm", 1)  # the tier's connection pooled, the bus listening
            os.kill(pid, signal.SIGSTOP)
            asyncio.create_task(write(cache))  # noqa: RUF006 (the service never awaits it)
            await async_until(lambda: tier._calls._running, "the write's call on the wire")

        asyncio.run(main())
        stats = chains[0].stats()
        return [stats["deletes_owed"], stats["bus_publish_errors"]]

    try:
        seen = in_a_child(body, timeout=STUCK)
    finally:
        os.kill(pid, signal.SIGCONT)
    # Each delete given up and owed; each announcement sent (the bus's server answers).
    assert seen == [owed, 0]
