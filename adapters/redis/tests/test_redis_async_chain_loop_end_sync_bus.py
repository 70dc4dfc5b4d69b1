"""``asyncio.run`` ending without the asyncio chain's ``aclose()`` while a write's publish is
stuck on a stalled Redis (SIGSTOP), the chain's bus the *threaded* ``RedisBus`` with a
publisher given no socket timeout. The chain publishes on such a bus from a thread (a blocking
call kept off the loop); the sweep of the loop's end cancels the write task, whose
announcements (its own invalidation's, then its finishing's) each went to a thread as well.
Two waits held the end of ``asyncio.run`` until Redis resumed: the write task's own (the
bound of a stopped write's announcements, ``close_wait``, covered only an asyncio bus), and
then ``shutdown_default_executor``, which joins the default executor's threads, the stuck
publishes' among them. A stopped write's announcements on a threaded bus are bounded by the
same rule, and they run in threads of their own, which the loop's end does not join.

Seen failing: ``TimeoutError: the forked child reported nothing within 15.0 s``.

A real SIGSTOP under a real publish; run in a forked child (``asyncio.run`` is what hangs); the
server resumes only after the child reported, or was killed. Waits are guards against a hang,
never measures.
"""

from __future__ import annotations

import asyncio
import os
import signal

import redis
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer

# A private server each test, which it stops.
from .test_redis_async_bus_close_stalled_publish import server  # noqa: F401
from .test_redis_async_chain_close_stalled_publish import given_up_at_loop_end


def test_a_loop_ending_without_aclose_with_a_publish_stuck_on_a_threaded_bus_ends(
    server: RedisServer,  # noqa: F811 (the fixture imported above)
) -> None:
    async def main(pid: int) -> AsyncTieredCache:
        def connect() -> redis.Redis:
            return redis.Redis(
                host=server.host, port=server.port, socket_timeout=None, socket_connect_timeout=None
            )

        bus = RedisBus(connect, "stalled", health=Health(interval=0.5, timeout=0.5))
        cache = AsyncTieredCache([MemoryTier(max_entries=10)], namespace="s", bus=bus)
        await cache.set("warm", 1)  # the publisher's connection pooled
        os.kill(pid, signal.SIGSTOP)
        asyncio.create_task(cache.set("k", 1))  # noqa: RUF006 (the service never awaits it)
        await async_until(lambda: bus._publishes._running, "the publish on the wire")
        return cache

    # The write's own invalidation as it was stopped, then its finishing's: each given up.
    assert given_up_at_loop_end(server, main) == [2, 2]
