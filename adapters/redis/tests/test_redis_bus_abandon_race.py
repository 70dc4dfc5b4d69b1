"""A close of the threaded bus giving up on its listener while the listener tells a chain
the bus is back.

The listener tells the subscription's state under the listeners' lock; the close that gave
up (``Listeners.abandon``) told every chain the bus was down without it. A reconnection the
listener was telling (a chain's ``on_reconnect``: slow when it drops a large memory) ran on
after that: the chain, on a bus nothing listens to any more, showed "connected" and trusted
its memory (or its link and its paths disagreed, by where the two interleaved). Held here
at the chain's side of the reconnection (real ``redis-server``; the bus's clock moved past
the close's bound while the close waits).
"""

from __future__ import annotations

import threading

from tiered_cache_redis.bus import RedisBus

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.coherence import BusLink
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.frames import current_frames
from tiered_cache.testing.held_close import waiting_in
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

from .test_redis_bus_close_bounded import GUARD, PAST_THE_BOUND, bus_on, client_of, server

__all__ = ["server"]  # the fixture: a private server (its pub/sub connections are cut)


class HeldReconnect:
    """Holds the chain's side of the link's next reconnection (``set_connected(True)``, on
    the listener's thread, under the listeners' lock) until :attr:`go`, once armed."""

    def __init__(self, link: BusLink) -> None:
        self.armed = False
        self.reached, self.go = threading.Event(), threading.Event()
        self._chain_side = link._set_connected
        link._set_connected = self

    def __call__(self, connected: bool, *, starting: bool = False) -> None:
        if connected and self.armed:
            self.armed = False
            self.reached.set()
            assert self.go.wait(GUARD)
        self._chain_side(connected, starting=starting)


def chain_on(bus: RedisBus) -> TieredCache:
    """A chain on ``bus``, memory bypassed while it is down, told it is subscribed."""
    cache = TieredCache([MemoryTier()], bus=bus, max_stale_when_disconnected=0)
    assert bus.wait_subscribed(GUARD)
    until(lambda: cache.stats()["bus"] == "connected", "the chain told it is subscribed")
    return cache


def given_up_as_it_reconnects(
    server: RedisServer, bus: RedisBus, clock: FakeClock, held: HeldReconnect | StuckReconnect
) -> threading.Thread:
    """The listener loses its subscription and, subscribed again, is held telling it
    (``held``, armed here); the bus's close, started then, waits for the listener, and the
    bus's clock is moved past its bound: the close gives up. Returns the close's thread."""
    held.armed = True
    killer = client_of(server)
    killer.client_kill_filter(_type="pubsub")
    killer.close()
    assert held.reached.wait(GUARD), "the listener never subscribed again"
    closer = threading.Thread(target=bus.close, name="test-closer", daemon=True)
    closer.start()
    until(lambda: waiting_in(closer, "close"), "the close waiting for its listener")
    clock.advance(PAST_THE_BOUND)
    return closer


def in_call(thread: threading.Thread, function: str) -> bool:
    """``thread`` runs a call of ``function`` right now (anywhere in its stack)."""
    frame = current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_a_close_giving_up_as_a_reconnection_is_told_leaves_the_chain_down(
    server: RedisServer,
) -> None:
    """The chain shares the bus with the one closed (it is not closed itself): once the
    close gave up, nothing is heard, so it must end down, memory bypassed
    (``max_stale_when_disconnected`` 0), its link and its paths agreeing. Failed on main
    9598935 (the close told it down beside the reconnection held, which then ran on):
    ``assert ['connected', False, ['v0', 'v0']] == ['down', True, ['v0', 'v1']]``. Failed
    again on main 00141af, the reconnection held past the bound of the close's wait for the
    listeners' lock (``_while``; then it told the chain without the lock):
    ``assert ['connected',... ['v0', 'v0']] == ['down', True, ['v0', 'v1']]``. The close now
    waits for no lock, and leaves the chain's news to the reconnection's teller, after it."""
    clock = FakeClock(1000.0)
    bus = bus_on(server, clock, "abandon-race")
    cache = chain_on(bus)
    link = cache._bus_link
    assert link is not None
    listener = bus._thread
    assert listener is not None
    held = HeldReconnect(link)
    try:
        closer = given_up_as_it_reconnects(server, bus, clock, held)
        # Given up: the close returns (on main 00141af: once past its wait for the lock).
        until(
            lambda: not closer.is_alive() or in_call(closer, "_while"),
            "the close given up",
        )
        clock.advance(PAST_THE_BOUND)
        closer.join(GUARD)
        assert not closer.is_alive(), "close() never returned: a reconnection is held"
    finally:
        held.go.set()
    until(lambda: not listener.is_alive(), "the abandoned listener ended")
    reads = [cache.get("k", lambda: "v0"), cache.get("k", lambda: "v1")]
    assert [cache.stats()["bus"], cache._paths.state.down, reads] == ["down", True, ["v0", "v1"]]
    assert cache.stats()["bus_close_abandoned"] == 1
    cache.close()


class StuckReconnect:
    """A listener of the bus (a program's own) whose next ``on_reconnect``, once armed, is
    stuck until :attr:`go`: under the listeners' lock, where no close's wake reaches."""

    def __init__(self) -> None:
        self.armed = False
        self.reached, self.go = threading.Event(), threading.Event()
        #: What it was told after its stuck reconnection.
        self.told: list[str] = []

    def on_message(self, message: object) -> None: ...

    def on_disconnect(self) -> None:
        if self.reached.is_set():
            self.told.append("disconnect")

    def on_error(self, error: Exception) -> None: ...

    def on_close_abandoned(self) -> None:
        if self.reached.is_set():
            self.told.append("abandoned")

    def on_reconnect(self) -> None:
        if self.armed:
            self.armed = False
            self.reached.set()
            self.go.wait(10 * GUARD)  # past the test's own waits: let go by the test


def test_a_close_gives_up_though_a_listener_is_stuck_telling_a_reconnection(
    server: RedisServer,
) -> None:
    """The listeners' lock is held for good by a listener stuck in its ``on_reconnect``:
    the close returns without waiting for it, the chain on the bus (told its reconnection
    before the stuck one) told it is down; a close after it returns at once. (Without the
    early return of a close that finds everything told, that second close waited for the
    lock, its bound never passed on the bus's clock: ``the next close waited for the
    listener stuck``.) Once let go, the stuck listener is told the bus is down after its
    reconnection, by its teller."""
    clock = FakeClock(1000.0)
    bus = bus_on(server, clock, "abandon-stuck")
    cache = chain_on(bus)
    stuck = StuckReconnect()
    bus.subscribe(stuck)
    listener = bus._thread
    assert listener is not None
    try:
        closer = given_up_as_it_reconnects(server, bus, clock, stuck)
        closer.join(GUARD)
        assert not closer.is_alive(), "close() never returned: a listener is stuck"
        reads = [cache.get("k", lambda: "v0"), cache.get("k", lambda: "v1")]
        assert [cache.stats()["bus"], reads] == ["down", ["v0", "v1"]]
        # A close after it has nothing left to tell but the stuck one's (its teller's),
        # and waits for no lock (the bus's clock is not moved again).
        again = threading.Thread(target=bus.close, name="test-closer-again", daemon=True)
        again.start()
        again.join(GUARD)
        assert not again.is_alive(), "the next close waited for the listener stuck"
    finally:
        stuck.go.set()
    until(lambda: not listener.is_alive(), "the abandoned listener ended")
    assert cache.stats()["bus"] == "down"
    assert stuck.told == ["disconnect", "abandoned"]
    cache.close()
