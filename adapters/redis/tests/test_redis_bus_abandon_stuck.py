"""A close of the threaded bus giving up on its listener as a chain joining the bus takes
the listeners' lock, between the close's look at that lock and its take of it.

The close that gave up (``Listeners.abandon``) waited while that lock was held (within its
bound), then took it to tell the chains the bus was down. Seen free, then taken by a chain
joining the bus and told the subscription under it (its ``on_reconnect`` stuck for good),
the lock held the close's take of it for ever. Real ``redis-server``; the callbacks held on
``Event``s the test sets; the bus's clock moved past the close's bound while it waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import waiting_in
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

from .bus_listeners import Heard, stuck_in_a_callback
from .test_redis_bus_abandon_race import StuckReconnect
from .test_redis_bus_close_bounded import GUARD, PAST_THE_BOUND, bus_on, client_of, server

__all__ = ["server"]  # the fixture: a private server (its pub/sub connections are cut)


class RetakenAfterLook:
    """The listeners' lock, as an injector: once armed, the first look at it
    (``locked()``) that finds it free first runs ``take`` on another thread and waits until
    ``taken`` (the lock taken there, and kept), then answers that it is free: a take of
    the lock between the close's look and its own."""

    def __init__(
        self, lock: threading.Lock, take: Callable[[], None], taken: threading.Event
    ) -> None:
        self._lock = lock
        self._take, self._taken = take, taken
        self.armed = False

    def locked(self) -> bool:
        held = self._lock.locked()
        if self.armed and not held:
            self.armed = False
            threading.Thread(target=self._take, name="test-retaker", daemon=True).start()
            assert self._taken.wait(GUARD), "the lock was never taken again"
        return held

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.__exit__(kind, error, traceback)


def test_a_close_gives_up_though_the_listeners_lock_is_taken_again_as_it_looks(
    server: RedisServer,
) -> None:
    """The bus's listener is stuck in a message's callback (outside the lock): the close
    gives up on it; as it looks at the listeners' lock, free, a chain joins the bus and is
    told the subscription under it, stuck there for good. The close returns all the same,
    and the chains on the bus end down. Failed on main 00141af (its take of the lock
    waited for the joiner): ``AssertionError: close() never returned: the lock taken again
    as it looked``."""
    clock = FakeClock(1000.0)
    bus = bus_on(server, clock, "abandon-retaken")
    cache = TieredCache([MemoryTier()], bus=bus, max_stale_when_disconnected=0)
    held, heard = Heard(hold=True), Heard()
    publisher = client_of(server)
    stuck_in_a_callback(bus, publisher, held, heard)
    publisher.close()
    until(lambda: cache.stats()["bus"] == "connected", "the chain told it is subscribed")
    listener = bus._thread
    assert listener is not None
    joiner = StuckReconnect()
    joiner.armed = True
    # The joiner, told the subscription under the lock, is stuck there until the end.
    lock = RetakenAfterLook(bus._listeners._lock, lambda: bus.subscribe(joiner), joiner.reached)
    bus._listeners._lock = lock  # type: ignore[assignment]
    lock.armed = True
    closer = threading.Thread(target=bus.close, name="test-closer", daemon=True)
    try:
        closer.start()
        until(lambda: waiting_in(closer, "close"), "the close waiting for its listener")
        clock.advance(PAST_THE_BOUND)
        closer.join(GUARD)
        assert not closer.is_alive(), "close() never returned: the lock taken again as it looked"
        reads = [cache.get("k", lambda: "v0"), cache.get("k", lambda: "v1")]
        assert [cache.stats()["bus"], reads] == ["down", ["v0", "v1"]]
        assert heard.events[-2:] == ["disconnect", "abandoned"]
    finally:
        joiner.go.set()
        held.go.set()
    closer.join(GUARD)
    until(lambda: not listener.is_alive(), "the abandoned listener ended")
    assert cache.stats()["bus"] == "down"
    cache.close()
