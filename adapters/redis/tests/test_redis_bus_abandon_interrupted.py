"""A close of the threaded bus interrupted (Ctrl-C) as it gives up on its stuck listener.

Giving up (``Listeners.abandon``) tells every chain on the bus it is down, then that the
close gave up, and cuts the listener off. A bus closed on the main thread (``RedisBus.close()``
called there, a bus shared by chains closed by the program) can be interrupted there: the
listeners not told yet stayed "connected" (or "starting") while nothing was heard, and the
next close, finding the listener given up on, returned telling nothing. Each line of
``Listeners.abandon`` is interrupted in turn (real ``redis-server``, the bus's clock moved past
its bound while the close waits).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from types import CodeType, FrameType

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health, Listeners

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.bus import Invalidation
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import waiting_in
from tiered_cache.testing.interrupts import Interrupted, interrupt_once, interrupting
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import DictSource

from .bus_listeners import Heard

#: Joins of the test's own threads: a guard against a hang, never a measure.
GUARD = 30.0
#: Past the close's wait on the bus's clock.
PAST_THE_BOUND = 3600.0

ABANDON = Listeners.abandon.__code__


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:
        yield private


def lines_of(code: CodeType) -> list[int]:
    return sorted({line for _, _, line in code.co_lines() if line is not None})


def at_line(line: int) -> Callable[[FrameType], bool]:
    return lambda frame: frame.f_lineno == line


def moved_past_the_bound(closer: threading.Thread, clock: FakeClock) -> threading.Thread:
    """A thread that moves ``clock`` past the close's bound each time ``closer`` waits for
    the listener, until ``closer`` is done closing (or the bus's close returned there)."""
    done = threading.Event()

    def move() -> None:
        while not done.wait(0.001):
            if waiting_in(closer, "close"):
                clock.advance(PAST_THE_BOUND)

    mover = threading.Thread(target=move, name="test-clock-mover", daemon=True)
    mover.start()
    mover.done = done  # type: ignore[attr-defined]
    return mover


def told_down_and_given_up(events: list[str]) -> bool:
    """A :class:`Heard` listener was told the bus is down, then that the close gave up."""
    return "disconnect" in events and events[-1] == "abandoned"


def stopped(mover: threading.Thread) -> None:
    mover.done.set()  # type: ignore[attr-defined]
    mover.join(GUARD)


def closed_interrupted_at(server: RedisServer, line: int, interrupt: Callable[[], None]) -> bool:
    """A bus with a stuck listener, a chain on it, closed on the main thread with an
    interrupt at ``line`` of ``Listeners.abandon``, then closed again; fails unless every
    listener was told the bus is down and that the close gave up. Whether it was
    interrupted."""
    was_interrupted = False
    clock = FakeClock(1000.0)
    channel = f"abandon-{line}"
    bus = RedisBus(
        lambda: redis.Redis(host=server.host, port=server.port, retry=Retry(NoBackoff(), 0)),
        channel,
        health=Health(interval=1.0, timeout=1.0, poll=0.05, clock=clock),
    )
    held, first = Heard(hold=True), Heard()
    bus.subscribe(held)
    bus.subscribe(first)
    cache = TieredCache([MemoryTier()], DictSource({}), bus=bus)
    assert bus.wait_subscribed(GUARD)
    until(lambda: cache.stats()["bus"] == "connected", "the chain told it is subscribed")
    publisher = redis.Redis(host=server.host, port=server.port)
    publisher.publish(channel, Invalidation("someone", 1, ("a",)).encode())
    publisher.close()
    assert held.inside.wait(GUARD)
    listener = bus._thread
    assert listener is not None
    mover = moved_past_the_bound(threading.main_thread(), clock)
    sys.settrace(interrupt_once(ABANDON, at_line(line), interrupt))
    try:
        bus.close()
    except Interrupted:
        was_interrupted = True
    finally:
        sys.settrace(None)
        stopped(mover)
    # The next close, on a thread (the bus's clock moved again if it waits).
    closer = threading.Thread(target=bus.close, name="test-closer", daemon=True)
    mover = moved_past_the_bound(closer, clock)
    closer.start()
    closer.join(GUARD)
    stopped(mover)
    assert not closer.is_alive(), f"interrupted at line {line}: the next close hung"
    # What the closes told, before the listener is let go (it tells the chains the
    # bus is down as it ends: stuck for good, it never would).
    untold = [
        name
        for name, heard in (("held", held), ("first", first))
        if not told_down_and_given_up(heard.events)
    ]
    if cache.stats()["bus"] != "down":
        untold.append("chain")
    held.go.set()
    until(lambda: not listener.is_alive(), "the abandoned listener ended")
    assert untold == [], f"interrupted at line {line}"
    assert cache.stats()["bus_close_abandoned"] >= 1, f"interrupted at line {line}"
    cache.close()
    return was_interrupted


def test_a_close_interrupted_as_it_gives_up_leaves_the_telling_to_the_next_close(
    server: RedisServer,
) -> None:
    """Seen failing: the next close returned at once, the listeners and the chain on the bus
    never told it was down (nor that the close gave up): ``AssertionError: interrupted at
    line 143``, ``assert ['held', 'first', 'chain'] == []`` (the chain's bus still
    "connected")."""
    interrupted = 0
    with interrupting() as interrupt:
        for line in lines_of(ABANDON):
            interrupted += closed_interrupted_at(server, line, interrupt)
    assert interrupted >= 5  # the walk reached the lines of the giving up, not only its head
