"""The invalidation bus: every process hears which keys another process changed.

A :class:`Bus` carries :class:`Invalidation` messages between the chains of one cache (one
namespace) in every process. Redis pub/sub is the default transport (``tiered-cache-redis``);
:class:`LocalBus` connects chains inside one process. The chain's side is
:class:`tiered_cache.coherence.BusLink`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .forking import restart_after_fork
from .logs import fields, logger_for

logger = logger_for("bus")


@dataclass(frozen=True, repr=False)
class Invalidation:
    """One change announced on the bus.

    Attributes:
        sender: the announcing chain's id (a process ignores its own messages).
        seq: 1, 2, 3... per sender: a jump tells a receiver that it missed messages.
        keys: keys to drop.
        prefixes: key prefixes whose entries loaded before ``at`` are invalid.
        clear: drop everything.
        at: when the change happened (the sender's clock), for prefixes.
    """

    sender: str
    seq: int
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    clear: bool = False
    at: float = 0.0

    def __repr__(self) -> str:
        # Counts, never the keys or prefixes: keys are never logged raw (docs/metrics.md),
        # and a listener that failed on a message was logged with its repr.
        return (
            f"Invalidation(sender={self.sender!r}, seq={self.seq}, keys={len(self.keys)}, "
            f"prefixes={len(self.prefixes)}, clear={self.clear}, at={self.at})"
        )

    def encode(self, limit: int | None = None) -> bytes:
        """Compact JSON. ``limit``: the most bytes the transport carries in one message; a
        message that would be longer (its keys and prefixes: an ``invalidate_many`` of
        200,000 long keys) is sent as a clear, of the same sender and number: every receiver
        drops its in-process copies, what it does for a message it missed. Sent whole, a
        Redis message past a subscriber's output buffer limit (32 MB by default) cut every
        process off the bus, and none heard it. Logged on the sender (``bus_sent_as_clear``)."""
        body: dict[str, Any] = {"s": self.sender, "n": self.seq}
        if self.keys:
            body["k"] = list(self.keys)
        if self.prefixes:
            body["p"] = list(self.prefixes)
            body["t"] = self.at
        if self.clear:
            body["c"] = True
        data = json.dumps(body, separators=(",", ":")).encode()
        if limit is None or len(data) <= limit:
            return data
        logger.warning(
            "an invalidation of %d key(s) and %d prefix(es) is %d bytes, over the bus's %d "
            "bytes a message: announced as a clear (every other process drops its in-process "
            "copies)",
            len(self.keys),
            len(self.prefixes),
            len(data),
            limit,
            extra=fields("bus_sent_as_clear"),
        )
        return Invalidation(self.sender, self.seq, clear=True).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Invalidation:
        """The message :meth:`encode` wrote; ``ValueError`` for anything else. Anything can
        publish on a bus's channel: whatever it sent is refused here, never raised as another
        error (a number out of range, ``1e400``, or a body nested past the parser's depth
        escaped as one, and the listener took it for a failure of its subscription)."""
        try:
            body = json.loads(data)
            return cls(
                sender=str(body["s"]),
                seq=int(body["n"]),
                keys=tuple(str(key) for key in body.get("k", ())),
                prefixes=tuple(str(prefix) for prefix in body.get("p", ())),
                clear=bool(body.get("c", False)),
                at=float(body.get("t", 0.0)),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            raise ValueError(f"not an invalidation message: {data!r:.200}") from exc


class BusListener(Protocol):
    """What a bus tells its subscriber. Called from the bus's own thread (an
    :class:`AsyncBus`: on its event loop); none of these may block."""

    def on_message(self, message: Invalidation) -> None: ...

    def on_disconnect(self) -> None:
        """The bus lost its connection: messages may be missed from now on."""
        ...

    def on_reconnect(self) -> None:
        """The bus is subscribed: again after an outage (messages sent meanwhile are lost),
        or for the first time (a bus that declares ``confirms_subscription``)."""
        ...

    def on_error(self, error: Exception) -> None:
        """Listening failed for a reason other than the network (a missing permission, an
        endpoint that is not the bus's server); the bus retries, and says so once."""
        ...

    def on_close_abandoned(self) -> None:
        """The bus's close stopped waiting for its listener (stuck where the close could not
        wake it), after telling ``on_disconnect``: the listener ends by itself, telling
        nothing more."""
        ...


@runtime_checkable
class Bus(Protocol):
    """A transport for invalidations between processes."""

    def publish(self, message: Invalidation) -> None:
        """Send ``message`` to every subscriber (its own included; they skip it)."""
        ...

    def subscribe(self, listener: BusListener) -> None:
        """Start delivering messages to ``listener``."""
        ...

    def close(self) -> None:
        """Stop delivering and release connections."""
        ...


@runtime_checkable
class AsyncBus(Protocol):
    """A transport for invalidations whose I/O runs on an event loop (for
    :class:`~tiered_cache.AsyncTieredCache`): it publishes with a coroutine, listens in a task
    of the loop and tells its listeners there."""

    async def publish(self, message: Invalidation) -> None:
        """Send ``message`` to every subscriber (its own included; they skip it)."""
        ...

    def subscribe(self, listener: BusListener) -> None:
        """Deliver messages to ``listener`` once listening has started (:meth:`listen`)."""
        ...

    def listen(self) -> None:
        """Start listening on the running event loop; later calls do nothing while it
        listens (once the loop it listened on has ended, it starts again on the running
        one, after telling its listeners ``on_disconnect``)."""
        ...

    async def aclose(self) -> None:
        """Stop listening and release connections."""
        ...


class BusBase:
    """The optional capabilities of a bus, declared with their defaults (as
    :class:`~tiered_cache.tier.TierBase` does for tiers).

    Attributes:
        confirms_subscription: the bus hears nothing until its server has confirmed its
            subscription, and says so: it tells its listeners ``on_reconnect`` once its first
            subscription is confirmed (and ``on_disconnect`` if that fails). Until then a
            chain treats it as starting: its memory is trusted no more than while the bus is
            down (a write announced meanwhile is never heard). A bus without it (in-process,
            :class:`LocalBus`) delivers from :meth:`Bus.subscribe` on. Off by default, and
            for a bus that is no :class:`BusBase` (:func:`confirms_subscription`): such a
            bus is taken as connected from :meth:`Bus.subscribe`, and a bus over a network
            broker that does not declare it leaves a copy taken before its server had the
            subscription served after a write announced in between.
        close_wait: how long, in seconds, its close waits for a publish running (then it
            returns, the publish left to end by itself). The asyncio chain's ``aclose()``
            waits as long at most for its writes' publishes before it closes the bus (a
            write whose publish is stuck, a stalled server and a publisher with no socket
            timeout, held that close until the server resumed); for the rest of a write, its
            tiers' and source's calls, it waits without this bound (they have timeouts of
            their own). None (the default, and for a bus that is no :class:`BusBase`): the
            chain waits for its writes without limit.
    """

    confirms_subscription: bool = False
    close_wait: float | None = None


class AsyncBusBase(BusBase):
    """The optional capabilities of an async bus: those of every bus
    (:class:`BusBase`), and:

    Attributes:
        one_loop: its listener and connections belong to the event loop they run on, and it
            serves one running loop at a time: the chain refuses calls from a second loop
            while the first runs (:class:`~tiered_cache.EventLoopConflict`).
    """

    one_loop: bool = False


def close_wait(bus: Bus | AsyncBus) -> float | None:
    """The ``close_wait`` ``bus`` declares (see :class:`BusBase`), None if none."""
    return bus.close_wait if isinstance(bus, BusBase) else None


def confirms_subscription(bus: Bus | AsyncBus) -> bool:
    """Whether ``bus`` declares ``confirms_subscription`` (see :class:`BusBase`)."""
    return isinstance(bus, BusBase) and bus.confirms_subscription


@dataclass(eq=False)  # hashable (by identity): the fork restart holds it weakly
class LocalBus:
    """A bus inside one process: several chains over the same shared tiers, or tests."""

    _listeners: list[BusListener] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """A new lock: another thread of the parent (a writer publishing) may have held it
        at the fork, and the child's first write would wait for ever."""
        self._lock = threading.Lock()

    def publish(self, message: Invalidation) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener.on_message(message)

    def subscribe(self, listener: BusListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def close(self) -> None:
        with self._lock:
            self._listeners.clear()
