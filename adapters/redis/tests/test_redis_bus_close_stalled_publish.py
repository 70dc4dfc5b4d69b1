"""A threaded bus closed while a publish is stuck on a stalled Redis (SIGSTOP: a fork for a
save, a swap storm, a paused VM), on a publisher with no socket timeout (a bus built by hand:
the config's clients have one): the close waits for the publish a while, then returns, and the
publish closes the publisher itself once it ends, leaving no connection open. So does a
publish of the main thread that a close from a signal handler landed in.

Seen failing: ``close()`` waited for the publish until Redis resumed (11e3a47 made it wait,
so that the client is not closed under a publish, whose retry then reconnected and left its
connection open for the life of the process)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest
import redis
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

from tiered_cache.bus import Invalidation
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer

from .handler_close import closed_by_a_handler
from .server_connections import opened_since

#: Generous: a close or a publish that has not returned by then is stuck, not slow.
STUCK = 15.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: stopped, and its CLIENT LIST this bus's alone
        yield private


def message(number: int) -> Invalidation:
    return Invalidation("writer", number, ("k",), (), False, 0.0)


def a_bus_that_published(server: RedisServer) -> tuple[RedisBus, redis.Redis, set[int]]:
    """A bus whose publisher has no socket timeout and a connection pooled (one publish
    sent); a client watching the server, and the ids of the connections open before."""
    watch = redis.Redis(host=server.host, port=server.port)
    before = {int(client["id"]) for client in watch.client_list()}

    def connect() -> redis.Redis:
        return redis.Redis(
            host=server.host, port=server.port, socket_timeout=None, socket_connect_timeout=None
        )

    bus = RedisBus(connect, "stalled", health=Health(interval=0.5, timeout=0.5))
    bus.publish(message(1))
    return bus, watch, before


def test_a_close_returns_while_a_publish_is_stuck_on_a_stopped_redis(server: RedisServer) -> None:
    bus, watch, before = a_bus_that_published(server)
    outcome: list[str] = []

    def publish() -> None:
        try:
            bus.publish(message(2))
            outcome.append("sent")
        except Exception as exc:
            outcome.append(type(exc).__name__)

    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        writer = threading.Thread(target=publish)
        writer.start()
        assert eventually(lambda: bus._publishes._running)  # on the wire, no reply coming
        closer = threading.Thread(target=bus.close)
        closer.start()
        closer.join(STUCK)
        closed_while_stopped = not closer.is_alive()
    finally:
        os.kill(pid, signal.SIGCONT)
    writer.join(STUCK)
    closer.join(STUCK)
    assert [closed_while_stopped, writer.is_alive(), outcome] == [True, False, ["sent"]]
    # The publisher closed by the publish, the last to end: nothing of the bus left open.
    assert eventually(lambda: opened_since(watch, before) == [], 5), opened_since(watch, before)
    with pytest.raises(RuntimeError, match="is closed"):
        bus.publish(message(3))
    watch.close()


def test_a_close_in_a_handler_during_a_publish_of_its_thread_leaves_no_connection(
    server: RedisServer,
) -> None:
    """Closed by hand from a signal handler (a worker's SIGTERM handler; a chain's close runs
    on a thread of its own) that lands in the main thread's publish: the close cannot wait
    for it (it cannot end before the handler returns), and closed the publisher under it
    (its retry reconnected, and left the connection open). The publish closes the publisher
    as it ends, as one of another thread the close stopped waiting for does."""
    bus, watch, before = a_bus_that_published(server)
    with closed_by_a_handler(
        bus.close, lambda main: main in bus._publishes._running, server
    ) as closed:
        try:
            bus.publish(message(2))
            outcome = "sent"
        except Exception as exc:
            outcome = type(exc).__name__
    assert [closed.is_set(), outcome] == [True, "sent"]
    # The publisher closed by the publish, the last to end: nothing of the bus left open.
    assert eventually(lambda: opened_since(watch, before) == [], 5), opened_since(watch, before)
    with pytest.raises(RuntimeError, match="is closed"):
        bus.publish(message(3))
    watch.close()
