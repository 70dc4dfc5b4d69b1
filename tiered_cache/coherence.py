"""The chain's side of the invalidation bus: announce changes, apply other processes' changes.

Each chain has a sender id and numbers its messages 1, 2, 3... A receiver that sees a jump in a
sender's numbers missed messages, so it clears its in-process tiers; one that loses its bus
connection stops using them until the bus is back (and clears them then too), because it can no
longer hear about changes. Messages a chain sent itself are skipped: it applied them already.
Every message goes through the chain's :class:`~tiered_cache.fence.Fence`, like a local
invalidation: it refuses the fills in flight and drops the in-process copies.

A chain starts with its bus *starting* when the bus declares ``confirms_subscription`` (Redis
pub/sub): it hears nothing until the server has confirmed the subscription, so a write announced
in between would be missed, and a copy its memory took meanwhile outlive it. Starting, the chain
uses its memory as while the bus is down (copies bounded by ``max_stale_when_disconnected``,
dropped once subscribed), but quietly: a normal start is neither logged nor counted as an outage
(its reads count in ``bus_starting_*``, not ``bus_down_*``).
A first subscription that fails is one (``starting`` becomes ``down``, logged and counted).

A publish that fails opens a circuit breaker: for its cool-down, announcements are not sent
(``bus_publish_skipped``) and their numbers stay unused, a gap the receivers clear their memory
for -- what they would do for a lost message, which is what a publish to a bus that does not
answer amounts to. Without it every writer of the process would wait its turn for the bus's
timeout behind the one publishing (the lock that keeps the numbers in order).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .breaker import CircuitBreaker
from .bus import AsyncBus, Bus, Invalidation, close_wait, confirms_subscription
from .errors import CircuitOpen, TierUnavailable
from .fence import Fence
from .forking import restart_after_fork
from .logs import fields, logger_for
from .metrics import CacheMetrics
from .settings import BreakerSettings, BusBreakerSettings
from .steps import Steps, run

logger = logger_for("bus")

#: Senders remembered for gap detection; the oldest are forgotten past this (a forgotten sender's
#: next message is taken as its first, so a gap right then would go unnoticed).
MAX_SENDERS = 10_000


#: The chains' default breaker around the publish (``bus.breaker`` in the settings).
DEFAULT_BUS_BREAKER = BusBreakerSettings()


def publish_breaker(
    settings: BreakerSettings | None, clock: Callable[[], float]
) -> CircuitBreaker | None:
    """The breaker around a chain's publish, on the chain's clock; none when ``settings`` is
    None or not ``enabled``."""
    if settings is None or not settings.enabled:
        return None
    return CircuitBreaker("publish", settings, clock=clock, what="bus")


class SetConnected(Protocol):
    """The chain's side of its bus's state: down (False), back (True), or ``starting``
    (down as far as memory goes, but no outage: counted apart)."""

    def __call__(self, connected: bool, *, starting: bool = False) -> None: ...


class Lock(Protocol):
    """A ``threading.Lock`` or an ``asyncio.Lock`` (whose ``acquire`` is a coroutine)."""

    def acquire(self) -> Any: ...

    def release(self) -> None: ...


class BusLink:
    """Connects one chain to a :class:`~tiered_cache.bus.Bus`."""

    def __init__(
        self,
        bus: Bus | AsyncBus,
        fence: Fence,
        metrics: CacheMetrics,
        set_connected: SetConnected,
        *,
        lock: Lock | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """``set_connected``: the bus is down (False) or back (True); the chain stops or
        resumes using its in-process tiers. ``lock`` orders the announcements: a thread lock
        by default, an ``asyncio.Lock`` for an :class:`~tiered_cache.bus.AsyncBus` (its
        publish is awaited, and a thread lock must not be held across an await).
        ``breaker`` guards the publish (none: every announcement is tried)."""
        self.bus = bus
        self.sender = uuid.uuid4().hex
        self._fence = fence
        self._set_connected = set_connected
        self._metrics = metrics
        self._numbers = itertools.count(1)
        # Held only to take a number: a skipped announcement takes one outside _numbers_lock.
        self._taking = threading.Lock()
        #: The link's own thread lock (the sync driver's: taken by a with block), or None.
        own = threading.Lock()
        self._thread_lock = own if lock is None else None
        self._numbers_lock: Lock = lock if lock is not None else own
        self._breaker = breaker
        # What stats() reports: the link owns it (both chains ask here, none keeps a copy).
        # "starting" until a bus that confirms its subscription has: told before subscribing,
        # since the bus may confirm (on its thread) before subscribe returns.
        self._state = "starting" if confirms_subscription(bus) else "connected"
        self._closed = False
        self._last_seen: OrderedDict[str, int] = OrderedDict()
        self._seen_lock = threading.Lock()
        if self._state == "starting":
            set_connected(False, starting=True)
        bus.subscribe(self)
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """A forked child has none of the parent's threads, but keeps the locks they held at
        the fork: a writer publishing (the numbers lock is held across the publish, up to
        the bus's timeout) or the listener noting a sender. Held for ever in the child, the
        first write there would wait for ever: the child takes new ones. (A lock given in,
        the asyncio link's, is the loop's: no thread holds it.)

        The child is another process of the fleet: it takes a sender id of its own, its
        numbers from 1. With the parent's, each skipped the other's messages as its own
        (gunicorn ``--preload``: every worker and the master one sender, none hearing the
        others' writes), and others saw two processes' numbers as one sender's, out of
        order."""
        self.sender = uuid.uuid4().hex
        self._numbers = itertools.count(1)
        self._taking = threading.Lock()
        self._seen_lock = threading.Lock()
        if self._thread_lock is not None:  # the link's own lock, not one it was given
            self._thread_lock = self._numbers_lock = threading.Lock()

    # -- sending

    def announce(
        self,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        *,
        clear: bool = False,
        at: float = 0.0,
    ) -> bool:
        """Tell the other processes; whether the message was published (a sync bus)."""
        return run(self.announcing(keys, prefixes, clear, at))

    def announcing(
        self, keys: Sequence[str], prefixes: Sequence[str], clear: bool, at: float
    ) -> Steps[bool]:
        """:meth:`announce` as steps: run by :func:`~tiered_cache.steps.run` for a sync bus,
        by :func:`~tiered_cache.steps.arun` for an :class:`~tiered_cache.bus.AsyncBus`
        (whose link holds an ``asyncio.Lock``). A failed publish is logged and counted, never
        raised (the change itself was made; other processes keep old copies at most one L1
        TTL). While the breaker is open the publish is not tried (``bus_publish_skipped``)."""
        # Numbered and published under one lock: two writers that numbered first and published
        # second could reach the others out of order, which they would take for a lost
        # message (and clear their memory for). A failed or skipped publish leaves its number
        # unused, a real gap: the others cannot know what it said, so clearing is right then.
        # (A skipped one must take its number: the failed publish before it may still arrive,
        # late, from a server that was only stalled, and would then hide the loss.)
        # The breaker is asked before the lock (while it refuses, a writer does not wait for
        # the probe in flight) and again under it: the writers queued behind a publish that
        # fails then skip at once, instead of each trying (and waiting out a timeout) in turn.
        lock = self._numbers_lock
        breaker = self._breaker
        if breaker is not None and breaker.refusing:
            self._take_number()
            self._metrics.count("bus_publish_skipped")
            return False
        try:
            if self._thread_lock is not None:
                # Taken by a with block, not as a step: taken as a step, an interrupt (Ctrl-C,
                # a handler's sys.exit()) landing in the driver as the acquire returned was
                # thrown in before the try below, and the lock stayed held: every later
                # announcement waited for good, the interrupted write's own clean-up first
                # (tests/test_announce_interrupted.py). No signal handler runs between the
                # taking and the block; a driver stopped between two steps closes the steps.
                with self._thread_lock:
                    yield from self._numbered(keys, prefixes, clear, at)
            else:  # a loop's lock: taken by awaiting, which nothing interrupts after it took it
                yield lock.acquire, ()
                try:
                    yield from self._numbered(keys, prefixes, clear, at)
                finally:
                    lock.release()
        except CircuitOpen:
            self._metrics.count("bus_publish_skipped")
            return False
        except Exception as exc:
            self._metrics.count("bus_publish_errors")
            # The breaker wraps what the bus raised: log that.
            cause = exc.__cause__ if isinstance(exc, TierUnavailable) else None
            shown = cause if cause is not None else exc
            logger.warning(
                "could not announce an invalidation on the bus (%s: %s); other processes may "
                "serve their in-memory copy until it expires",
                type(shown).__name__,
                shown,
                extra=fields("bus_publish_failed"),
            )
            return False
        self._metrics.count("bus_sent")
        return True

    def _numbered(
        self, keys: Sequence[str], prefixes: Sequence[str], clear: bool, at: float
    ) -> Steps[None]:
        """Number the announcement and publish it (under the lock of the announcements)."""
        number = self._take_number()
        message = Invalidation(self.sender, number, tuple(keys), tuple(prefixes), clear, at)
        breaker = self._breaker
        if breaker is None:
            yield self.bus.publish, (message,)
        else:
            yield from breaker.guarding(self.bus.publish, (message,))

    def _take_number(self) -> int:
        with self._taking:
            return next(self._numbers)

    # -- receiving (BusListener), called on the bus's thread (an async bus: on its loop)

    def on_message(self, message: Invalidation) -> None:
        # A closed chain hears nothing: a message read as its bus closed (or by a listener
        # the close stopped waiting for) is no invalidation of a chain that serves nothing.
        if self._closed or message.sender == self.sender:
            return
        self._metrics.count("bus_received")
        with self._seen_lock:
            last = self._last_seen.get(message.sender)
            self._last_seen[message.sender] = max(message.seq, last or 0)
            self._last_seen.move_to_end(message.sender)
            if len(self._last_seen) > MAX_SENDERS:
                self._last_seen.popitem(last=False)
        if last is not None and message.seq > last + 1:
            self._metrics.count("bus_gaps")
            logger.warning(
                "missed %d invalidation(s) from %s: clearing the in-process tiers",
                message.seq - last - 1,
                message.sender,
                extra=fields("bus_gap", missed=message.seq - last - 1),
            )
            self._fence.invalidate(gap=True)
        if message.clear:
            self._fence.invalidate(everything=True)
        elif message.keys or message.prefixes:
            self._fence.invalidate(message.keys, message.prefixes)

    def on_disconnect(self) -> None:
        """The bus is down for this chain: its in-process tiers stop being trusted (every
        time it is told). Counted and logged once per period down, a first subscription that
        failed included (``starting``: the bus was never heard): a forked asyncio child, or a
        chain whose loop ended, is told at once and again when its listener starts on its new
        loop (``bus_disconnects`` counted 2 for one period; docs/metrics.md). A closed
        chain hears nothing (a forked child's restart of a chain closed before the fork, a
        listener whose subscription failed after the close)."""
        if self._closed:
            return
        if self._state != "down":
            self._metrics.count("bus_disconnects")
            logger.warning(
                "invalidation bus disconnected: memory serves only fresh fills until it is back",
                extra=fields("bus_disconnected"),
            )
        self._state = "down"
        self._set_connected(False)

    def on_error(self, error: Exception) -> None:
        # Counted on every failed attempt; the bus itself logs once per outage.
        self._metrics.count("bus_errors")

    def on_close_abandoned(self) -> None:
        # Counted even closed (the chain closing is the one told, as a rule); the bus logs it.
        self._metrics.count("bus_close_abandoned")

    def on_reconnect(self) -> None:
        """Subscribed: after an outage (logged), or for the first time (quietly: every start
        does it). Either way what memory took meanwhile is dropped (the chain's
        ``set_connected``): it was filled while nothing was heard. A closed chain hears
        nothing.

        Shown connected (:attr:`state`) only once the chain has dropped it: shown before, a
        forked child under load that saw "connected" was served the copy its first read
        took while the bus was down (kept, as ``max_stale_when_disconnected`` allows),
        after another process's write it never heard
        (adapters/redis/tests/test_redis_fork.py)."""
        if self._closed:
            return
        was = self._state
        self._set_connected(True)
        self._state = "connected"
        if was == "down":
            logger.info(
                "invalidation bus reconnected: in-process tiers are in use again",
                extra=fields("bus_reconnected"),
            )

    # -- what stats() shows

    @property
    def state(self) -> str:
        """``"starting"`` (the bus's first subscription is not confirmed yet), ``"connected"``,
        ``"down"`` (the listener lost the bus, or never had it, and is reconnecting), or
        ``"closed"`` (the chain was closed: nothing is heard any more)."""
        if self._closed:
            return "closed"
        return self._state

    @property
    def publish_breaker_state(self) -> str | None:
        """The publish breaker's state (``None`` without one): ``"open"`` while announcements
        are skipped (``bus_publish_skipped``)."""
        return None if self._breaker is None else self._breaker.state

    # -- closing

    def close(self) -> None:
        """Close the bus (the threaded chain's: a sync bus)."""
        bus = self.bus
        assert not isinstance(bus, AsyncBus), "an async bus is closed with aclose()"
        self._closed = True
        bus.close()

    @property
    def close_wait(self) -> float | None:
        """How long the chain's close waits for its writes in flight before it closes the
        bus: the bus's own ``close_wait`` (:class:`~tiered_cache.bus.BusBase`), its one owner."""
        return close_wait(self.bus)

    def publish_given_up(self) -> None:
        """A publish the chain stopped waiting for (a write stopped as its event loop ended,
        past ``close_wait``: :meth:`WriteTasks.announced
        <tiered_cache.write_tasks.WriteTasks.announced>`): said and counted as a failed one."""
        self._metrics.count("bus_publish_errors")
        logger.warning(
            "a write stopped as its event loop ended gave up its announcement after the "
            "bus's close_wait (%s s); other processes may serve their in-memory copy until "
            "it expires",
            self.close_wait,
            extra=fields("bus_publish_given_up"),
        )

    async def aclose(self) -> None:
        """Close the bus from the asyncio chain: an async bus natively, a sync one in a
        thread (its close joins its listening thread)."""
        bus = self.bus
        self._closed = True
        if isinstance(bus, AsyncBus):
            await bus.aclose()
        else:
            await asyncio.to_thread(bus.close)
