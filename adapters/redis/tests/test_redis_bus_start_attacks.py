"""The bus's start attacked: a second chain joining a shared bus that is down, a fill in
flight across the first confirmation, an asyncio chain that only looks up."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisBus
from tiered_cache_redis.bus import RedisBus

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.loops import collected_unclosed
from tiered_cache.testing.polling import async_eventually, eventually
from tiered_cache.testing.servers import FaultProxy, RedisServer

from .held_bus import held_settings


def test_a_second_chain_joining_a_shared_bus_while_it_is_down_is_told_so(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy
) -> None:
    bus = RedisBus(lambda: redis.Redis.from_url(proxy.url("redis")), f"{namespace}:inv")
    first = TieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)
    assert bus.wait_subscribed(10)
    proxy.cut()
    assert eventually(lambda: first.stats()["bus"] == "down")
    second = TieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)
    assert second.stats()["bus"] == "down"  # not "starting": the bus is down, and said so
    assert second.stats()["bus_disconnects"] == 1
    proxy.restore()
    assert eventually(lambda: second.stats()["bus"] == "connected")
    second.close()
    first.close()


def test_a_fill_in_flight_across_the_first_confirmation_is_not_kept(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy
) -> None:
    writer = subscribed_chain(bus_chain_settings(redis_server.url, namespace))
    proxy.delay(60.0)
    reader = TieredCache.from_config(**held_settings(redis_server.url, namespace, proxy))
    read, go = threading.Event(), threading.Event()
    got: list[Any] = []

    def load() -> str:
        read.set()
        go.wait(30)
        return "old"  # read before the write below

    filling = threading.Thread(target=lambda: got.append(reader.get("k", load)))
    filling.start()
    assert read.wait(10)
    writer.set("k", "new")  # announced before the reader's subscription is confirmed
    proxy.restore()
    link = reader._bus_link
    assert link is not None
    assert link.bus.wait_subscribed(10)  # type: ignore[union-attr]
    go.set()
    filling.join(10)
    assert got == ["old"]  # the read in flight answers what it read
    assert reader.stats()["bus"] == "connected"
    assert reader.get("k", lambda: "never") == "new"
    reader.close()
    writer.close()


def test_an_async_chain_that_only_looks_up_gets_connected(
    redis_server: RedisServer, namespace: str
) -> None:
    writer = subscribed_chain(bus_chain_settings(redis_server.url, namespace))
    writer.set("k", "v")
    reader = AsyncTieredCache.from_config(**bus_chain_settings(redis_server.url, namespace))

    async def main() -> None:
        assert set(await reader.lookup_many(["k"])) == {"k"}  # copied into memory
        deadline = time.monotonic() + 10
        while reader.stats()["bus"] != "connected" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert reader.stats()["bus"] == "connected"
        await reader.aclose()

    asyncio.run(main())
    writer.close()


def test_a_chain_closed_while_starting_logs_no_outage(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Closed while its first subscription is in flight (the handshake held back longer
    than ``bus.timeout``): the listener's timeout comes after the close; the closed chain is
    told nothing (it warned that its bus was disconnected, and counted an outage)."""
    proxy.delay(60.0)
    reader = TieredCache.from_config(
        **bus_chain_settings(redis_server.url, namespace, bus={"url": proxy.url("redis")})
    )
    assert reader.stats()["bus"] == "starting"
    reader.close()  # waits for the listener, which times out meanwhile
    assert reader.stats()["bus_disconnects"] == 0
    assert [r.getMessage() for r in caplog.records if r.name == "tiered_cache.bus"] == []


def test_a_closed_async_chain_is_not_disconnected_in_a_forked_child(
    redis_server: RedisServer, namespace: str
) -> None:
    """A forked child is told its asyncio chain's bus is down: a closed chain too, which
    warned and counted an outage there (in every child of a prefork server)."""
    cache = AsyncTieredCache.from_config(**bus_chain_settings(redis_server.url, namespace))

    async def main() -> None:
        await cache.lookup_many(["k"])
        await cache.aclose()

    asyncio.run(main())
    stats = in_a_child(lambda: [cache.stats()["bus"], cache.stats()["bus_disconnects"]], 30)
    assert stats == ["closed", 0]


def test_an_async_fill_in_flight_across_the_first_confirmation_is_not_kept(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy
) -> None:
    writer = subscribed_chain(bus_chain_settings(redis_server.url, namespace))
    proxy.delay(60.0)
    reader = AsyncTieredCache.from_config(**held_settings(redis_server.url, namespace, proxy))

    async def main() -> None:
        read, go = asyncio.Event(), asyncio.Event()

        async def load() -> str:
            read.set()
            await go.wait()
            return "old"  # read before the write below

        filling = asyncio.ensure_future(reader.get("k", load))  # starts the listener
        await read.wait()
        await asyncio.to_thread(writer.set, "k", "new")  # unheard: not subscribed yet
        proxy.restore()
        assert await reader._bus_link.bus.wait_subscribed(10)  # type: ignore[union-attr]
        go.set()
        assert await filling == "old"
        assert reader.stats()["bus"] == "connected"
        assert await reader.get("k", load) == "new"
        await reader.aclose()

    asyncio.run(main())
    writer.close()


def test_a_chain_sharing_a_bus_another_chain_closed_is_not_left_connected(
    redis_server: RedisServer, namespace: str
) -> None:
    """Closing a chain closes its bus: another chain on the same bus heard nothing from then
    on, yet stayed "connected" and served its memory after other processes' writes."""
    bus = RedisBus(lambda: redis.Redis.from_url(redis_server.url), f"{namespace}:invalidations")
    first = TieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)
    second = TieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)
    assert bus.wait_subscribed(10)
    second.close()
    assert first.stats()["bus"] == "down"  # nothing is heard any more
    assert second.stats()["bus_disconnects"] == 0  # the closed chain is told nothing
    first.close()


def test_an_async_chain_sharing_a_bus_another_chain_closed_is_not_left_connected(
    redis_server: RedisServer, namespace: str
) -> None:
    bus = AsyncRedisBus(
        lambda: aioredis.Redis.from_url(redis_server.url),
        f"{namespace}:invalidations",
        listen_with=lambda: redis.Redis.from_url(redis_server.url),
    )
    first = AsyncTieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)
    second = AsyncTieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)

    async def main() -> None:
        assert await bus.wait_subscribed(10)
        await second.aclose()
        assert first.stats()["bus"] == "down"
        assert second.stats()["bus_disconnects"] == 0
        await first.aclose()

    asyncio.run(main())


def test_a_chain_joining_a_bus_whose_loop_was_closed_by_hand_is_not_connected(
    redis_server: RedisServer, namespace: str
) -> None:
    """The loop an async bus's chain ran on, closed by hand (no ``shutdown_asyncgens``).
    When the listener was a task of that loop it never ran again, and a chain added to the
    bus afterwards was told the last state told, "connected", while nothing listened. The
    bus listens from a thread now: both chains are connected, truly (a write is heard)."""
    bus = AsyncRedisBus(
        lambda: aioredis.Redis.from_url(redis_server.url),
        f"{namespace}:invalidations",
        listen_with=lambda: redis.Redis.from_url(redis_server.url),
    )
    first = AsyncTieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)

    async def load() -> str:
        return "v"

    async def listening() -> bool:
        assert await first.get("k", load) == "v"
        return await bus.wait_subscribed(10)

    # What was the closed loop's (its listener task, its connections) is collected unclosed.
    with collected_unclosed():
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(listening())
        loop.close()  # no shutdown_asyncgens: the listener's end never runs
        second = AsyncTieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)
        assert (first.stats()["bus"], second.stats()["bus"]) == ("connected", "connected")
        writer = subscribed_chain(bus_chain_settings(redis_server.url, namespace))

        async def listening_still() -> None:
            assert await second.get("k", load) == "v"
            await asyncio.to_thread(writer.invalidate, "k")
            # Both: the listener tells the chains in turn, on its thread (checked once the
            # first had it, the second was not told yet: 1 run in 6 under load).
            assert await async_eventually(
                lambda: (first.stats()["bus_received"], second.stats()["bus_received"]) == (1, 1)
            )
            await second.aclose()
            await first.aclose()
            await asyncio.to_thread(writer.close)

        asyncio.run(listening_still())


def test_a_chain_closed_after_its_buss_loop_was_closed_by_hand_closes_its_bus(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its only chain closed on the next loop, having served memory hits alone there (no
    call of the bus): the bus's close cancelled the listener, a task of the closed loop, and
    failed (``RuntimeError: Event loop is closed``), its publisher left open."""
    bus = AsyncRedisBus(
        lambda: aioredis.Redis.from_url(redis_server.url),
        f"{namespace}:invalidations",
        listen_with=lambda: redis.Redis.from_url(redis_server.url),
    )
    chain = AsyncTieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)

    async def listening() -> bool:
        return await bus.wait_subscribed(10)

    with collected_unclosed():
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(listening())
        loop.close()  # no shutdown_asyncgens: the listener's end never runs
        asyncio.run(chain.aclose())
    assert "closing the invalidation bus failed" not in caplog.text
    assert chain.stats()["bus"] == "closed"
