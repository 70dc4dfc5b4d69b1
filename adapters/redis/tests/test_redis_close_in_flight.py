"""Closing a chain while its calls are on the wire to Redis: once ``aclose()`` (or
``close()``) has returned and those calls have ended, no connection of the chain is left open
on the server.

The connections are counted on a real redis-server (``CLIENT LIST``), without a
``gc.collect()``: a connection that only the collector closes stays open for as long as
something holds its pool (the loop's references, a cycle), and a service restarting its
chain under traffic pays for each one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from tiered_cache import AsyncTieredCache, ChainClosedError, TieredCache
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.polling import async_until, until
from tiered_cache.testing.servers import RedisServer

from .server_connections import no_connection_opened_since


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(url: str, namespace: str) -> dict[str, Any]:
    # No memory tier and no bus: every call goes to the Redis tier, the only client here.
    return {
        "namespace": namespace,
        "bus": {"kind": "off"},
        "tiers": [{"kind": "redis", "url": url, "timeout": "2s"}],
        "protection": {"lease_ttl": "30s", "lease_wait": "30s", "max_stale": "0s"},
    }


#: What a test asks at its end: the commands last run by the connections opened since it
#: began that are still open (polled: see :func:`no_connection_opened_since`).
LeftOpen = Callable[[], Awaitable[list[str]]]


@pytest.fixture
def left_open(redis_server: RedisServer) -> Iterator[LeftOpen]:
    """The server's connections counted as the test begins, before any chain is built."""
    watch = redis.Redis.from_url(redis_server.url)
    before = {int(client["id"]) for client in watch.client_list()}
    yield lambda: no_connection_opened_since(watch, before)
    watch.close()


ROUNDS = 5
WORKERS = 8


async def load() -> str:
    return "v"


async def load_many(keys: list[str]) -> dict[str, str]:
    return dict.fromkeys(keys, "v")


async def call_until_closed(cache: AsyncTieredCache, call: str, seed: int, done: list[int]) -> None:
    """Make ``call`` on random keys until the chain refuses it; ``done[0]`` counts the calls."""
    rng = random.Random(seed)
    while True:
        key = f"k{rng.randrange(50)}"
        try:
            if call == "get":
                await cache.get(key, load)
            elif call == "get_many":
                await cache.get_many([key, f"k{rng.randrange(50)}"], load_many)
            else:
                await cache.set(key, rng.random())
        except ChainClosedError:
            return
        done[0] += 1


def calls_made(done: list[int], calls: int) -> Callable[[], bool]:
    """Whether the workers counting in ``done`` have made ``calls`` calls."""
    return lambda: done[0] >= calls


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["get", "get_many", "set"])
async def test_aclose_with_calls_in_flight_leaves_no_connection_open(
    redis_server: RedisServer, namespace: str, call: str, left_open: LeftOpen
) -> None:
    """Seen failing before the tier waited for its calls in flight: 1 to 8 connections left
    open per round. ``aclose`` disconnected the pool under calls on the wire; each one's
    retry reconnected its connection (or a call took a new one from the emptied pool),
    and gave it back to the closed pool still connected."""
    for round_ in range(ROUNDS):
        cache = AsyncTieredCache.from_config(**settings(redis_server.url, f"{namespace}-{round_}"))
        done = [0]
        workers = [
            asyncio.create_task(call_until_closed(cache, call, round_ * WORKERS + i, done))
            for i in range(WORKERS)
        ]
        # A different instant each round, counted in calls.
        await async_until(calls_made(done, 20 * (round_ + 1)), "the round's calls made")
        await cache.aclose()
        await asyncio.gather(*workers)
    assert await left_open() == []


def sync_call_until_closed(cache: TieredCache, call: str, seed: int, done: list[int]) -> None:
    """:func:`call_until_closed` for the threaded chain."""
    rng = random.Random(seed)
    while True:
        key = f"k{rng.randrange(50)}"
        try:
            if call == "get":
                cache.get(key, lambda: "v")
            elif call == "get_many":
                other = f"k{rng.randrange(50)}"
                cache.get_many([key, other], lambda keys: dict.fromkeys(keys, "v"))
            else:
                cache.set(key, rng.random())
        except ChainClosedError:
            return
        done[0] += 1  # a race between threads at worst counts fewer calls: a later close


@pytest.mark.parametrize("call", ["get", "get_many", "set"])
def test_close_with_calls_in_flight_leaves_no_connection_open(
    redis_server: RedisServer, namespace: str, call: str, left_open: LeftOpen
) -> None:
    """The threaded tier's twin: ``close()`` while 8 threads' calls are on the wire."""
    for round_ in range(ROUNDS):
        cache = TieredCache.from_config(**settings(redis_server.url, f"{namespace}-{round_}"))
        done = [0]
        workers = [
            threading.Thread(
                target=sync_call_until_closed, args=(cache, call, round_ * WORKERS + i, done)
            )
            for i in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        until(calls_made(done, 20 * (round_ + 1)), "the round's calls made")
        cache.close()
        for worker in workers:
            worker.join()
    assert asyncio.run(left_open()) == []


def test_close_from_a_signal_handler_of_a_thread_inside_a_call_returns() -> None:
    """A service's SIGTERM handler closes the chain: Python runs the handler on the main
    thread, in the middle of whatever that thread was doing -- here a call of the Redis tier
    waiting for its reply. The tier's close waited for its calls in flight to end, that one
    among them, which could not end before the handler returned: the process hung there for
    ever (seen: the child below reported nothing). Close waits for the other threads'
    calls, not for those of the thread closing."""
    with RedisServer() as server:
        pid = server.pid  # the server is the parent's child: not known as such in the child
        assert pid is not None

        def child(report: Any) -> None:
            cache = TieredCache.from_config(**settings(server.url, "sigterm"))
            assert cache.get("warm", lambda: "up") == "up"  # connected: the call below waits

            def on_signal(signum: int, frame: Any) -> None:
                cache.close()
                report("closed")

            signal.signal(signal.SIGUSR1, on_signal)
            os.kill(pid, signal.SIGSTOP)  # the next call waits for Redis's reply
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            with contextlib.suppress(ChainClosedError):  # its chain closed under it
                cache.get("k", lambda: "loaded")

        forked = ForkedChild(child)
        try:
            assert forked.read(timeout=30) == "closed"
            assert forked.wait() == 0
        finally:
            os.kill(pid, signal.SIGCONT)
