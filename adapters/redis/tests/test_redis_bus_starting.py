"""A chain is not connected to its bus until the bus's first subscription is confirmed.

Until the server has answered SUBSCRIBE, nothing another process announces reaches the chain:
a copy its memory took meanwhile, trusted for the memory tier's TTL, outlived a write that was
announced before the subscription took effect. A proxy in front of the server holds the
subscription back (its connection's traffic delayed) while the chain fills its memory and
another chain writes; then lets it through. Starting is quiet (every start does it); a first
subscription that fails is an outage like any other.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis
from tiered_cache_redis import AsyncRedisBus
from tiered_cache_redis.bus import RedisBus

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.loops import collected_unclosed
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import FaultProxy, RedisServer

from .held_bus import held_settings

HELD = 60.0
#: The chain's warnings about its bus (the listener's own are the adapter's logger).
CHAIN_BUS_LOGGER = "tiered_cache.bus"


def held_start(
    server: RedisServer, namespace: str, proxy: FaultProxy
) -> tuple[TieredCache, dict[str, Any]]:
    """A writer, subscribed; and the settings of a reader whose subscription ``proxy`` holds
    back (until it is restored)."""
    writer = subscribed_chain(bus_chain_settings(server.url, namespace))
    proxy.delay(HELD)
    return writer, held_settings(server.url, namespace, proxy)


def sync_bus(cache: TieredCache) -> RedisBus:
    link = cache._bus_link
    assert link is not None
    assert isinstance(link.bus, RedisBus)
    return link.bus


def async_bus(cache: AsyncTieredCache) -> AsyncRedisBus:
    link = cache._bus_link
    assert link is not None
    assert isinstance(link.bus, AsyncRedisBus)
    return link.bus


def chain_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == CHAIN_BUS_LOGGER and record.levelno >= logging.WARNING
    ]


def test_a_write_announced_before_the_first_subscription_is_not_missed(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    writer, settings = held_start(redis_server, namespace, proxy)
    reader = TieredCache.from_config(**settings)
    assert reader.stats()["bus"] == "starting"
    assert reader.get("k", lambda: "old") == "old"  # into the reader's memory
    writer.set("k", "new")  # announced: the reader's SUBSCRIBE has not reached the server
    proxy.restore()
    assert sync_bus(reader).wait_subscribed(10)
    assert reader.stats()["bus"] == "connected"
    assert reader.get("k", lambda: "never") == "new"
    assert reader.stats()["bus_disconnects"] == 0  # a start, not an outage
    assert chain_warnings(caplog) == []
    reader.close()
    writer.close()


def test_an_async_chain_misses_no_write_announced_before_it_subscribed(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    writer, settings = held_start(redis_server, namespace, proxy)
    reader = AsyncTieredCache.from_config(**settings)

    async def main() -> None:
        assert reader.stats()["bus"] == "starting"
        assert await reader.get("k", _constant("old")) == "old"  # starts the listener
        await asyncio.to_thread(writer.set, "k", "new")
        proxy.restore()
        assert await async_bus(reader).wait_subscribed(10)
        assert reader.stats()["bus"] == "connected"
        assert await reader.get("k", _constant("never")) == "new"
        assert reader.stats()["bus_disconnects"] == 0
        await reader.aclose()

    asyncio.run(main())
    assert chain_warnings(caplog) == []
    writer.close()


def test_a_bus_unreachable_at_start_is_down_and_said_so(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The first subscription fails (connection refused): an outage, logged and counted as
    before; memory is not trusted until the bus is reached, then the writes made meanwhile
    are not served stale."""
    writer = subscribed_chain(bus_chain_settings(redis_server.url, namespace))
    proxy.cut()
    reader = TieredCache.from_config(**held_settings(redis_server.url, namespace, proxy))
    assert reader.get("k", lambda: "old") == "old"
    assert eventually(lambda: reader.stats()["bus"] == "down")
    assert reader.stats()["bus_disconnects"] == 1
    assert chain_warnings(caplog) == [
        "invalidation bus disconnected: memory serves only fresh fills until it is back"
    ]
    writer.set("k", "new")
    proxy.restore()
    assert sync_bus(reader).wait_subscribed(10)
    assert reader.get("k", lambda: "never") == "new"
    reader.close()
    writer.close()


def test_a_resubscription_held_back_is_not_trusted_before_it_is_confirmed(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy
) -> None:
    """After an outage the same rule: back only once the server confirmed SUBSCRIBE."""
    writer = subscribed_chain(bus_chain_settings(redis_server.url, namespace))
    reader = subscribed_chain(held_settings(redis_server.url, namespace, proxy))
    proxy.cut()
    assert eventually(lambda: reader.stats()["bus"] == "down")
    proxy.delay(HELD)
    proxy.reopen()  # connections accepted again, still held
    assert reader.get("k", lambda: "old") == "old"
    writer.set("k", "new")
    assert reader.stats()["bus"] == "down"
    proxy.restore()
    assert eventually(lambda: reader.stats()["bus"] == "connected")
    assert reader.get("k", lambda: "never") == "new"
    reader.close()
    writer.close()


def _constant(value: Any) -> Any:
    async def load() -> Any:
        return value

    return load


def test_a_second_chain_on_a_subscribed_bus_is_connected_at_once(
    redis_server: RedisServer, namespace: str
) -> None:
    """One bus shared by two chains of a process: the second subscribes to a bus whose
    subscription is confirmed already, and is told so (nothing else would tell it); both hear
    the bus losing its server."""
    bus = RedisBus(lambda: redis.Redis.from_url(redis_server.url), f"{namespace}:invalidations")
    first = TieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)
    assert first.stats()["bus"] in ("starting", "connected")
    assert bus.wait_subscribed(10)
    second = TieredCache([MemoryTier(ttl=600)], ttl=600, bus=bus)
    assert second.stats()["bus"] == "connected"
    killer = redis.Redis.from_url(redis_server.url)
    killer.client_kill_filter(_type="pubsub")  # the listener loses its subscription
    killer.close()
    assert eventually(lambda: second.stats()["bus_disconnects"] == 1)
    assert eventually(lambda: second.stats()["bus"] == "connected")  # subscribed again
    assert first.stats()["bus_disconnects"] == 1
    assert first.stats()["bus"] == "connected"
    second.close()
    first.close()


def bus_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings of the chain's side of the bus and of the listener's."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name in (CHAIN_BUS_LOGGER, "tiered_cache_redis.bus")
        and record.levelno >= logging.WARNING
    ]


def test_a_loop_that_ends_before_the_first_confirmation_is_no_outage(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-shot ``asyncio.run`` whose chain's subscription is not confirmed yet when it
    ends (a script, a short job): the listener stops with the loop, nothing was heard nor
    ever trusted, so nothing is logged or counted; the chain is still starting, and a write
    announced before its next loop's subscription is not served stale after it."""
    writer, settings = held_start(redis_server, namespace, proxy)
    reader = AsyncTieredCache.from_config(**settings)

    async def first() -> None:
        assert await reader.get("k", _constant("old")) == "old"  # starts the listener

    asyncio.run(first())
    assert reader.stats()["bus_disconnects"] == 0
    assert bus_warnings(caplog) == []
    assert reader.stats()["bus"] == "starting"
    writer.set("k", "new")
    proxy.restore()

    async def second() -> None:
        assert await async_bus(reader).wait_subscribed(10)
        assert reader.stats()["bus"] == "connected"
        assert await reader.get("k", _constant("never")) == "new"
        await reader.aclose()

    asyncio.run(second())
    assert reader.stats()["bus_disconnects"] == 0
    assert bus_warnings(caplog) == []
    writer.close()


def test_a_loop_closed_by_hand_before_the_first_confirmation_is_no_outage(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """As a loop that ends first, one run by hand and closed (no ``shutdown_asyncgens``)
    before the subscription is confirmed: its listener is dropped, but the chain heard
    nothing and trusted nothing, so it stays starting, neither told down nor counted."""
    writer, settings = held_start(redis_server, namespace, proxy)
    reader = AsyncTieredCache.from_config(**settings)

    async def first() -> None:
        assert await reader.get("k", _constant("old")) == "old"  # starts the listener

    async def second() -> None:
        assert await async_bus(reader).wait_subscribed(10)
        assert reader.stats()["bus"] == "connected"
        assert await reader.get("k", _constant("never")) == "new"
        await reader.aclose()

    # The closed loop's listener task and connections are collected unclosed.
    with collected_unclosed():
        loop = asyncio.new_event_loop()
        loop.run_until_complete(first())
        loop.close()
        assert reader.stats()["bus"] == "starting"
        assert reader.stats()["bus_disconnects"] == 0
        writer.set("k", "new")
        proxy.restore()
        asyncio.run(second())
    assert reader.stats()["bus_disconnects"] == 0
    assert chain_warnings(caplog) == []
    writer.close()
