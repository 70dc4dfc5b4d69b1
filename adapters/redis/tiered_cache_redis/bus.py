"""The invalidation bus over Redis pub/sub (kind ``redis`` of ``tiered_cache.buses``).

One thread per bus listens on the channel. When its connection breaks, stalls or fails in any
other way, it tells the chain (``on_disconnect``: the chain stops trusting its in-process tiers),
reconnects with backoff, and tells the chain again once it is subscribed (``on_reconnect``).

A process forked from one that had a bus (gunicorn ``--preload``, Celery prefork,
multiprocessing's fork start) inherits no listening thread: the bus restarts it in the child
(:mod:`tiered_cache.forking`), and the child counts as disconnected, bypassing the memory it
inherited, until its own subscription is confirmed.

A silent network (a stalled server, a dropped route) closes nothing, so the listener checks the
connection itself: every ``health_check_interval`` it sends a PING on the subscription and
expects the reply within ``timeout``. A stall is therefore noticed within
``health_check_interval + timeout`` of its start. redis-py's own health check is not used: it
sends the PING but never waits for the reply, and redis-py's silent reconnection is turned off
(a reconnection the chain does not hear about would hide the messages lost meanwhile).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from tiered_cache.bus import BusListener, Invalidation
from tiered_cache.forking import restart_after_fork

log = logging.getLogger(__name__)

#: The payload of the listener's own PINGs (redis-py swallows replies to its own health check).
PING_PAYLOAD = "tiered-cache-bus-ping"

#: Failures of the network or of the server's liveness: reconnecting may cure them.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class BusStalled(redis.TimeoutError):
    """The subscription did not answer within the timeout: the connection is taken as lost."""


class RedisBus:
    """A :class:`tiered_cache.bus.Bus` on a Redis channel.

    Args:
        connect: makes a redis-py client for the subscription (a dedicated one: a subscription
            holds a connection); it should not retry by itself.
        channel: the channel; every chain of one cache (one namespace) uses the same one.
        publisher: the client that publishes; one from ``connect`` when not given.
        health_check_interval: seconds between two PINGs on the subscription.
        timeout: seconds a PING reply (or the subscription's confirmation) may take.
        poll: the longest one wait for a message lasts, in seconds (bounds how fast close() is).
        backoff: first and longest pause between reconnection attempts, in seconds.
        clock: monotonic seconds (injected for tests).
        sleep: how to pause (injected for tests).
    """

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        channel: str,
        *,
        publisher: redis.Redis | None = None,
        health_check_interval: float = 1.0,
        timeout: float = 1.0,
        poll: float = 0.2,
        backoff: tuple[float, float] = (0.05, 2.0),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if health_check_interval <= 0 or timeout <= 0:
            raise ValueError("health_check_interval and timeout must be positive")
        self.channel = channel
        self._connect = connect
        self._client = publisher if publisher is not None else connect()
        self._interval = health_check_interval
        self._timeout = timeout
        self._poll = poll
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._listeners: list[BusListener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()
        self.connected = False
        restart_after_fork(self)

    def publish(self, message: Invalidation) -> None:
        self._client.publish(self.channel, message.encode())

    def subscribe(self, listener: BusListener) -> None:
        with self._lock:
            self._listeners.append(listener)
            if self._thread is None:
                self._start_listening(after_fork=False)

    def _start_listening(self, *, after_fork: bool) -> None:
        self._thread = threading.Thread(
            target=self._listen,
            args=(after_fork,),
            name=f"tiered-cache-bus:{self.channel}",
            daemon=True,
        )
        self._thread.start()

    def after_fork_in_child(self) -> None:
        """In a forked child: the parent's listening thread does not exist here. Locks and
        events are made anew (another thread may have held them at the fork), and a listener
        of the child's own starts, as disconnected until it is subscribed."""
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.connected = False
        if self._thread is None or self._stop.is_set():
            return  # never listened, or closed
        self._stop = threading.Event()
        self._start_listening(after_fork=True)

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """True once the listener is subscribed (for tests and orderly start-ups)."""
        return self._subscribed.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._client.close()

    # -- the listening thread

    def _listen(self, after_fork: bool) -> None:
        delay = self._backoff[0]
        ever_connected = False
        if after_fork:
            # Whatever the parent's memory holds was current at the fork; what changed since is
            # unheard until this child subscribes: the chain treats the bus as down until then.
            log.info(
                "bus %r: restarting the listener in forked process %d", self.channel, os.getpid()
            )
            self._tell("on_disconnect")
            ever_connected = True
        # What was logged during the current outage: one line per kind of failure, not one per
        # attempt (a missing ACL permission fails every attempt the same way).
        logged: set[str] = set()
        while not self._stop.is_set():
            pubsub: Any = None
            client: redis.Redis | None = None
            try:
                client = self._connect()
                pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.channel)
                self._await_subscription(pubsub)
                if ever_connected:
                    self._tell("on_reconnect")
                if logged:
                    log.warning("bus %r: subscribed again", self.channel)
                    logged.clear()
                ever_connected = True
                self.connected = True
                self._subscribed.set()
                delay = self._backoff[0]
                self._serve(pubsub)
            except Exception as exc:
                network = isinstance(exc, CONNECTION_ERRORS)
                kind = type(exc).__name__
                if kind not in logged:
                    logged.add(kind)
                    if network:
                        log.warning("bus %r: connection lost (%s)", self.channel, exc)
                    else:
                        log.error(
                            "bus %r: listening failed with %s: %s; in-process tiers are "
                            "treated as disconnected while it retries (logged once)",
                            self.channel,
                            kind,
                            exc,
                        )
                if not network:
                    self._tell("on_error", exc)
                if self.connected or not ever_connected:
                    # A chain that never got connected must not trust its memory either.
                    self._tell("on_disconnect")
                self.connected = False
                self._subscribed.clear()
                ever_connected = True
                self._sleep(delay)
                delay = min(delay * 2, self._backoff[1])
            finally:
                for closable in (pubsub, client):
                    if closable is not None:
                        try:
                            closable.close()
                        except Exception:
                            log.debug("closing a broken subscription failed", exc_info=True)

    def _await_subscription(self, pubsub: Any) -> None:
        """Read replies until the server confirms the subscription; a stall is an error."""
        deadline = self._clock() + self._timeout
        while not self._stop.is_set():
            remaining = max(0.0, deadline - self._clock())
            message = pubsub.get_message(timeout=min(remaining, self._poll))
            if message is not None:
                if message.get("type") == "subscribe":
                    return
            elif self._clock() >= deadline:
                raise BusStalled(f"no subscription confirmation within {self._timeout}s")

    def _serve(self, pubsub: Any) -> None:
        """Deliver messages and PING every interval until closed; raises when the connection
        fails or a PING goes unanswered for longer than the timeout."""
        next_ping = self._clock() + self._interval
        ping_sent: float | None = None
        while not self._stop.is_set():
            now = self._clock()
            if ping_sent is None and now >= next_ping:
                pubsub.ping(PING_PAYLOAD)
                ping_sent = now
            due = next_ping if ping_sent is None else ping_sent + self._timeout
            message = pubsub.get_message(timeout=max(0.0, min(self._poll, due - now)))
            if message is not None:
                kind = message.get("type")
                if kind == "message":
                    self._deliver(message["data"])
                elif kind == "pong":
                    ping_sent = None
                    next_ping = self._clock() + self._interval
            # Only after a read found nothing: a thread that was not scheduled for a while
            # must read the reply waiting in its socket before it calls the server silent.
            elif ping_sent is not None and self._clock() >= ping_sent + self._timeout:
                raise BusStalled(f"no reply to a PING within {self._timeout}s")

    def _deliver(self, data: bytes) -> None:
        try:
            message = Invalidation.decode(data)
        except ValueError:
            log.warning("bus %r: ignoring a message that is not an invalidation", self.channel)
            return
        for listener in self._listeners_now():
            try:
                listener.on_message(message)
            except Exception:
                log.exception("bus %r: a listener failed on %r", self.channel, message)

    def _tell(self, event: str, *args: Any) -> None:
        for listener in self._listeners_now():
            try:
                getattr(listener, event)(*args)
            except Exception:
                log.exception("bus %r: a listener failed on %s", self.channel, event)

    def _listeners_now(self) -> list[BusListener]:
        with self._lock:
            return list(self._listeners)
