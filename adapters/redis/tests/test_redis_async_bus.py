"""The invalidation bus on ``redis.asyncio`` pub/sub, over a private redis-server: async
chains hear each other and sync chains, a cut bus connection (a TCP proxy in front of the
server) bypasses memory until the bus is back, two writers never reach the others out of
order, and the listener is gone after ``aclose``."""

from __future__ import annotations

import asyncio
import os
import signal
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import redis
from tiered_cache_redis import AsyncRedisBus

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing import FakeClock
from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.polling import async_eventually
from tiered_cache.testing.servers import FaultProxy, RedisServer

#: Generous bound for "the bus has delivered" on a loaded test machine.
BUS_DELAY_BOUND = 5.0
FAST_CHECK = {"health_check_interval": "500ms", "timeout": "500ms"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(
    url: str, namespace: str, bus_url: str | None, bus_options: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    bus: dict[str, Any] = {**FAST_CHECK, **(bus_options or {})}
    if bus_url is not None:
        bus["url"] = bus_url
    return bus_chain_settings(url, namespace, bus=bus, **extra)


def async_bus(cache: AsyncTieredCache) -> AsyncRedisBus:
    link = cache._bus_link
    assert link is not None
    assert isinstance(link.bus, AsyncRedisBus)
    return link.bus


async def async_chain(
    url: str,
    namespace: str,
    bus_url: str | None = None,
    *,
    bus_options: dict[str, Any] | None = None,
    **extra: Any,
) -> AsyncTieredCache:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bus is native: nothing runs in a thread
        cache = AsyncTieredCache.from_config(
            **settings(url, namespace, bus_url, bus_options, **extra)
        )
    assert await async_bus(cache).wait_subscribed(10)
    return cache


def sync_chain(url: str, namespace: str) -> TieredCache:
    return subscribed_chain(settings(url, namespace, None, None))


def constant(value: Any) -> Callable[[], Any]:
    async def load() -> Any:
        return value

    return load


@pytest.mark.anyio
async def test_two_async_chains_hear_each_others_writes(
    redis_server: RedisServer, namespace: str
) -> None:
    a = await async_chain(redis_server.url, namespace)
    b = await async_chain(redis_server.url, namespace)
    assert await b.get("k", constant("old")) == "old"
    assert await b.get("k", constant("never")) == "old"  # from b's memory
    await a.set("k", "new")

    async def b_has_new() -> bool:
        return await b.get("k", constant("never")) == "new"

    assert await async_eventually(b_has_new, BUS_DELAY_BOUND)
    assert b.stats()["bus_received"] >= 1
    assert a.stats()["bus_sent"] == 1
    await a.invalidate_prefix("k")

    async def b_reloads() -> bool:
        return await b.get("k", constant("reloaded")) == "reloaded"

    assert await async_eventually(b_reloads, BUS_DELAY_BOUND)
    await a.aclose()
    await b.aclose()


@pytest.mark.anyio
async def test_a_sync_and_an_async_chain_hear_each_other(
    redis_server: RedisServer, namespace: str
) -> None:
    aio = await async_chain(redis_server.url, namespace)
    threaded = await asyncio.to_thread(sync_chain, redis_server.url, namespace)
    assert await aio.get("a", constant("a0")) == "a0"
    assert threaded.get("b", lambda: "b0") == "b0"
    await asyncio.to_thread(threaded.set, "a", "a1")

    async def aio_has_a1() -> bool:
        return await aio.get("a", constant("never")) == "a1"

    assert await async_eventually(aio_has_a1, BUS_DELAY_BOUND)
    await aio.set("b", "b1")

    async def threaded_has_b1() -> bool:
        return threaded.get("b", lambda: "never") == "b1"

    assert await async_eventually(threaded_has_b1, BUS_DELAY_BOUND)
    assert aio.stats().get("bus_gaps", 0) == threaded.stats().get("bus_gaps", 0) == 0
    await aio.aclose()
    await asyncio.to_thread(threaded.close)


@pytest.mark.anyio
async def test_a_cut_bus_connection_bypasses_memory_until_it_is_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """b's bus goes through a proxy that is cut: writes made meanwhile by a are not heard by
    b, which must not serve its in-memory copy once it noticed the cut; it subscribes again
    once the proxy is restored, and hears a's writes again."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        a = await async_chain(redis_server.url, namespace)
        no_staleness = {"max_stale_when_disconnected": "0s"}
        b = await async_chain(
            redis_server.url, namespace, proxy.url("redis"), bus_options=no_staleness
        )
        assert await b.get("k", constant("v0")) == "v0"
        assert await b.get("k", constant("never")) == "v0"  # from b's memory
        proxy.cut()

        async def b_down() -> bool:
            return b.stats()["bus"] == "down"

        assert await async_eventually(b_down, within=10)
        assert not async_bus(b).connected
        for version in range(1, 4):
            await a.set("k", f"v{version}")  # b hears nothing of these
            assert await b.get("k", constant("never")) == f"v{version}"
        assert b.stats()["bus_disconnects"] == 1
        proxy.restore()

        async def b_connected() -> bool:
            return b.stats()["bus"] == "connected"

        assert await async_eventually(b_connected, within=10)
        assert await b.get("k", constant("never")) == "v3"
        await a.set("k", "v4")

        async def b_has_v4() -> bool:
            return await b.get("k", constant("never")) == "v4"

        assert await async_eventually(b_has_v4, BUS_DELAY_BOUND)
        assert b.stats()["bus_disconnects"] == 1
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
async def test_concurrent_writers_reach_the_others_in_the_order_they_were_numbered(
    redis_server: RedisServer, namespace: str
) -> None:
    """Coroutines of one chain announce at once, each publish on a pooled connection of its
    own: numbering and publishing under one lock keeps the numbers in order at the
    receiver, which would otherwise take a reordering for a lost message (a gap) and clear
    its memory for nothing. (Timeouts of 5 s: a stall of 0.5 s on a loaded machine timed a
    publish out, its breaker skipped the next ones, and the receiver never heard them all.)"""
    patient = {"timeout": "5s"}
    writer = await async_chain(redis_server.url, namespace, bus_options=patient)
    receiver = await async_chain(redis_server.url, namespace, bus_options=patient)
    writers, per_writer = 50, 10

    async def write(name: str) -> None:
        for index in range(per_writer):
            await writer.invalidate(f"{name}:{index}")

    async def all_heard() -> bool:
        return receiver.stats().get("bus_received", 0) >= writers * per_writer

    try:
        await asyncio.gather(*(write(f"w{number}") for number in range(writers)))
        assert await async_eventually(all_heard, BUS_DELAY_BOUND)
        assert writer.stats()["bus_sent"] == writers * per_writer
        assert receiver.stats().get("bus_gaps", 0) == 0
    finally:  # left open, their connections were collected in the next test, with warnings
        await writer.aclose()
        await receiver.aclose()


@pytest.mark.anyio
async def test_writers_during_a_stall_try_the_bus_once_and_skip_it_during_the_cool_down(
    namespace: str,
) -> None:
    """The threaded chain's rule (test_redis_coherence) on the asyncio bus: 8 coroutines
    writing while Redis is SIGSTOPped wait behind one publish (the ``asyncio.Lock`` of the
    announcements), which fails and opens the bus's breaker; the other 7 skip the publish."""
    clock = FakeClock()
    with RedisServer() as server:
        cache = await async_chain(server.url, namespace, clock=clock)
        await cache.set("warm", 0)
        assert cache.stats()["bus_sent"] == 1
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.gather(*(cache.set(f"k{n}", n) for n in range(8)))
            stats = cache.stats()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (stats["bus_sent"], stats["bus_publish_errors"]) == (1, 1)
        assert stats["bus_publish_skipped"] == 7
        assert stats["bus_publish_breaker"] == "open"
        clock.advance(5.0)  # both cool-downs over: the next announcement is the probe

        async def connected() -> bool:
            return cache.stats()["bus"] == "connected"

        async def owed_announced() -> bool:
            return cache.stats()["bus_sent"] == 2

        assert await async_eventually(connected, BUS_DELAY_BOUND)
        # The deletes the stall left owed are paid once the clock ends the cool-down (the
        # payment task) and announced again: one message more, the bus breaker's probe. A
        # write while that probe is in flight skips the bus, as the breaker wants: waited for.
        assert await async_eventually(owed_announced, BUS_DELAY_BOUND)
        await cache.set("after", 1)
        assert (cache.stats()["bus_sent"], cache.stats()["bus_publish_skipped"]) == (3, 7)
        assert cache.stats()["bus_publish_breaker"] == "closed"
        await cache.aclose()
        assert cache.stats()["bus"] == "closed"  # it said "connected" after aclose before


@pytest.mark.anyio
async def test_aclose_ends_the_listener_and_its_subscription(
    redis_server: RedisServer, namespace: str
) -> None:
    cache = await async_chain(redis_server.url, namespace)
    bus = async_bus(cache)
    channel = bus.channel
    raw = redis.Redis.from_url(redis_server.url)
    assert dict(raw.pubsub_numsub(channel)) == {channel.encode(): 1}
    thread = bus._listening._thread  # it listens from a thread (async_bus.py)
    assert thread is not None and thread.is_alive()
    await cache.aclose()
    assert not thread.is_alive()
    assert dict(raw.pubsub_numsub(channel)) == {channel.encode(): 0}
    raw.close()


def test_a_chain_built_outside_a_loop_listens_at_once(
    redis_server: RedisServer, namespace: str
) -> None:
    """``from_config`` at import time (no loop runs yet): the bus listens from its thread at
    once, the chain "starting" (its memory not trusted) until the subscription is confirmed.
    (It listened from the chain's first miss, in a task of that loop, until the listener
    left the loop: async_bus.py.)"""
    cache = AsyncTieredCache.from_config(**settings(redis_server.url, namespace, None, None))
    writer = sync_chain(redis_server.url, namespace)
    bus = async_bus(cache)
    assert bus._listening.wait_subscribed(10)
    assert cache.stats()["bus"] == "connected"

    async def main() -> None:
        assert await cache.get("k", constant("v0")) == "v0"
        await asyncio.to_thread(writer.set, "k", "v1")

        async def heard() -> bool:
            return await cache.get("k", constant("never")) == "v1"

        assert await async_eventually(heard, BUS_DELAY_BOUND)
        await cache.aclose()

    asyncio.run(main())
    writer.close()


def test_a_chain_whose_listening_loop_ended_serves_no_copy_it_did_not_hear_about(
    redis_server: RedisServer, namespace: str
) -> None:
    """A chain kept across ``asyncio.run`` calls (a module-level chain of a job runner that
    runs each job in a loop of its own): the listener ended with the first loop. The chain
    must not serve a copy another process changed meanwhile: the bus listens from its thread,
    across the loops, and the write between them is heard. (Memory and the bus only: a Redis
    tier's connections belong to the first loop.)"""
    memory_only = settings(redis_server.url, namespace, redis_server.url, None)
    memory_only["tiers"] = memory_only["tiers"][:1]
    cache = AsyncTieredCache.from_config(**memory_only)
    writer = sync_chain(redis_server.url, namespace)
    bus = async_bus(cache)
    truth = {"k": "v0"}

    async def source() -> str:
        return truth["k"]

    def write(value: str) -> None:
        truth["k"] = value
        writer.set("k", value)

    async def first_job() -> None:
        assert await cache.get("k", source) == "v0"
        assert await bus.wait_subscribed(10)
        await cache.invalidate("other")  # its publisher connects on this loop too

    asyncio.run(first_job())  # its loop ends; the listening thread goes on
    write("v1")

    async def second_job() -> None:
        async def heard_v1() -> bool:  # the write between the loops was heard
            return await cache.get("k", source) == "v1"

        assert await async_eventually(heard_v1, BUS_DELAY_BOUND)
        assert cache.stats()["bus"] == "connected" and bus.connected
        # No period down: the loop's end stops nothing of the listener (it was a task of
        # that loop, and the chain counted one outage from its end to the next loop's miss).
        assert cache.stats()["bus_disconnects"] == 0
        assert await cache.get("k", source) == "v1"
        await cache.invalidate("other")  # its publisher works on this loop
        assert cache.stats().get("bus_publish_errors", 0) == 0
        await asyncio.to_thread(write, "v2")

        async def heard() -> bool:  # the bus dropped v1 from memory: read again
            return await cache.get("k", source) == "v2"

        assert await async_eventually(heard, BUS_DELAY_BOUND)
        await cache.aclose()

    asyncio.run(second_job())
    writer.close()


def test_a_chain_kept_across_loops_announces_from_each_of_them(
    redis_server: RedisServer, namespace: str
) -> None:
    """Writers of one chain announce one at a time under a lock; an ``asyncio.Lock`` belongs
    to the loop it first waited on, so in the next ``asyncio.run`` every announcement that
    had to wait for it failed: 19 of 20 concurrent invalidations never reached the other
    processes, which kept serving their memory copies."""
    settings = {
        "namespace": namespace,
        "tiers": [{"kind": "memory"}],
        "bus": {"kind": "redis", "url": redis_server.url},
    }
    cache = AsyncTieredCache.from_config(**settings)

    async def job(name: str) -> None:
        await asyncio.gather(*(cache.invalidate(f"{name}:{index}") for index in range(20)))

    asyncio.run(job("first"))
    asyncio.run(job("second"))
    stats = cache.stats()
    assert stats.get("bus_publish_errors", 0) == 0
    assert stats["bus_sent"] == 40
    asyncio.run(cache.aclose())


@pytest.mark.anyio
async def test_every_task_cancelled_on_a_loop_that_goes_on_silences_nothing(
    redis_server: RedisServer, namespace: str
) -> None:
    """A framework's shutdown that cancels every task and keeps the loop: the listener is no
    task of the loop (it listens from a thread), so the chain goes on hearing. (When it was
    a task, the chain bypassed its memory until its next miss listened again.)"""
    cache = await async_chain(redis_server.url, namespace)
    writer = await asyncio.to_thread(sync_chain, redis_server.url, namespace)
    assert await cache.get("k", constant("v0")) == "v0"
    # Nothing of the bus for such a sweep to cancel.
    assert [task for task in asyncio.all_tasks() if "tiered-cache-bus" in task.get_name()] == []
    assert cache.stats()["bus"] == "connected"
    await asyncio.to_thread(writer.set, "k", "v1")

    async def heard() -> bool:
        return await cache.get("k", constant("never")) == "v1"

    assert await async_eventually(heard, BUS_DELAY_BOUND)
    assert cache.stats()["bus_disconnects"] == 0
    await cache.aclose()
    await asyncio.to_thread(writer.close)
