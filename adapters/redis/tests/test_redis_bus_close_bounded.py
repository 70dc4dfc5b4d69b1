"""The threaded bus's close when its listener does not end, or sleeps between two attempts.

``RedisBus.close`` wakes its listener (it shuts the subscription's sockets down) and waits for
it. A listener stuck where no socket's shutdown reaches (a listener's callback, a DNS lookup
in a reconnect, a lock) made that wait, the chain's ``close()`` and the interpreter's exit
hang for ever: the close now gives up after :attr:`Health.close_wait` (the longest any of the
listener's calls on Redis can take), says so, and the listener, left to end by itself, acts on
no chain any more. A listener waiting out its reconnection backoff is woken by the close.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

from tiered_cache.bus import Invalidation
from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import waiting_in
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

from .bus_listeners import Heard, refused, stuck_in_a_callback

#: Joins of the tests' own threads: a guard against a hang, never a measure.
GUARD = 30.0
#: Past the close's wait on the bus's clock (a few of its 1 s timeouts).
PAST_THE_BOUND = 3600.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: CLIENT LIST counts this bus's connections alone
        yield private


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, retry=Retry(NoBackoff(), 0))


def subscribers(server: RedisServer) -> int:
    client = client_of(server)
    try:
        return sum(1 for entry in client.client_list() if int(entry.get("sub", 0)) > 0)
    finally:
        client.close()


def bus_on(server: RedisServer, clock: FakeClock, channel: str) -> RedisBus:
    return RedisBus(
        lambda: client_of(server),
        channel,
        health=Health(interval=1.0, timeout=1.0, poll=0.05, clock=clock),
    )


def closing(bus: RedisBus) -> threading.Thread:
    closer = threading.Thread(target=bus.close, name="test-closer", daemon=True)
    closer.start()
    return closer


def close_past_the_bound(bus: RedisBus, clock: FakeClock) -> None:
    """Close ``bus`` (on a thread of its own), and once the close waits for its listener move
    the bus's clock past its bound: the close must return."""
    closer = closing(bus)
    until(lambda: waiting_in(closer, "close"), "the close waiting for its listener")
    clock.advance(PAST_THE_BOUND)
    closer.join(GUARD)
    assert not closer.is_alive(), "close() never returned: its listener is stuck"


def test_a_close_whose_listener_is_stuck_in_a_callback_gives_up_and_the_listener_acts_no_more(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener is held in a chain's ``on_message`` (a callback the close's wake cannot
    reach). The close waits :attr:`Health.close_wait` on the bus's clock, then returns,
    warns naming the bus and tells the listeners (the chain counts it); let go, the listener
    delivers nothing more, neither subscribes again nor tells a reconnection."""
    clock = FakeClock(1000.0)
    bus = bus_on(server, clock, "stuck-callback")
    held, other = Heard(hold=True), Heard()
    publisher = client_of(server)
    stuck_in_a_callback(bus, publisher, held, other)
    listener = bus._thread
    assert listener is not None
    caplog.set_level(logging.WARNING, logger="tiered_cache_redis.bus")
    try:
        close_past_the_bound(bus, clock)
        assert listener.is_alive()  # left to end by itself
        warned = [r.getMessage() for r in caplog.records if "stuck-callback" in r.getMessage()]
        assert any("did not end" in line for line in warned), warned
        publisher.publish("stuck-callback", Invalidation("someone", 2, ("b",)).encode())
    finally:
        held.go.set()
        publisher.close()
    until(lambda: not listener.is_alive(), "the abandoned listener ended")
    # Told the bus is down as the close gave up, then that it gave up; nothing after.
    assert held.events == ["reconnect", "message", "disconnect", "abandoned"]
    assert other.events == ["reconnect", "disconnect", "abandoned"]
    assert not bus.connected
    assert subscribers(server) == 0


def test_two_closes_at_once_of_a_bus_whose_listener_is_stuck_give_up_once(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Two chains sharing the bus close at once, its listener stuck in a callback: both
    closes return, and the giving up is said and told once. Seen failing: told twice
    (``['reconnect', 'message', 'disconnect', 'abandoned', 'abandoned']``), warned twice."""
    clock = FakeClock(1000.0)
    bus = bus_on(server, clock, "stuck-twice")
    held = Heard(hold=True)
    publisher = client_of(server)
    stuck_in_a_callback(bus, publisher, held)
    caplog.set_level(logging.WARNING, logger="tiered_cache_redis.bus")
    closers = [closing(bus) for _ in range(2)]
    try:
        until(
            lambda: all(waiting_in(closer, "close") for closer in closers),
            "both closes waiting for the listener",
        )
        clock.advance(PAST_THE_BOUND)
        for closer in closers:
            closer.join(GUARD)
        assert not any(closer.is_alive() for closer in closers), "a close() never returned"
    finally:
        held.go.set()
        publisher.close()
    assert held.events == ["reconnect", "message", "disconnect", "abandoned"]
    said = [r.getMessage() for r in caplog.records if "did not end" in r.getMessage()]
    assert len(said) == 1, said


def test_a_close_whose_listener_is_stuck_reconnecting_gives_up_and_it_never_subscribes(
    server: RedisServer,
) -> None:
    """The listener lost its subscription and is stuck opening the next one (a DNS lookup
    that does not answer: no socket yet for the close to shut down). The close gives up;
    let go, the listener neither subscribes nor tells a reconnection."""
    clock = FakeClock(1000.0)
    bus = bus_on(server, clock, "stuck-reconnect")
    heard = Heard()
    bus.subscribe(heard)
    assert bus.wait_subscribed(GUARD)
    listener = bus._thread
    assert listener is not None
    calls = bus._listening.calls
    opening, go = threading.Event(), threading.Event()

    def stuck_open() -> object:
        opening.set()
        go.wait()
        return calls.open()

    bus._listening.calls = dataclasses.replace(calls, open=stuck_open)
    killer = client_of(server)
    killer.client_kill_filter(_type="pubsub")  # the listener loses its connection
    killer.close()
    assert opening.wait(GUARD)
    try:
        close_past_the_bound(bus, clock)
    finally:
        go.set()
    until(lambda: not listener.is_alive(), "the abandoned listener ended")
    assert heard.events == ["reconnect", "disconnect", "abandoned"]
    assert not bus.connected
    assert subscribers(server) == 0


def test_a_close_during_the_reconnection_backoff_wakes_the_listener(
    server: RedisServer,
) -> None:
    """The bus's server is gone: the listener waits out its backoff (an hour here) between
    two attempts. The close wakes it: it returns once the listener has ended, having tried
    no connection more. Seen failing: the close waited out the backoff."""
    connect, attempts = refused(
        lambda port: redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    )
    bus = RedisBus(connect, "backoff", health=Health(backoff=(3600.0, 3600.0)))
    heard = Heard()
    calls = bus._listening.calls
    pausing = threading.Event()

    def pause(seconds: float) -> object:
        pausing.set()
        return calls.sleep(seconds)

    bus._listening.calls = dataclasses.replace(calls, sleep=pause)
    bus.subscribe(heard)
    assert pausing.wait(GUARD), "the listener never backed off"
    listener = bus._thread
    assert listener is not None
    closer = closing(bus)
    closer.join(GUARD)
    assert not closer.is_alive(), "close() waited out the reconnection backoff"
    assert not listener.is_alive()
    # The publisher's client, and the listener's one attempt.
    assert (len(attempts), heard.events) == (2, ["disconnect"])


def test_a_chain_whose_bus_listener_is_stuck_closes_says_so_and_counts_it(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The chain's ``close()`` (its bus's, on the bus's real clock: ``timeout`` 100 ms)
    returns though a listener of its bus is stuck in a callback; the warning names the bus
    by its channel and shows no password (the bus's URL carries one), and the chain counts
    it (``bus_close_abandoned``)."""
    with RedisServer(password="s3cret-pw") as server:
        settings = bus_chain_settings(
            server.url, namespace, bus={"timeout": "100ms", "health_check_interval": "1s"}
        )
        cache = subscribed_chain(settings)
        link = cache._bus_link
        assert link is not None
        held = Heard(hold=True)
        link.bus.subscribe(held)
        cache.set("k", "v")  # announced: the held listener hears it (the chain skips its own)
        assert held.inside.wait(GUARD)
        caplog.set_level(logging.WARNING, logger="tiered_cache_redis.bus")
        closer = threading.Thread(target=cache.close, daemon=True)
        try:
            closer.start()
            closer.join(GUARD)
            assert not closer.is_alive(), "close() never returned: its bus's listener is stuck"
        finally:
            held.go.set()
    assert cache.stats()["bus_close_abandoned"] == 1
    said = [record.getMessage() for record in caplog.records]
    assert any(f"{namespace}:invalidations" in line and "did not end" in line for line in said)
    assert not any("s3cret-pw" in line for line in said)
