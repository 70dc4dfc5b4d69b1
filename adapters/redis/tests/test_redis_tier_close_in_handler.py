"""``RedisTier.close()`` called by hand from a signal handler (a worker's SIGTERM handler; a
chain's close runs on a thread of its own) that lands in a call of the same tier on the main
thread, Redis stalled under the call (SIGSTOP) and the client without a socket timeout.

The call cannot end before the handler returns: the close leaves closing the client to it, as
the bus's close does (:meth:`CallsInFlight.close`'s ``then``); closed under the call, the
client's pool disconnected its connection, the call's retry reconnected, and the closed pool
kept that connection open, nobody to close it. And a close landing while the ``client``
property makes the tier's client (its first ``connect()``, under the tier's lock) neither
waits for that lock for ever nor leaves the client made meanwhile open.

Each test stops (or runs) its own server, its connections counted on it (``CLIENT LIST``).
Waits are guards against a hang, never measures.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING

from .handler_close import closed_by_a_handler
from .server_connections import opened_since


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: stopped, and its CLIENT LIST this tier's alone
        yield private


def test_a_close_in_a_handler_during_a_call_of_its_thread_leaves_no_connection(
    server: RedisServer,
) -> None:
    watch = redis.Redis(host=server.host, port=server.port)
    before = {int(client["id"]) for client in watch.client_list()}
    client = redis.Redis(
        host=server.host, port=server.port, socket_timeout=None, socket_connect_timeout=None
    )
    tier = RedisTier(client, namespace="handler")
    assert tier.get("warm") is MISSING  # a connection in the pool
    with closed_by_a_handler(
        tier.close, lambda main: main in tier._calls._running, server
    ) as closed:
        try:
            outcome: Any = tier.get("k")
        except Exception as exc:
            outcome = type(exc).__name__
    assert [closed.is_set(), outcome] == [True, MISSING]
    # The client closed by the call as it ended: nothing of the tier left open.
    assert eventually(lambda: opened_since(watch, before) == [], 5), opened_since(watch, before)
    with pytest.raises(RuntimeError, match="is closed"):
        tier.get("later")
    watch.close()


def test_a_close_in_a_handler_during_the_first_connect_neither_hangs_nor_leaves_it_open(
    server: RedisServer,
) -> None:
    """The handler lands in ``connect()`` (made under the tier's lock by the ``client``
    property, outside any call: asked by ``can_lease``, before a write's first call). Run in
    a forked child: a hang is a report missing."""

    def body() -> list[Any]:
        made: list[redis.Redis] = []
        seen: list[Any] = []

        def connect() -> redis.Redis:
            made.append(redis.Redis(host=server.host, port=server.port))
            made[0].ping()  # a connection of its own, open
            signal.raise_signal(signal.SIGUSR1)  # the handler lands here, under the lock
            return made[0]

        tier = RedisTier(connect=connect, namespace="connect")

        def handler(signum: int, frame: object) -> None:
            tier.close()
            seen.append("handler closed")

        signal.signal(signal.SIGUSR1, handler)
        try:
            seen.append(("can_lease", tier.can_lease("k")))
        except RuntimeError as exc:
            seen.append(("can_lease", str(exc)))
        pool = made[0].connection_pool
        connections = [*pool._available_connections, *pool._in_use_connections]
        seen.append(("connections open", sum(1 for c in connections if c._sock)))
        return seen

    seen = in_a_child(body, timeout=20)
    assert seen == [
        "handler closed",
        ["can_lease", "tier 'redis' is closed"],
        ["connections open", 0],
    ]
