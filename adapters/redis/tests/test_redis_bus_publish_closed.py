"""A publish that comes after the threaded bus's close (a write that passed the chain's check
as another thread closed it announces last): it opens no connection.

Seen failing: ``close()`` disconnected the publisher's pool, and the publish took a new
connection from it, left open for the life of the process: 9 rounds of 30 (3 reader threads
writing, ``close()`` from 3 threads at once) left one connection whose last command was
``publish`` open after every ``close()`` had returned (10 s later, still open). A publish
running as the close starts is waited for; one after it is refused, as a closed tier's
calls are, and the link counts it (``bus_publish_errors``), as any publish that failed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from tiered_cache_redis.bus import RedisBus

from tiered_cache.bus import Invalidation
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer

from .server_connections import opened_since


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: CLIENT LIST counts this bus's connections alone
        yield private


def message(number: int) -> Invalidation:
    return Invalidation("writer", number, ("k",), (), False, 0.0)


def test_a_publish_after_the_close_opens_no_connection(server: RedisServer) -> None:
    watch = redis.Redis(host=server.host, port=server.port)
    before = {int(client["id"]) for client in watch.client_list()}
    bus = RedisBus(lambda: redis.Redis(host=server.host, port=server.port), "closing")
    bus.publish(message(1))
    bus.close()
    with pytest.raises(RuntimeError, match="is closed"):
        bus.publish(message(2))
    assert eventually(lambda: opened_since(watch, before) == [], 5), opened_since(watch, before)
    watch.close()


def test_a_publish_running_as_the_close_starts_ends_before_the_client_closes(
    server: RedisServer,
) -> None:
    """The close waits for the publish on the wire, then closes its connection with the rest."""
    watch = redis.Redis(host=server.host, port=server.port)
    before = {int(client["id"]) for client in watch.client_list()}
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
    watch.close()
