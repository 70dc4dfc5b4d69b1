"""The threaded bus closed while its listener reconnects: the chain hears no reconnection.

``RedisBus.close`` sets the stop flag and waits for the listening thread. A listener that was
opening a new subscription then (after a lost connection) still subscribed, told the chain
``on_reconnect`` and showed itself connected, after the close: the chain logged that its
in-process tiers were in use again. The connection it opened was closed as the thread ended
(no subscription left on the server, before and after). The asyncio bus cancels its listener
at ``aclose``: no such window.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

from tiered_cache.testing.servers import RedisServer

from .bus_listeners import Heard


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: CLIENT LIST counts this bus's connections alone
        yield private


def subscribers(server: RedisServer) -> int:
    client = redis.Redis(host=server.host, port=server.port)
    try:
        return sum(1 for entry in client.client_list() if int(entry.get("sub", 0)) > 0)
    finally:
        client.close()


def test_a_bus_closed_while_its_listener_reconnects_tells_no_reconnection(
    server: RedisServer,
) -> None:
    bus = RedisBus(
        lambda: redis.Redis(
            host=server.host,
            port=server.port,
            retry=Retry(NoBackoff(), 0),  # as the plugin's: no silent reconnection
        ),
        "close-race",
        health=Health(interval=0.2, timeout=2.0, poll=0.05, backoff=(0.01, 0.01)),
    )
    heard = Heard()
    bus.subscribe(heard)
    assert bus.wait_subscribed(10)
    closing: list[threading.Thread] = []
    calls = bus._listening.calls
    opens = 0

    def open_then_close() -> Any:
        """The listener's next subscription: the bus is closed (from another thread) as it
        is opened (a fault injector: the close lands in that window every time)."""
        nonlocal opens
        opens += 1
        handle = calls.open()
        if opens == 1:
            closer = threading.Thread(target=bus.close)
            closer.start()  # then shown to the test's thread, which joins it
            closing.append(closer)
            assert bus._stop.wait(10)
        return handle

    bus._listening.calls = dataclasses.replace(calls, open=open_then_close)
    killer = redis.Redis(host=server.host, port=server.port)
    killer.client_kill_filter(_type="pubsub")  # the listener loses its connection
    killer.close()
    until_closing = threading.Event()
    for _ in range(1000):
        if closing:
            break
        until_closing.wait(0.01)
    assert closing, "the listener never reconnected"
    closing[0].join(10)
    # The first subscription confirmed, the connection lost; no "reconnect" after the close.
    assert heard.events == ["reconnect", "disconnect"]
    assert not bus.connected
    assert subscribers(server) == 0  # and no subscription left open
