"""The invalidation bus on Redis pub/sub (kind ``redis`` of ``tiered_cache.async_buses``), for
:class:`~tiered_cache.AsyncTieredCache`: it LISTENS from a thread and PUBLISHES from the loop.

Why a thread. The listener was a task of the event loop the chain first missed on. A loop can
stop running without ending: run by hand (``loop.run_until_complete(warm_up())``) and left
open, then ``asyncio.run(serve())`` with the same cache. The task never ran again, nothing
told the chain (no end, no close to see), the bus read "connected", and the chain served its
memory after other processes' writes for as long as it ran on the second loop (its memory
hits call nothing of the bus; looking at the running loop on each hit would cost half the
hit: docs/async.md). The same holds for a loop blocked by CPU-bound user code: nothing is
read while it is blocked. A lease on the listener's word (renewed at each reply, a watchdog
telling the chains "down" when it lapses) would only have turned that silence into an
outage: the memory dropped, the source loaded, for a loop merely left open. Listening from a
thread takes the loop out of it: whatever the loops do (left open, closed by hand, blocked,
one after another), every message is applied as it comes, and an outage is an outage of
Redis. The listener is the threaded :class:`~tiered_cache_redis.bus.RedisBus`'s own
(composed, not copied): the same health check, outage reports, backoff, fork restart, and a
close that returns once its thread has ended. Its calls reach the chain on its thread, as
for the threaded chain: the chain's fence and memory take invalidations from any thread.

The publisher stays on the loop (a write awaits its announcement natively): a
``redis.asyncio`` client, whose connections belong to the loop they were opened on, so the
bus declares ``one_loop``. They are let go of as their loop ends, dropped if it was closed by
hand, closed without waiting if it was left open (:mod:`tiered_cache.loop_end`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

from tiered_cache.bus import AsyncBusBase, BusListener, Invalidation
from tiered_cache.forking import restart_after_fork
from tiered_cache.loop_end import LoopEnd

from .async_fork import forget_the_parents_connections
from .async_left import close_a_left_loops_connections, drop_a_closed_loops_connections
from .bus import MAX_MESSAGE_BYTES, RedisBus
from .in_flight import CallsInFlight, current_task
from .listening import DEFAULT_HEALTH, Health

__all__ = ["AsyncRedisBus"]


class AsyncRedisBus(AsyncBusBase):
    """A :class:`tiered_cache.bus.AsyncBus` on a Redis channel (``one_loop``: its publisher's
    connections belong to the loop they first ran on; ``confirms_subscription``, as the
    threaded bus).

    Args:
        connect: makes the ``redis.asyncio`` client that publishes, when ``publisher`` is not
            given.
        channel: the channel; every chain of one cache (one namespace) uses the same one.
        listen_with: makes a (sync) redis-py client for the subscription, on the listening
            thread (a dedicated one: a subscription holds a connection); it should not retry
            by itself.
        publisher: the ``redis.asyncio`` client that publishes.
        health: as for :class:`~tiered_cache_redis.bus.RedisBus` (its ``close_wait`` bounds
            :meth:`aclose`'s wait for the listening thread and for a publish running, as the
            threaded bus's close).
    """

    one_loop = True
    confirms_subscription = True

    def __init__(
        self,
        connect: Callable[[], aioredis.Redis],
        channel: str,
        *,
        listen_with: Callable[[], redis.Redis],
        publisher: aioredis.Redis | None = None,
        health: Health = DEFAULT_HEALTH,
    ) -> None:
        self.channel = channel
        self._closed = False
        # Its own publisher is never used (this bus publishes from the loop): a client that
        # connects on first use, so none is opened.
        self._listening = RedisBus(listen_with, channel, health=health)
        #: How long :meth:`aclose` waits for a publish running (as the threaded bus's close).
        self.close_wait: float = health.close_wait  # declared (BusBase)
        self._client = publisher if publisher is not None else connect()
        #: The publishes running, which aclose waits for before it closes the publisher: one
        #: sent after the close (a write that passed the chain's check as another task closed
        #: it announces last) took a new connection from the closed pool, held until its loop
        #: ended (the threaded bus's twin: :class:`RedisBus`).
        self._publishes = CallsInFlight(channel, current_task, kind="bus")
        #: The publisher's connections belong to the loop they run on
        #: (:mod:`tiered_cache.loop_end`).
        client = self._client
        self._loop_end = LoopEnd(
            f"bus {channel}",
            self._at_loop_end,
            lambda: drop_a_closed_loops_connections(client),
            leave=lambda loop: close_a_left_loops_connections(client, loop),
        )
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """The publisher's connections are the parent's (:mod:`.async_fork`): let go of; the
        child publishes on its own. The listening thread restarts itself in the child, the
        chain down until the child's own subscription is confirmed (:class:`RedisBus`)."""
        self._loop_end.stop()
        forget_the_parents_connections(self._client)
        self._publishes = self._publishes.after_fork()

    @property
    def connected(self) -> bool:
        """Subscribed right now."""
        return self._listening.connected

    async def publish(self, message: Invalidation) -> None:
        """Send ``message``; ``RuntimeError`` once the bus is closed (nothing is sent)."""
        self._loop_end.here()
        # async with: the last publish to end after a close stopped waiting for it closes the
        # publisher as it ends (:meth:`aclose`).
        async with self._publishes:
            await self._client.publish(self.channel, message.encode(MAX_MESSAGE_BYTES))

    def subscribe(self, listener: BusListener) -> None:
        """Deliver to ``listener`` (on the listening thread, started by the first one)."""
        self._listening.subscribe(listener)

    def listen(self) -> None:
        """Nothing to do: the bus listens from its thread, whatever loop the chain runs on
        (started as the first chain subscribed)."""

    async def wait_subscribed(self, timeout: float | None = None) -> bool:
        """True once the listener is subscribed (for tests and orderly start-ups)."""
        return await asyncio.to_thread(self._listening.wait_subscribed, timeout)

    async def aclose(self) -> None:
        """Stop listening (returns once the listening thread has ended, its subscription
        closed, or once the threaded bus's close gave up on it: ``close_wait``) and close
        the publisher. Idempotent. The publisher's connections of a loop
        closed by hand are dropped first, those of a loop left open closed without it.

        A publish running is waited for ``close_wait`` at most, as by the threaded bus; past
        it (or this close cancelled meanwhile) new publishes are refused and the last publish
        to end closes the publisher as it ends (:meth:`CallsInFlight.aclose
        <tiered_cache_redis.in_flight.CallsInFlight.aclose>`): one stuck on a stalled Redis,
        on a publisher with no socket timeout, held the close until Redis resumed."""
        self._closed = True
        self._loop_end.close_here()
        await asyncio.to_thread(self._listening.close)
        await self._publishes.aclose(within=self.close_wait, then=self._client.aclose)

    # -- the publisher's connections and their loop

    async def _at_loop_end(self) -> None:
        """The loop the publisher ran on is ending (its ``shutdown_asyncgens``): its
        connections are of no use to the next loop."""
        await self._client.connection_pool.disconnect()
