"""The bus listener's decisions, written once.

Subscribing, the health check (a PING on the subscription, a reply expected within the
timeout), telling the chain about outages (once per outage, once per kind of failure in the
log) and the reconnection backoff are :mod:`tiered_cache.steps`: the listener yields each
call it needs on the subscription (:class:`Subscription`) and its driver makes it. The
threaded :class:`~tiered_cache_redis.bus.RedisBus` runs them with ``run`` on its thread; the
:class:`~tiered_cache_redis.async_bus.AsyncRedisBus` listens with that same thread (it ran
them with ``arun`` in a task of its loop, which a loop left open silenced: async_bus.py).
Being steps, they can still be driven by ``arun`` for a bus whose I/O is awaited.

redis-py's own health check is not used: it sends the PING but never waits for the reply,
and its silent reconnection is turned off by the buses' clients (a reconnection the chain
does not hear about would hide the messages lost meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from tiered_cache.bus import BusListener, Invalidation
from tiered_cache.steps import Steps

log = logging.getLogger("tiered_cache_redis.bus")

#: The payload of the listener's own PINGs (redis-py swallows replies to its own health check).
PING_PAYLOAD = "tiered-cache-bus-ping"

#: Failures of the network or of the server's liveness: reconnecting may cure them.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class BusStalled(redis.TimeoutError):
    """The subscription did not answer within the timeout: the connection is taken as lost."""


@dataclass(frozen=True)
class Subscription:
    """The calls one bus makes on its subscription: each returns its result (driven by
    ``run``) or an awaitable of it (by ``arun``).

    Attributes:
        open: a new client and subscription handle, not yet connected.
        subscribe: ``subscribe(handle)`` sends SUBSCRIBE for the bus's channel.
        read: ``read(handle, timeout)``: the next reply (a redis-py pub/sub message), or None.
        ping: ``ping(handle)``: sends a PING with :data:`PING_PAYLOAD` on the subscription.
        close: ``close(handle)`` releases the subscription and its client.
        sleep: ``sleep(seconds)``: the pause between two attempts.
    """

    open: Callable[[], Any]
    subscribe: Callable[[Any], Any]
    read: Callable[[Any, float], Any]
    ping: Callable[[Any], Any]
    close: Callable[[Any], Any]
    sleep: Callable[[float], Any]


class Listeners:
    """A bus's subscribers, and how each event reaches them (on the listener's thread or
    task): a message is decoded once (:meth:`Invalidation.decode`), a listener that fails is
    logged and does not stop the others.

    The subscription's state is told by one thread at a time, under the lock that adds a
    listener: one added once the bus is subscribed (a second chain on one bus) is told so at
    once, one added while it is down likewise, and never after an outage told to the others
    (it would then take the bus for connected while it is down).

    A close that stopped waiting for the listener (:meth:`abandon`) cuts the listeners off:
    from then on they hear no message, no error and no subscription, only that the bus is
    down (which is never wrong). Asked before each listener is told, so the only act after
    is one already begun then (the callback that held the listener, as a rule)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._listeners: list[BusListener] = []
        #: One teller of the subscription's state at a time; held across its callbacks.
        self._lock = threading.Lock()
        #: The marks below and the list of listeners: held a few lines at a time, never
        #: across a callback (a close that gives up takes it, never the lock above).
        self._marks = threading.Lock()
        #: The subscription is confirmed (True) or lost (False), as last told; None before
        #: the first subscription's outcome (a listener added then is starting).
        self._subscribed: bool | None = None
        #: Cut off by a close that stopped waiting for the listener (:meth:`abandon`).
        self._abandoned = False
        self._abandoning = threading.Lock()
        #: What the giving up has still to tell: (listener, event), in order (:meth:`abandon`);
        #: None until the giving up lists it.
        self._untold: deque[tuple[BusListener, str]] | None = None
        #: The listener being told the subscription's state right now, under the lock: what
        #: a close giving up meanwhile has to tell it is told by its teller, after.
        self._telling: BusListener | None = None

    def add(self, listener: BusListener) -> None:
        """Add ``listener``, told the subscription's state if one was told already: a chain
        joining a bus whose listener is reconnecting is down, not starting (it would show
        ``"starting"`` through the whole outage, never logged nor counted). Added once a close
        gave up, it is told the bus is down."""
        with self._lock:
            with self._marks:
                self._listeners.append(listener)
                subscribed, abandoned = self._subscribed, self._abandoned
            if abandoned:
                self._tell_one(listener, "on_disconnect")
            elif subscribed is not None:
                self._tell_state(listener, subscribed)

    @property
    def abandoned(self) -> bool:
        """A close gave up on the listener (:meth:`abandon`)."""
        return self._abandoned

    @property
    def told(self) -> bool:
        """Whether the subscription's state was ever told: not while the listeners are
        starting (no subscription confirmed yet, none failed)."""
        with self._marks:
            return self._subscribed is not None

    def after_fork_in_child(self) -> None:
        """Another thread of the parent may have held the locks at the fork; the child is
        not subscribed (the parent's subscription is the parent's)."""
        self._lock = threading.Lock()
        self._marks = threading.Lock()
        self._abandoning = threading.Lock()
        self._subscribed = None
        self._telling = None

    def subscribed(self, subscribed: bool, *, again: bool = True) -> None:
        """Tell every listener the subscription is confirmed (``on_reconnect``) or lost
        (``on_disconnect``); not ``again`` if that was the last told. Once a close gave up
        on the listener (:meth:`abandon`) no state is told here (the close tells each the
        bus is down), nor a subscription kept for a listener added later."""
        with self._lock:
            with self._marks:
                if self._abandoned or (not again and self._subscribed is subscribed):
                    return
                self._subscribed = subscribed
            for listener in self._listeners:  # added under the lock only
                if not self._tell_state(listener, subscribed):
                    return  # given up meanwhile

    def _tell_state(self, listener: BusListener, subscribed: bool) -> bool:
        """Tell ``listener``, under the lock, the subscription's state; False (told nothing)
        once a close gave up. Then what a close that gave up meanwhile has to tell it."""
        with self._marks:
            if self._abandoned:
                return False
            self._telling = listener
        try:
            self._tell_one(listener, "on_reconnect" if subscribed else "on_disconnect")
        except BaseException:
            with self._marks:
                self._telling = None  # what it was owed is left to the next close
            raise
        self._tell_owed(listener)
        return True

    def _tell_owed(self, listener: BusListener) -> None:
        """Tell ``listener`` (told its state just now) what a close that gave up while it was
        told left to its teller (:meth:`abandon`): after the state, never beside it."""
        try:
            while True:
                with self._marks:
                    owed = next((each for each in self._untold or () if each[0] is listener), None)
                    if owed is None:
                        self._telling = None
                        return
                self._tell_one(*owed)
                with self._marks:
                    self._told(owed)
        except BaseException:
            with self._marks:
                self._telling = None  # the rest is left to the next close
            raise

    def abandon(self, say: Callable[[], object]) -> None:
        """The bus's close stopped waiting for its listener, which ends by itself: ``say()``
        (the bus's warning), every listener is told the bus is down (a chain sharing the bus
        with the one closed would trust its memory while nothing is heard), then
        ``on_close_abandoned`` (counted), and hears nothing more from the listener. (Told
        down already, they are not told again.) Said and told once for two closes at once
        (two chains on one bus): under a lock of its own, which the second waits for.

        Never beside a state being told, and never waiting for it: a reconnection the
        listener was telling as the close gave up (a chain's ``on_reconnect`` is slow: a
        large memory dropped) ran on after the close told that chain the bus was down, and
        left it "connected", or its link and its chain disagreeing, on a bus nothing listens
        to any more (adapters/redis/tests/test_redis_bus_abandon_race.py). The close waited
        for the listeners' lock within its bound, then told without it (that race again,
        for a reconnection stuck past the bound), and a lock taken again between its look
        and its take held it for ever (adapters/redis/tests/test_redis_bus_abandon_stuck.py).
        Now the listener being told its state (:attr:`_telling`) is told by its teller,
        after that state; the others here, at once (marked given up first, under
        :attr:`_marks`: no state is told to any from then on). The close is bounded by
        the callbacks it runs itself, the others' down and given-up; one stuck for good
        keeps only its own news.

        A close stopped on its way (Ctrl-C: a bus closed on the main thread) leaves what it
        had not told to the next close, which tells it before it returns: the closes after
        one that gave up returned at once, and the chains not told yet stayed "connected"
        while nothing was heard (adapters/redis/tests/test_redis_bus_abandon_interrupted.py).
        So what is left to tell is kept, and each item let go of only once told: one stopped
        as it was told is told again (down twice is no news; the gave-ups may count one
        more)."""
        with self._abandoning:  # two closes at once: the second finds it all told
            if not self._abandoned:
                say()
                with self._marks:
                    # A teller holding the lock may be telling a state on its way: down
                    # again. Done with it, the last state told was told to every listener.
                    told_down = self._subscribed is False and not self._lock.locked()
                    listeners = list(self._listeners)
                    untold = deque((each, "on_disconnect") for each in listeners if not told_down)
                    untold.extend((each, "on_close_abandoned") for each in listeners)
                    self._untold = untold
                    # Stopped before this, the next close gives up anew (told_down as here).
                    self._abandoned = True
                    self._subscribed = False  # as told (a chain added from now on: add)
            while True:
                with self._marks:
                    busy = self._telling  # its teller tells it (_tell_owed)
                    item = next((each for each in self._untold or () if each[0] is not busy), None)
                    if item is None:
                        return  # all told, or left to a teller
                self._tell_one(*item)
                with self._marks:
                    self._told(item)

    def _told(self, item: tuple[BusListener, str]) -> None:
        """``item`` told (under :attr:`_marks`): let go of (once, by identity)."""
        untold = self._untold
        if untold is not None:
            for at, each in enumerate(untold):
                if each is item:
                    del untold[at]
                    return

    def deliver(self, data: bytes) -> None:
        try:
            message = Invalidation.decode(data)
        except ValueError:
            log.warning("bus %r: ignoring a message that is not an invalidation", self.channel)
            return
        for listener in self._now():
            if self._abandoned:
                return
            try:
                listener.on_message(message)
            except Exception:
                log.exception("bus %r: a listener failed on %r", self.channel, message)

    def tell(self, event: str, *args: Any) -> None:
        for listener in self._now():
            if self._abandoned:
                return
            self._tell_one(listener, event, *args)

    def _tell_one(self, listener: BusListener, event: str, *args: Any) -> None:
        try:
            getattr(listener, event)(*args)
        except Exception:
            log.exception("bus %r: a listener failed on %s", self.channel, event)

    def _now(self) -> list[BusListener]:
        with self._marks:
            return list(self._listeners)


@dataclass(frozen=True)
class Health:
    """How a bus's listener checks its subscription and comes back (both buses take one).

    Attributes:
        interval: seconds between two PINGs on the subscription (``health_check_interval``).
        timeout: seconds a PING reply (or the subscription's confirmation) may take.
        poll: the longest one read waits, in seconds (bounds how fast a close is noticed).
        backoff: first and longest pause between reconnection attempts, in seconds.
        clock: monotonic seconds (injected for tests).
    """

    interval: float = 1.0
    timeout: float = 1.0
    poll: float = 0.2
    backoff: tuple[float, float] = (0.05, 2.0)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("health_check_interval and timeout must be positive")

    @property
    def close_wait(self) -> float:
        """The longest a close waits for its listener, in seconds: each of the listener's
        calls on Redis ends within ``timeout`` (a connection, a reply; redis-py's pub/sub
        connects once more on a failed read before it raises: two of them), and it sees the
        stop within a poll. A listener still running past that is stuck where the close's
        wake does not reach (a listener's callback, a DNS lookup, a lock): the close gives up
        on it (:meth:`Listening.outlive`). The threaded bus's close waits as long at most for a
        publish (the config's publisher: a timeout, one retry), then leaves the publisher to
        it to close as it ends (:meth:`CallsInFlight.close
        <tiered_cache_redis.in_flight.CallsInFlight.close>`)."""
        return 2 * (self.timeout + self.poll)


#: The defaults: a PING every second, one second for its reply.
DEFAULT_HEALTH = Health()


@dataclass
class Listening:
    """What one bus listens with, and the state it shows (``connected``).

    Attributes:
        calls: the I/O on the subscription.
        listeners: who hears the messages and the outages.
        health: the health check's and the backoff's figures.
        stopped: True once the bus is closed.
        subscribed: told True once subscribed, False when the subscription is lost.
    """

    calls: Subscription
    listeners: Listeners
    health: Health
    stopped: Callable[[], bool]
    subscribed: Callable[[bool], None]
    connected: bool = False

    def listen(self, *, after_outage: bool = False) -> Steps[None]:
        """Subscribe, serve, and on any failure tell the chain, back off and subscribe again,
        until stopped; then :meth:`ended`. ``after_outage``: the bus has told the chain it is
        down already (a forked child: what changed since the fork is unheard), and the first
        subscription tells it the bus is back."""
        yield from self._listen(after_outage)
        self.ended()

    def ended(self) -> None:
        """Nothing is heard from now on (the bus closed, or its listener cancelled): the
        chains still on it are told the bus is down. A bus shared by several chains is
        closed with the first of them: the others stayed "connected", deaf (a closed chain
        ignores it)."""
        self.connected = False
        self.subscribed(False)
        self.listeners.subscribed(False, again=False)

    def outlive(self, join: Callable[[float], Any], wake: Callable[[], Any]) -> Steps[bool]:
        """The close's wait for its listener, stopped already: ``join(seconds)`` waits that
        long at most and returns whether the listener has ended; ``wake()`` gets it out of a
        call blocked on the server (the threaded bus shuts its sockets down, the asyncio bus
        cancels its task again). It sees the stop within a poll: woken only if it has not
        ended by then, and woken again at each poll (a connection it opened after a wake,
        the close came as it subscribed, is shut down by the next). Past
        :attr:`Health.close_wait` on the bus's clock the close stops waiting
        (:meth:`abandon`); False then. Without that bound a listener stuck where no wake
        reaches hung the close, the chain's, and the interpreter's exit, for ever. A close
        after one that gave up returns at once, telling nothing (whether it has ended)."""
        if self.listeners.abandoned:
            # A close gave up on it already (two chains on one bus closed in turn, an aclose
            # run again): it ends by itself. Waited for again, each close added close_wait
            # to the shutdown, then gave up again, telling the chains again. What that close
            # was stopped before telling is told now (Listeners.abandon).
            self.abandon()
            return bool((yield join, (0.0,)))
        clock, poll = self.health.clock, self.health.poll
        deadline = clock() + self.health.close_wait
        ended = yield join, (2 * poll,)
        while not ended:
            if clock() >= deadline:
                self.abandon()
                return False
            yield wake, ()
            ended = yield join, (poll,)
        return True

    def abandon(self) -> None:
        """The close stopped waiting for the listener: said once (the bus by its channel,
        which holds no secret), the chains told the bus is down and that it gave up (they
        count it), and the listener, left to end by itself, cut off from them
        (:meth:`Listeners.abandon`, which a later close finishes if this one was stopped on
        its way, and which waits for no lock a listener may hold); being stopped, it neither
        subscribes nor reconnects."""
        self.connected = False
        self.listeners.abandon(self._say_abandoned)

    def _say_abandoned(self) -> None:
        log.warning(
            "bus %r: the listener did not end within %.3gs of the close (stuck outside Redis: "
            "a listener's callback, a DNS lookup, a lock); the close returns without it, and "
            "it ends by itself, telling no chain anything more",
            self.listeners.channel,
            self.health.close_wait,
        )

    def _listen(self, after_outage: bool) -> Steps[None]:
        channel = self.listeners.channel
        delay = self.health.backoff[0]
        ever_connected = after_outage
        # What was logged during the current outage: one line per kind of failure, not one per
        # attempt (a missing ACL permission fails every attempt the same way).
        logged: set[str] = set()
        while not self.stopped():
            handle: Any = None
            try:
                handle = yield self.calls.open, ()
                if not (yield from self._subscribe(handle)):
                    return  # closed as it subscribed: the handle is closed below
                # Told of the first subscription too: until the server confirmed it nothing
                # announced was heard, so the chain does not trust its memory before
                # (BusBase.confirms_subscription). Connected before the waiters see it.
                self.connected = True
                self.listeners.subscribed(True)
                if logged:
                    log.warning("bus %r: subscribed again", channel)
                    logged.clear()
                ever_connected = True
                self.subscribed(True)
                delay = self.health.backoff[0]
                yield from self._serve(handle)
            except Exception as exc:
                if self.stopped():
                    # Closed meanwhile: a close does not interrupt a subscription in flight
                    # (a held handshake ends at its timeout, after the close). The bus is
                    # closed, not disconnected: nothing is logged, :meth:`ended` tells.
                    return
                network = isinstance(exc, CONNECTION_ERRORS)
                kind = type(exc).__name__
                if kind not in logged:
                    logged.add(kind)
                    if network:
                        log.warning("bus %r: connection lost (%s)", channel, exc)
                    else:
                        log.error(
                            "bus %r: listening failed with %s: %s; in-process tiers are "
                            "treated as disconnected while it retries (logged once)",
                            channel,
                            kind,
                            exc,
                        )
                if not network:
                    self.listeners.tell("on_error", exc)
                if self.connected or not ever_connected:
                    # Lost, or never had: a first subscription that failed tells the chain,
                    # starting, that the bus is down (a forked child's bus told it already).
                    self.listeners.subscribed(False)
                self.connected = False
                self.subscribed(False)
                ever_connected = True
                if not self.stopped():
                    yield self.calls.sleep, (delay,)
                delay = min(delay * 2, self.health.backoff[1])
            finally:
                if handle is not None:
                    try:
                        yield self.calls.close, (handle,)
                    except Exception:
                        log.debug("closing a broken subscription failed", exc_info=True)

    def _subscribe(self, handle: Any) -> Steps[bool]:
        """Subscribe on ``handle`` and wait for the confirmation; False if the bus was closed
        before or meanwhile (the threaded bus's close sets the flag and waits for the
        listener): a closed bus tells the chain of no reconnection, nor shows itself
        connected."""
        if self.stopped():
            return False
        yield self.calls.subscribe, (handle,)
        yield from self._await_subscription(handle)
        return not self.stopped()

    def _await_subscription(self, handle: Any) -> Steps[None]:
        """Read replies until the server confirms the subscription; a stall is an error."""
        clock, timeout = self.health.clock, self.health.timeout
        deadline = clock() + timeout
        while not self.stopped():
            remaining = max(0.0, deadline - clock())
            message = yield self.calls.read, (handle, min(remaining, self.health.poll))
            if message is not None:
                if message.get("type") == "subscribe":
                    return
            elif clock() >= deadline:
                raise BusStalled(f"no subscription confirmation within {timeout}s")

    def _serve(self, handle: Any) -> Steps[None]:
        """Deliver messages and PING every interval until stopped; raises when the connection
        fails or a PING goes unanswered for longer than the timeout."""
        clock, interval, timeout = self.health.clock, self.health.interval, self.health.timeout
        next_ping = clock() + interval
        ping_sent: float | None = None
        while not self.stopped():
            now = clock()
            if ping_sent is None and now >= next_ping:
                yield self.calls.ping, (handle,)
                ping_sent = now
            due = next_ping if ping_sent is None else ping_sent + timeout
            message = yield self.calls.read, (handle, max(0.0, min(self.health.poll, due - now)))
            if message is not None:
                kind = message.get("type")
                if kind == "message":
                    self.listeners.deliver(message["data"])
                elif kind == "pong":
                    ping_sent = None
                    next_ping = clock() + interval
            # Only after a read found nothing: a listener that was not scheduled for a while
            # must read the reply waiting in its socket before it calls the server silent.
            elif ping_sent is not None and clock() >= ping_sent + timeout:
                raise BusStalled(f"no reply to a PING within {timeout}s")
