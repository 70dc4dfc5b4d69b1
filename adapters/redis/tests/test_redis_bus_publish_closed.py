"""A publish that comes after the bus's close (a write that passed the chain's check as another
thread or task closed it announces last): it opens no connection; the threaded bus and the
asyncio one's publisher alike.

Seen failing (threaded): ``close()`` disconnected the publisher's pool, and the publish took a new
connection from it, left open for the life of the process: 9 rounds of 30 (3 reader threads
writing, ``close()`` from 3 threads at once) left one connection whose last command was
``publish`` open after every ``close()`` had returned (10 s later, still open). A publish
running as the close starts is waited for; one after it is refused, as a closed tier's
calls are, and the link counts it (``bus_publish_errors``), as any publish that failed.

Seen failing (asyncio): a publish after ``aclose()`` was sent, on a new connection of the closed
client held until its loop ended (``DID NOT RAISE``; the connection open after the close).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisBus
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

from tiered_cache.bus import Invalidation
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer

from .server_connections import no_connection_opened_since, opened_since


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: CLIENT LIST counts this bus's connections alone
        yield private


@pytest.fixture
def watched(server: RedisServer) -> Iterator[tuple[redis.Redis, set[int]]]:
    """A connection that watches the server, and the ids of the connections open before."""
    watch = redis.Redis(host=server.host, port=server.port)
    yield watch, {int(client["id"]) for client in watch.client_list()}


def message(number: int) -> Invalidation:
    return Invalidation("writer", number, ("k",), (), False, 0.0)


def test_a_publish_after_the_close_opens_no_connection(
    server: RedisServer, watched: tuple[redis.Redis, set[int]]
) -> None:
    watch, before = watched
    bus = RedisBus(lambda: redis.Redis(host=server.host, port=server.port), "closing")
    bus.publish(message(1))
    bus.close()
    with pytest.raises(RuntimeError, match="is closed"):
        bus.publish(message(2))
    assert eventually(lambda: opened_since(watch, before) == [], 5), opened_since(watch, before)


def test_a_publish_running_as_the_close_starts_ends_before_the_client_closes(
    server: RedisServer, watched: tuple[redis.Redis, set[int]]
) -> None:
    """The close waits for the publish on the wire, then closes its connection with the rest."""
    watch, before = watched
    publisher = redis.Redis(host=server.host, port=server.port)
    on_the_wire, let_go = threading.Event(), threading.Event()
    real_publish = publisher.publish

    def held_publish(channel: str, data: bytes) -> int:
        on_the_wire.set()
        let_go.wait(30)
        return int(real_publish(channel, data))

    publisher.publish = held_publish  # type: ignore[method-assign]
    bus = RedisBus(
        lambda: redis.Redis(host=server.host, port=server.port), "closing", publisher=publisher
    )
    writer = threading.Thread(target=bus.publish, args=(message(1),))
    writer.start()
    assert on_the_wire.wait(30)
    closer = threading.Thread(target=bus.close)
    closer.start()
    assert not eventually(lambda: not closer.is_alive(), 0.2)  # waits for the publish
    let_go.set()
    writer.join(30)
    closer.join(30)
    assert not closer.is_alive()
    assert eventually(lambda: opened_since(watch, before) == [], 5), opened_since(watch, before)


def async_bus(server: RedisServer, publisher: aioredis.Redis | None = None) -> AsyncRedisBus:
    return AsyncRedisBus(
        lambda: aioredis.Redis(host=server.host, port=server.port),
        "closing",
        listen_with=lambda: redis.Redis(host=server.host, port=server.port),
        publisher=publisher,
        # aclose waits for a publish this long at most (Health.close_wait, 60 s here): past
        # the tests' held publish, however loaded the machine (no listener runs here).
        health=Health(interval=30.0, timeout=30.0),
    )


def test_an_async_publish_after_the_close_opens_no_connection(
    server: RedisServer, watched: tuple[redis.Redis, set[int]]
) -> None:
    watch, before = watched

    async def scenario() -> list[str]:
        bus = async_bus(server)
        await bus.publish(message(1))
        await bus.aclose()
        with pytest.raises(RuntimeError, match="bus 'closing' is closed"):
            await bus.publish(message(2))
        return await no_connection_opened_since(watch, before)  # the loop still running

    assert asyncio.run(scenario()) == []


def test_an_async_publish_on_the_wire_as_the_close_starts_is_waited_for(
    server: RedisServer, watched: tuple[redis.Redis, set[int]]
) -> None:
    """aclose waits for the publish on the wire, then closes the publisher with it."""
    watch, before = watched
    publisher = aioredis.Redis(host=server.host, port=server.port)
    real_publish = publisher.publish

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        on_the_wire, let_go = asyncio.Event(), asyncio.Event()
        order: list[str] = []

        async def held_publish(channel: str, data: bytes) -> int:
            on_the_wire.set()
            await let_go.wait()
            sent = int(await real_publish(channel, data))
            order.append("published")
            return sent

        publisher.publish = held_publish  # type: ignore[method-assign]
        bus = async_bus(server, publisher)
        writer = asyncio.create_task(bus.publish(message(1)))
        await on_the_wire.wait()

        async def close() -> None:
            await bus.aclose()
            order.append("closed")

        closer = asyncio.create_task(close())
        for _ in range(50):  # the listening thread's close, then the wait for the publish
            await asyncio.sleep(0.01)
        waited = list(order)
        let_go.set()
        await writer
        await closer
        return waited, order, await no_connection_opened_since(watch, before)

    waited, order, left = asyncio.run(scenario())
    assert waited == []
    assert order == ["published", "closed"]
    assert left == []
