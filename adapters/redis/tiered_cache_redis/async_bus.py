"""The invalidation bus on ``redis.asyncio`` pub/sub (kind ``redis`` of
``tiered_cache.async_buses``), for :class:`~tiered_cache.AsyncTieredCache`.

The threaded :class:`~tiered_cache_redis.bus.RedisBus` with a task instead of a thread: the
listener runs :mod:`tiered_cache_redis.listening`'s steps (the same subscription, health
check, outage reports and backoff) in a task of the event loop, and a publish is awaited
natively. The messages are the same (:class:`~tiered_cache.bus.Invalidation`), so sync and
async services of one fleet hear each other.

A ``redis.asyncio`` client belongs to the event loop it first ran on: the bus (like the
async Redis tier) serves the chain on one loop at a time (it declares ``one_loop``). A
listener cancelled tells the chain the bus is down, and starts again from the chain's next
miss, on the same loop if it goes on running (a framework's shutdown that cancels every task
and keeps the loop) or on the next one (a chain kept across ``asyncio.run`` calls). The
loop's end stops the listener, from its ``shutdown_asyncgens``
(:mod:`tiered_cache.loop_end`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from tiered_cache.bus import AsyncBusBase, BusListener, Invalidation
from tiered_cache.forking import keep_from_the_parent, restart_after_fork
from tiered_cache.loop_end import LoopEnd
from tiered_cache.steps import arun

from .async_fork import forget_the_parents_connections
from .listening import (
    DEFAULT_HEALTH,
    PING_PAYLOAD,
    Health,
    Listeners,
    Listening,
    Subscription,
    log,
)

__all__ = ["AsyncRedisBus"]


class AsyncRedisBus(AsyncBusBase):
    """A :class:`tiered_cache.bus.AsyncBus` on a Redis channel (``one_loop``: its clients
    belong to the loop they first ran on; ``confirms_subscription``, as the threaded bus).

    Args:
        connect: makes a ``redis.asyncio`` client for the subscription (a dedicated one: a
            subscription holds a connection); it should not retry by itself.
        channel: the channel; every chain of one cache (one namespace) uses the same one.
        publisher: the client that publishes; one from ``connect`` when not given.
        health: as for :class:`~tiered_cache_redis.bus.RedisBus`.
        sleep: how to pause (a coroutine function; injected for tests).
    """

    one_loop = True
    confirms_subscription = True

    def __init__(
        self,
        connect: Callable[[], aioredis.Redis],
        channel: str,
        *,
        publisher: aioredis.Redis | None = None,
        health: Health = DEFAULT_HEALTH,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.channel = channel
        self._connect = connect
        self._listeners = Listeners(channel)
        self._closed = False
        self._subscribed: asyncio.Event | None = None
        self._listening = Listening(
            Subscription(self._open, self._subscribe, _read, _ping, _close, sleep),
            self._listeners,
            health,
            stopped=lambda: self._closed,
            subscribed=self._set_subscribed,
        )
        self._client = publisher if publisher is not None else connect()
        #: The listener and the publisher's connections belong to the loop they run on:
        #: stopped and let go of as it ends, after the writes its end stopped have finished
        #: theirs, announcing (:mod:`tiered_cache.loop_end`).
        self._loop_end = LoopEnd(f"bus {channel}", self._at_loop_end, self._drop_connections)
        self._task: asyncio.Task[None] | None = None
        #: The next listener starts as after an outage (a forked child's: it missed what
        #: changed since the fork).
        self._listened_before = False
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """The parent's listener task (a task of the parent's loop, never run here) and
        connections are let go of (:mod:`tiered_cache_redis.async_fork`); the chain treats
        the bus as down (its own restart says so) until the child listens from its next
        miss, on a loop of its own, and is subscribed. Kept, the task looked alive: the
        child never listened, and served its memory after other processes' writes."""
        self._listeners.after_fork_in_child()
        self._listening.connected = False
        self._loop_end.stop()
        forget_the_parents_connections(self._client)
        task, self._task = self._task, None
        if task is not None:
            keep_from_the_parent(task)
            self._listened_before = True

    @property
    def connected(self) -> bool:
        """Subscribed right now."""
        return self._listening.connected

    async def publish(self, message: Invalidation) -> None:
        self._loop_end.here()
        await self._client.publish(self.channel, message.encode())

    async def _at_loop_end(self) -> None:
        """The loop the bus ran on is ending (its ``shutdown_asyncgens``): the listener,
        cancelled by its end's sweep or started again since by a write the sweep stopped (its
        finishing invalidation announces), ends here, its subscription closed; the publisher
        lets go of its connections. A listener left running was destroyed pending as the
        loop closed, its subscription open."""
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.wait({task})
        await self._client.connection_pool.disconnect()

    def _drop_connections(self) -> None:
        """The loop the bus ran on was closed without its end being seen (run by hand,
        :mod:`tiered_cache.loop_end`): its listener, a task of that loop, never runs again,
        and neither it nor the publisher's connections can be closed without it. Dropped:
        the next listener starts as after an outage, and this loop publishes on its own
        connections (the old ones were tried first)."""
        self._drop_a_closed_loops_listener()
        self._client.connection_pool.reset()  # type: ignore[no-untyped-call]

    def _drop_a_closed_loops_listener(self) -> None:
        """The listener's loop was closed by hand under it: it never runs again, nor its end
        (:meth:`Listening.ended`), so the chains on the bus are told here that it is down.
        Left "connected", the chains already on it trusted their memory, and one added then
        was told "connected" while nothing listened. The next listener starts as after an
        outage. Seen on the bus's next call on another loop, or as a chain joins it."""
        task = self._task
        if task is None or task.done() or not task.get_loop().is_closed():
            return
        self._task = None
        if not self._listeners.told:
            return  # closed before its first subscription's outcome: starting still (_listen)
        self._listened_before = True
        self._listening.ended()

    def subscribe(self, listener: BusListener) -> None:
        """Deliver to ``listener`` (on the event loop) once :meth:`listen` has started; a
        bus whose listener's loop was closed by hand is down for it."""
        self._drop_a_closed_loops_listener()
        self._listeners.add(listener)

    def listen(self) -> None:
        """Start the listener task on the running loop; later calls do nothing while it
        runs. If it ended (cancelled, or its loop ended), it starts again on the running loop,
        telling the chain first that the bus was down meanwhile; but not on a loop whose end
        has stopped it already (a task started then would never be stopped)."""
        task = self._task
        if self._closed or (task is not None and not _ended(task)):
            return
        self._loop_end.here()
        if self._loop_end.ended_here():
            return
        # Told down first if they heard from a listener before: not if it ended before its
        # first subscription's outcome (the chains are starting still, nothing was trusted).
        again = self._listened_before or (task is not None and self._listeners.told)
        self._listened_before = False
        self._subscribed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._listen(again), name=f"tiered-cache-bus:{self.channel}"
        )

    async def _listen(self, again: bool) -> None:
        try:
            if again:
                self._listeners.subscribed(False)
            await arun(self._listening.listen(after_outage=again))
        except asyncio.CancelledError:
            if not self._closed and not self._listeners.told:
                # Cancelled before its first subscription's outcome (a one-shot asyncio.run
                # that ended first): the chains are starting, their memory trusted no more
                # than while down and dropped at the confirmation to come. No outage: nothing
                # is logged, counted or told, and the next listener starts as a first one.
                raise
            if not self._closed:
                # Not aclose: the loop's end, or a cancel of every task on a loop that goes
                # on. Nothing will tell the chain what it misses from now on, so it must stop
                # trusting its memory now.
                log.warning(
                    "bus %r: the listener was cancelled (its event loop ending, or every task "
                    "cancelled); in-process tiers are treated as disconnected until the chain "
                    "listens again from its next miss",
                    self.channel,
                )
            self._listening.ended()  # closed: told to the other chains on this bus
            raise

    async def wait_subscribed(self, timeout: float | None = None) -> bool:
        """True once the listener is subscribed (for tests and orderly start-ups)."""
        self.listen()
        assert self._subscribed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        return self._subscribed.is_set()

    async def aclose(self) -> None:
        """Stop listening (the task is cancelled and its subscription closed) and close the
        publisher. Idempotent. A listener that does not end (its await swallowing every
        cancel) is waited for :attr:`~tiered_cache_redis.listening.Health.close_wait` at
        most, then left to end by itself, telling no chain anything more. A call on a loop
        like the others: a listener and connections of a loop closed by hand under it are
        dropped first (cancelled, a task of a closed loop raised ``Event loop is closed``,
        and the publisher stayed open)."""
        self._closed = True
        self._loop_end.here()
        self._loop_end.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Cancelled again at each poll, and given up on past the bus's close_wait: a
            # listener whose await swallowed the cancel (a library's except CancelledError)
            # held aclose, and the loop's end, for ever (Listening.outlive).
            if await arun(self._listening.outlive(_joined(task), _cancel(task))):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._client.aclose()

    # -- the subscription's I/O, for the listener's steps

    def _set_subscribed(self, subscribed: bool) -> None:
        if self._subscribed is not None:
            if subscribed:
                self._subscribed.set()
            else:
                self._subscribed.clear()

    async def _open(self) -> tuple[aioredis.Redis, Any]:
        client = self._connect()
        return client, client.pubsub()

    async def _subscribe(self, handle: tuple[aioredis.Redis, Any]) -> None:
        await handle[1].subscribe(self.channel)


def _joined(task: asyncio.Task[None]) -> Callable[[float], Awaitable[bool]]:
    """``join(seconds)``: whether ``task`` ended within that time (not cancelled by it)."""

    async def join(seconds: float) -> bool:
        done, _ = await asyncio.wait({task}, timeout=seconds)
        return bool(done)

    return join


def _cancel(task: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    """The asyncio listener's wake: cancelled again (the last cancel may have been lost)."""

    async def cancel() -> None:
        task.cancel()

    return cancel


def _ended(task: asyncio.Task[None]) -> bool:
    """The listener task is over, or its loop closed under it (it will never run again)."""
    return task.done() or task.get_loop().is_closed()


async def _read(handle: tuple[aioredis.Redis, Any], timeout: float) -> Any:
    """One read of the subscription that never loses its task's cancellation. A read that
    catches CancelledError and carries on (a library's timeout racing the cancel) would leave
    the listener polling for good, and asyncio.run's end, which waits for every task it
    cancelled (and the loop's end, which waits for the listener it stops), hung behind it. A
    cancel still requested after the read ends the listener at its next poll."""
    message = await handle[1].get_message(timeout=timeout)
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return message


async def _ping(handle: tuple[aioredis.Redis, Any]) -> None:
    await handle[1].ping(PING_PAYLOAD)


async def _close(handle: tuple[aioredis.Redis, Any]) -> None:
    client, pubsub = handle
    try:
        await pubsub.aclose()
    finally:
        await client.aclose()
