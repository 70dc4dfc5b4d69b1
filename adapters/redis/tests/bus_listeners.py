"""What the bus tests listen with, and a server that refuses every connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import redis
from tiered_cache_redis.bus import RedisBus

from tiered_cache.bus import Invalidation
from tiered_cache.testing.servers import refused_port

C = TypeVar("C")


class Heard:
    """A bus listener that records what it is told; the first message it hears holds it
    (when ``hold``) until :attr:`go` is set: a callback the close's wake cannot reach."""

    def __init__(self, *, hold: bool = False) -> None:
        self.events: list[str] = []
        self.hold = hold
        self.inside, self.go = threading.Event(), threading.Event()

    def on_message(self, message: Invalidation) -> None:
        self.events.append("message")
        if self.hold and not self.inside.is_set():
            self.inside.set()
            self.go.wait()

    def on_disconnect(self) -> None:
        self.events.append("disconnect")

    def on_reconnect(self) -> None:
        self.events.append("reconnect")

    def on_error(self, error: Exception) -> None:
        self.events.append("error")

    def on_close_abandoned(self) -> None:
        self.events.append("abandoned")


def stuck_in_a_callback(
    bus: RedisBus, publisher: redis.Redis, held: Heard, *others: Heard, guard: float = 30.0
) -> None:
    """Subscribe ``held`` (a ``Heard(hold=True)``) and ``others`` to ``bus``, then publish an
    invalidation on its channel: returned once the bus's listener is stuck in ``held``'s
    callback (until ``held.go`` is set). ``guard``: a bound against a hang, not a measure."""
    for listener in (held, *others):
        bus.subscribe(listener)
    assert bus.wait_subscribed(guard), "the bus never subscribed"
    publisher.publish(bus.channel, Invalidation("someone", 1, ("a",)).encode())
    assert held.inside.wait(guard), "the listener never heard the message"


def refused(client: Callable[[int], C]) -> tuple[Callable[[], C], list[int]]:
    """A bus's ``connect`` making ``client(port)`` for a port nothing listens on (every
    connection refused), and the list it counts its calls in (the publisher's among them)."""
    port = refused_port()
    calls: list[int] = []

    def connect() -> C:
        calls.append(1)
        return client(port)

    return connect, calls
