"""Every wait of a close on a stalled Redis is bounded when the chain is built from its
settings with their defaults: the Redis tier's ``timeout`` (50 ms) and the bus's (1 s) are
socket timeouts of the clients the settings make, so each call a close waits for ends.

The closes wait for calls running: the asyncio chain's ``aclose()`` for its writes' tier
calls (docs/async.md), the threaded chain's close begun in a signal handler for the calls
of its other threads (``CallsInFlight``). A client given by hand with no socket timeout
(``redis.Redis(..., socket_timeout=None)``) has no such bound, and a close waits for its call
as long as Redis is stalled (docs/operations.md, "What a close waits for").

The server is private and stopped (SIGSTOP) for the whole of each test, bus and tier alike;
each chain runs in a forked child, so that a close that does not end is a report missing.
Waits are guards against a hang, never measures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, ChainClosedError, TieredCache
from tiered_cache.settings import CacheSettings
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.polling import async_until, until
from tiered_cache.testing.servers import RedisServer

#: Generous: a child that has not reported by then is stuck, not slow.
STUCK = 30.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: stopped
        yield private


def defaults_on(server: RedisServer) -> CacheSettings:
    """A chain of memory and Redis with the Redis bus, every timeout left to its default."""
    return CacheSettings(
        namespace="defaults",
        tiers=[{"kind": "memory"}, {"kind": "redis", "url": server.url}],
        bus={"kind": "redis"},
    )


def stopped(server: RedisServer) -> tuple[int, Any]:
    """The server's pid (a child cannot ask it) and what resumes it, once, whatever happens."""
    pid = server.pid
    assert pid is not None
    return pid, lambda: os.kill(pid, signal.SIGCONT)


def test_aclose_behind_a_write_stuck_in_the_redis_tier_ends_with_the_defaults(
    server: RedisServer,
) -> None:
    pid, resume = stopped(server)

    def body() -> list[Any]:
        async def main() -> list[Any]:
            cache = AsyncTieredCache.from_settings(defaults_on(server))
            await cache.set("warm", 1)  # the tier's connection pooled, the bus listening
            tier = cache.tiers[1].tier  # the Redis tier, inside its circuit breaker
            os.kill(pid, signal.SIGSTOP)
            writer = asyncio.create_task(cache.set("k", 2))
            await async_until(lambda: tier._calls._running, "the write's call on the wire")
            closer = asyncio.create_task(cache.aclose())
            done, _ = await asyncio.wait({writer, closer}, timeout=STUCK)
            return [writer in done, closer in done, cache.closed]

        return asyncio.run(main())

    try:
        seen = in_a_child(body, timeout=STUCK + 5)
    finally:
        resume()
    assert seen == [True, True, True]


def test_a_handlers_close_behind_another_threads_stuck_call_ends_with_the_defaults(
    server: RedisServer,
) -> None:
    """The handler's ``close()`` returns at once and leaves the rest to a thread of its own,
    which waits for the other threads' calls in the tier; a ``close()`` after the handler
    (a service's main ending) waits for that thread."""
    pid, resume = stopped(server)

    def body() -> list[Any]:
        cache = TieredCache.from_settings(defaults_on(server))
        cache.set("warm", 1)
        tier = cache.tiers[1].tier  # the Redis tier, inside its circuit breaker
        seen: list[Any] = []

        def writing() -> None:
            number = 0
            while True:  # each set's tier call fails at its timeout; the next one follows
                number += 1
                try:
                    cache.set(f"k{number}", number)
                except ChainClosedError:
                    return

        def on_term(signum: int, frame: object) -> None:
            cache.close()
            seen.append("handler closed")

        signal.signal(signal.SIGTERM, on_term)
        os.kill(pid, signal.SIGSTOP)
        writer = threading.Thread(target=writing, daemon=True)
        writer.start()
        main = threading.get_ident()
        until(lambda: tier._calls._running.keys() - {main}, "another thread's call on the wire")
        signal.raise_signal(signal.SIGTERM)
        cache.close()  # waits for the close the handler began
        writer.join(STUCK)
        return [*seen, cache.closed, writer.is_alive()]

    try:
        seen = in_a_child(body, timeout=STUCK)
    finally:
        resume()
    assert seen == ["handler closed", True, False]
