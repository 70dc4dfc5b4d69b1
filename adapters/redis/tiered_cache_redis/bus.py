"""The invalidation bus over Redis pub/sub (kind ``redis`` of ``tiered_cache.buses``).

One thread per bus listens on the channel. When its connection breaks it tells the chain
(``on_disconnect``: the chain stops trusting its in-process tiers), reconnects with backoff,
and tells the chain again once it is subscribed (``on_reconnect``). redis-py's periodic
health check (a PING on the subscription connection) notices a silent network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from tiered_cache.bus import BusListener, Invalidation

log = logging.getLogger(__name__)


class RedisBus:
    """A :class:`tiered_cache.bus.Bus` on a Redis channel.

    Args:
        connect: makes a redis-py client (a dedicated one: a subscription holds a connection).
        channel: the channel; every chain of one cache (one namespace) uses the same one.
        poll: how long one wait for a message lasts, in seconds (bounds how fast close() is).
        backoff: first and longest pause between reconnection attempts, in seconds.
        sleep: how to pause (injected for tests).
    """

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        channel: str,
        *,
        poll: float = 0.2,
        backoff: tuple[float, float] = (0.05, 2.0),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.channel = channel
        self._connect = connect
        self._client = connect()
        self._poll = poll
        self._backoff = backoff
        self._sleep = sleep
        self._listeners: list[BusListener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()
        self.connected = False

    def publish(self, message: Invalidation) -> None:
        self._client.publish(self.channel, message.encode())

    def subscribe(self, listener: BusListener) -> None:
        with self._lock:
            self._listeners.append(listener)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen, name=f"tiered-cache-bus:{self.channel}", daemon=True
                )
                self._thread.start()

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

    def _listen(self) -> None:
        delay = self._backoff[0]
        ever_connected = False
        while not self._stop.is_set():
            pubsub: Any = None
            client: redis.Redis | None = None
            try:
                client = self._connect()
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.channel)
                # The subscription is confirmed by its first reply; read it before saying so.
                pubsub.get_message(timeout=self._poll)
                if ever_connected:
                    self._tell("on_reconnect")
                ever_connected = True
                self.connected = True
                self._subscribed.set()
                delay = self._backoff[0]
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=self._poll)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message["data"])
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self.connected or not ever_connected:
                    log.warning("bus %r: connection lost (%s)", self.channel, exc)
                    self._tell("on_disconnect")
                self.connected = False
                self._subscribed.clear()
                # A chain that never got connected must not trust its memory either.
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

    def _tell(self, event: str) -> None:
        for listener in self._listeners_now():
            try:
                getattr(listener, event)()
            except Exception:
                log.exception("bus %r: a listener failed on %s", self.channel, event)

    def _listeners_now(self) -> list[BusListener]:
        with self._lock:
            return list(self._listeners)
