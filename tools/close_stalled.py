"""Closes on a stalled Redis (SIGSTOP), and when each returns: the figures of
docs/operations.md, "What a close waits for".

Each case runs in a forked child, with a private ``redis-server`` the child stops once its
chain is warm; the parent resumes it ``--stopped`` seconds after the stop (or once the child
reported, if sooner). The child reports how long after the stop its close (or
``asyncio.run``) returned, and the parent whether that was while Redis was stopped.

Cases (``--case``, every one by default):

- ``aclose``: an asyncio chain (memory, Redis, the Redis bus), a ``set`` stuck in the Redis
  tier, then ``aclose()``.
- ``handler``: a threaded chain, another thread's ``set`` calls stuck in the Redis tier,
  ``close()`` from a SIGTERM handler of the main thread, then ``close()`` (a service's main
  ending), which waits for the close the handler began.
- ``loop-end``: an asyncio chain, two ``set`` tasks never awaited, the service's coroutine
  returning once the first one's publish is on the wire: ``asyncio.run`` ends without
  ``aclose()``.

each with (``--clients``) ``defaults``: built from settings naming only the URL, every timeout
its default; or ``no-timeout``: the same chain with one Redis client given by hand with no
socket timeout (``redis.Redis(host=..., port=..., socket_timeout=None)``): the tier's for
``aclose`` and ``handler``, the bus's publisher for ``loop-end``; the others made as the
settings make them.

Run: ``.venv/bin/python tools/close_stalled.py [--stopped 8] [--case aclose] [--clients defaults]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff
from tiered_cache_redis import AsyncRedisBus, AsyncRedisTier, RedisTier
from tiered_cache_redis.async_tier import make_async_client
from tiered_cache_redis.bus import RedisBus

from tiered_cache import AsyncTieredCache, ChainClosedError, MemoryTier, TieredCache
from tiered_cache.settings import CacheSettings
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.polling import async_until, until
from tiered_cache.testing.servers import RedisServer

CASES = ("aclose", "handler", "loop-end")
CLIENTS = ("defaults", "no-timeout")
NAMESPACE = "close-stalled"
#: Stops the server, tells the parent, and returns the instant of the stop.
Stop = Callable[[], float]


def settings_on(server: RedisServer) -> CacheSettings:
    return CacheSettings(
        namespace=NAMESPACE,
        tiers=[{"kind": "memory"}, {"kind": "redis", "url": server.url}],
        bus={"kind": "redis"},
    )


def no_timeout(server: RedisServer, module: Any = redis) -> Any:
    return module.Redis(
        host=server.host, port=server.port, socket_timeout=None, socket_connect_timeout=None
    )


def bus_client(server: RedisServer, module: Any = redis, retries: int = 0) -> Any:
    """A bus client as the settings make it: the bus's default timeout (1 s) for reads and
    connects, retrying once at most (the publisher) on a broken connection."""
    retry = module.retry.Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))
    return module.Redis.from_url(
        server.url, socket_timeout=1.0, socket_connect_timeout=1.0, retry=retry
    )


def async_chain(server: RedisServer, clients: str, case: str) -> AsyncTieredCache:
    """From settings (``defaults``), or as the settings build it with one client given by
    hand with no socket timeout."""
    if clients == "defaults":
        return AsyncTieredCache.from_settings(settings_on(server))
    publisher = (
        no_timeout(server, aioredis) if case == "loop-end" else bus_client(server, aioredis, 1)
    )
    tier_client = (
        no_timeout(server, aioredis) if case == "aclose" else make_async_client(server.url)
    )
    bus = AsyncRedisBus(
        lambda: publisher,
        NAMESPACE,
        listen_with=lambda: bus_client(server),
        publisher=publisher,
    )
    tiers = [MemoryTier(), AsyncRedisTier(tier_client, namespace=NAMESPACE)]
    return AsyncTieredCache(tiers, namespace=NAMESPACE, bus=bus)


def redis_tier(cache: Any) -> Any:
    """The chain's Redis tier (inside its circuit breaker when built from settings)."""
    tier = cache.tiers[1]
    return tier.tier if hasattr(tier, "tier") else tier


def run_aclose(server: RedisServer, stop: Stop, clients: str) -> float:
    async def service() -> float:
        cache = async_chain(server, clients, "aclose")
        await cache.set("warm", 1)
        tier = redis_tier(cache)
        stopped = stop()
        writer = asyncio.create_task(cache.set("k", 2))
        await async_until(lambda: tier._calls._running, "the write's tier call")
        await cache.aclose()
        returned = time.monotonic() - stopped
        await asyncio.wait({writer})
        return returned

    return asyncio.run(service())


def run_handler(server: RedisServer, stop: Stop, clients: str) -> float:
    if clients == "defaults":
        cache = TieredCache.from_settings(settings_on(server))
    else:
        bus = RedisBus(lambda: bus_client(server, redis, 1), NAMESPACE)
        tiers = [MemoryTier(), RedisTier(no_timeout(server), namespace=NAMESPACE)]
        cache = TieredCache(tiers, namespace=NAMESPACE, bus=bus)
    cache.set("warm", 1)
    tier = redis_tier(cache)

    def writing() -> None:
        number = 0
        while True:
            number += 1
            try:
                cache.set(f"k{number}", number)
            except ChainClosedError:
                return

    signal.signal(signal.SIGTERM, lambda signum, frame: cache.close())
    stopped = stop()
    threading.Thread(target=writing, daemon=True).start()
    main = threading.get_ident()
    until(lambda: tier._calls._running.keys() - {main}, "another thread's tier call")
    signal.raise_signal(signal.SIGTERM)
    cache.close()
    return time.monotonic() - stopped


def run_loop_end(server: RedisServer, stop: Stop, clients: str) -> float:
    stops: list[float] = []

    async def service() -> None:
        cache = async_chain(server, clients, "loop-end")
        await cache.set("warm", 1)
        bus = cache._bus_link.bus  # type: ignore[union-attr]
        stops.append(stop())
        for key in ("k", "j"):  # never awaited
            asyncio.create_task(cache.set(key, 1))  # noqa: RUF006
        await async_until(lambda: bus._publishes._running, "a write's publish")

    asyncio.run(service())
    return time.monotonic() - stops[0]


RUNS: dict[str, Callable[[RedisServer, Stop, str], float]] = {
    "aclose": run_aclose,
    "handler": run_handler,
    "loop-end": run_loop_end,
}


def one_case(case: str, clients: str, stopped_for: float) -> str:
    with RedisServer() as server:
        pid = server.pid
        assert pid is not None

        def body(report: Callable[[Any], None]) -> None:
            def stop() -> float:
                os.kill(pid, signal.SIGSTOP)
                report("stopped")
                return time.monotonic()

            report(round(RUNS[case](server, stop, clients), 2))

        child = ForkedChild(body)
        try:
            assert child.read(timeout=60) == "stopped"
            in_time = child.reports_within(stopped_for)
            os.kill(pid, signal.SIGCONT)
            took = child.read(timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
            child.kill()
    when = "while Redis was stopped" if in_time else "after Redis resumed"
    return f"{case} {clients}: returned {took} s after the stop, {when} (stopped {stopped_for} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--stopped", type=float, default=8.0)
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--clients", choices=CLIENTS, action="append")
    args = parser.parse_args()
    for case in args.case or CASES:
        for clients in args.clients or CLIENTS:
            print(one_case(case, clients, args.stopped), flush=True)


if __name__ == "__main__":
    main()
