"""The invalidation bus over Redis pub/sub (kind ``redis`` of ``tiered_cache.buses``).

One thread per bus listens on the channel. When its connection breaks, stalls or fails in any
other way, it tells the chain (``on_disconnect``: the chain stops trusting its in-process tiers),
reconnects with backoff, and tells the chain again once it is subscribed (``on_reconnect``).
It tells it of its first subscription too (``confirms_subscription``): a chain starts with its
bus ``starting``, not trusting its memory, until the server has confirmed that subscription.
How it notices a fault is :mod:`tiered_cache_redis.listening`'s, shared with the asyncio bus.

A process forked from one that had a bus (gunicorn ``--preload``, Celery prefork,
multiprocessing's fork start) inherits no listening thread: the bus restarts it in the child
(:mod:`tiered_cache.forking`), and the child counts as disconnected, bypassing the memory it
inherited, until its own subscription is confirmed.

A silent network (a stalled server, a dropped route) closes nothing, so the listener checks the
connection itself: every ``health_check_interval`` it sends a PING on the subscription and
expects the reply within ``timeout``. A stall is therefore noticed within
``health_check_interval + timeout`` of its start.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

import redis

from tiered_cache.bus import BusBase, BusListener, Invalidation
from tiered_cache.forking import restart_after_fork, start_when_restarted
from tiered_cache.steps import run

from .in_flight import CallsInFlight
from .listening import DEFAULT_HEALTH, PING_PAYLOAD, Health, Listeners, Listening, Subscription, log

#: The longest message published (``Invalidation.encode``: a longer one goes as a clear).
#: Redis cuts a subscriber off once the replies queued for it pass its output buffer's limit
#: (``client-output-buffer-limit pubsub``: 32 MB at once, or 8 MB for a minute, by default):
#: a message of 40 MB cut every process off the bus, and none heard it. 1 MiB leaves room
#: for a burst of them behind a listener that reads slowly.
MAX_MESSAGE_BYTES: Final = 1 << 20

__all__ = ["RedisBus"]


class RedisBus(BusBase):
    """A :class:`tiered_cache.bus.Bus` on a Redis channel (``confirms_subscription``: it
    tells its listeners once the server has confirmed the first subscription).

    Args:
        connect: makes a redis-py client for the subscription (a dedicated one: a subscription
            holds a connection); it should not retry by itself.
        channel: the channel; every chain of one cache (one namespace) uses the same one.
        publisher: the client that publishes; one from ``connect`` when not given.
        health: the health check's interval and timeout, the backoff, the clock
            (:class:`~tiered_cache_redis.listening.Health`).
    """

    confirms_subscription = True

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        channel: str,
        *,
        publisher: redis.Redis | None = None,
        health: Health = DEFAULT_HEALTH,
    ) -> None:
        self.channel = channel
        self._connect = connect
        self._listeners = Listeners(channel)
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self.close_wait: float = health.close_wait  # declared (BusBase)
        self._listening = Listening(
            Subscription(self._open, _subscribe_to(channel), _read, _ping, _close, self._pause),
            self._listeners,
            health,
            stopped=self._stop.is_set,
            subscribed=self._set_subscribed,
        )
        self._client = publisher if publisher is not None else connect()
        #: The publishes running, which close waits for before it closes the publisher: closed
        #: under one, or before one that a write racing the chain's close sent last, the pool
        #: gave it a new connection, left open for the life of the process.
        self._publishes = CallsInFlight(channel, threading.get_ident, kind="bus")
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: The listener's subscription, once opened (the close wakes a call blocked on it).
        self._handle: tuple[redis.Redis, Any] | None = None
        restart_after_fork(self)

    @property
    def connected(self) -> bool:
        """Subscribed right now."""
        return self._listening.connected

    def publish(self, message: Invalidation) -> None:
        """Send ``message``; ``RuntimeError`` once the bus is closed (nothing is sent)."""
        with self._publishes:
            self._client.publish(self.channel, message.encode(MAX_MESSAGE_BYTES))

    def subscribe(self, listener: BusListener) -> None:
        with self._lock:
            self._listeners.add(listener)
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
        of the child's own starts, as disconnected until it is subscribed: once every part
        has restarted (its first act reaches the chain's fence, built after this bus)."""
        self._lock = threading.Lock()
        self._publishes = self._publishes.after_fork()
        #: The parent's: its sockets are the parent's too (a shutdown here would cut them).
        self._handle = None
        self._listeners.after_fork_in_child()
        self._subscribed = threading.Event()
        self._listening.connected = False
        if self._thread is None or self._stop.is_set():
            return  # never listened, or closed
        self._stop = threading.Event()
        self._listening.stopped = self._stop.is_set
        start_when_restarted(self._restart_in_child)

    def _restart_in_child(self) -> None:
        """The chain is told the bus is down here, in the thread that forked, before
        ``fork()`` returns to it: told by the new listener thread instead, the child's
        threads served the memory they inherited until that thread first ran (missing a
        write made after the fork, which the child never heard)."""
        self._listeners.subscribed(False)
        self._start_listening(after_fork=True)

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """True once the listener is subscribed (for tests and orderly start-ups)."""
        return self._subscribed.wait(timeout)

    def close(self) -> None:
        """Stop listening, and return once the listener has ended: a call of it blocked on
        the server (a subscription's handshake held back, up to the bus's ``timeout``) is
        woken, its sockets shut down, and a pause between two attempts cut short. A listener
        stuck where that does not reach (a listener's callback, a DNS lookup) is waited for
        :attr:`~tiered_cache_redis.listening.Health.close_wait` at most, then left to end by
        itself, telling no chain anything more (:meth:`Listening.outlive`). A publish running
        is waited for as long at most, then left to close the publisher as it ends
        (:meth:`CallsInFlight.close <tiered_cache_redis.in_flight.CallsInFlight.close>`)."""
        self._stop.set()  # wakes the backoff's pause too
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            run(self._listening.outlive(_joined(thread), self._wake_listener))
        # (Not a publish of this thread: a handler's close.)
        self._publishes.close(within=self.close_wait, then=self._client.close)

    def _pause(self, seconds: float) -> None:
        """The pause between two attempts: cut short by the close (a listener that slept
        its backoff, up to 2 s, held the close that long)."""
        self._stop.wait(seconds)

    def _wake_listener(self) -> None:
        with self._lock:
            handle = self._handle
        if handle is not None:
            _shut_down(handle[0])

    # -- the listening thread

    def _listen(self, after_fork: bool) -> None:
        if after_fork:
            # Whatever the parent's memory holds was current at the fork; what changed since is
            # unheard until this child subscribes: the chain treats the bus as down until then
            # (told so by _restart_in_child).
            log.info(
                "bus %r: restarting the listener in forked process %d", self.channel, os.getpid()
            )
        run(self._listening.listen(after_outage=after_fork))

    def _set_subscribed(self, subscribed: bool) -> None:
        if subscribed:
            self._subscribed.set()
        else:
            self._subscribed.clear()

    def _open(self) -> tuple[redis.Redis, Any]:
        client = self._connect()
        handle = client, client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8
        with self._lock:
            self._handle = handle
        return handle


def _joined(thread: threading.Thread) -> Callable[[float], bool]:
    """``join(seconds)``: whether ``thread`` ended within that time."""

    def join(seconds: float) -> bool:
        thread.join(seconds)
        return not thread.is_alive()

    return join


def _subscribe_to(channel: str) -> Callable[[tuple[redis.Redis, Any]], None]:
    def subscribe(handle: tuple[redis.Redis, Any]) -> None:
        handle[1].subscribe(channel)

    return subscribe


def _read(handle: tuple[redis.Redis, Any], timeout: float) -> Any:
    return handle[1].get_message(timeout=timeout)


def _ping(handle: tuple[redis.Redis, Any]) -> None:
    handle[1].ping(PING_PAYLOAD)


def _shut_down(client: redis.Redis) -> None:
    """Shut the sockets of ``client``'s connections down, without closing them: a call
    blocked on one (on the listener's thread) returns at once, with an error, and closes
    it itself (closed here, its descriptor could be reused under that call). The pool's
    connections, in use included: the subscription's, and one still in its handshake."""
    for connection in _made_by(client.connection_pool):
        sock = connection._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _made_by(pool: Any) -> list[Any]:
    """Every connection ``pool`` made, in use or free. redis-py lists them no public way, and
    each of its pool kinds its own way: a blocking pool (the tier's ``make_client``'s, and
    any a ``connect`` given to the bus may use) has no free and in-use sets."""
    if isinstance(pool, redis.BlockingConnectionPool):
        return list(pool._connections)
    with pool._lock:
        return [*pool._in_use_connections, *pool._available_connections]


def _close(handle: tuple[redis.Redis, Any]) -> None:
    client, pubsub = handle
    try:
        pubsub.close()
    finally:
        client.close()
