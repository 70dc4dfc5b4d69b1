"""A bus's close after one that gave up on its stuck listener (two chains on one bus, closed
in turn; an ``aclose()`` run again): it returns at once, having told nothing more.

Seen failing: the second close waited :attr:`Health.close_wait` for the same stuck listener
again (each chain sharing the bus added that wait to the shutdown), then gave up again: warned
again, and told every listener again (each chain counted ``bus_close_abandoned`` twice)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import waiting_in
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

from .bus_listeners import Heard, stuck_in_a_callback

#: Joins of the tests' own threads: a guard against a hang, never a measure.
GUARD = 30.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:
        yield private


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, retry=Retry(NoBackoff(), 0))


def test_a_close_after_one_that_gave_up_on_the_listener_returns_at_once_telling_nothing(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener is held in a callback; the first close gives up on it (the bus's clock
    moved past its bound). The second close, the clock not moved, returns: it waits for
    no listener it gave up on already, and tells nobody again."""
    clock = FakeClock(1000.0)
    bus = RedisBus(
        lambda: client_of(server),
        "stuck-again",
        health=Health(interval=1.0, timeout=1.0, poll=0.05, clock=clock),
    )
    held, other = Heard(hold=True), Heard()
    publisher = client_of(server)
    stuck_in_a_callback(bus, publisher, held, other)
    caplog.set_level(logging.WARNING, logger="tiered_cache_redis.bus")
    try:
        first = threading.Thread(target=bus.close, daemon=True)
        first.start()
        until(lambda: waiting_in(first, "close"), "the first close waiting for its listener")
        clock.advance(3600.0)
        first.join(GUARD)
        assert not first.is_alive(), "the first close never returned"
        second = threading.Thread(target=bus.close, daemon=True)
        second.start()
        second.join(GUARD)
        assert not second.is_alive(), "the second close waited for the listener again"
    finally:
        held.go.set()
        publisher.close()
    assert held.events == ["reconnect", "message", "disconnect", "abandoned"]
    assert other.events == ["reconnect", "disconnect", "abandoned"]
    said = [r.getMessage() for r in caplog.records if "did not end" in r.getMessage()]
    assert len(said) == 1, said
