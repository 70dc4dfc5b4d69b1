"""Single-flight for coroutines: one execution per key at a time, shared by every coroutine
that asks meanwhile -- in this event loop and in the loops of other threads.

The flights live in one table guarded by a thread lock (a few dict operations, never held
across an ``await``). A flight's outcome is delivered to each event loop that waits for it: a
wake-up scheduled on it (``call_soon`` in the loop that lands it, ``call_soon_threadsafe`` in
the others) sets the future each of its waiting coroutines awaits (shielded), so 1,000
waiters on a loop cost one scheduled wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

from .errors import LoadTimeout, handed_on
from .loops import running_task, stalled
from .singleflight import FlightTable, own_flight, waited_too_long

T = TypeVar("T")


#: How many times a landing schedules each waiting loop's wake-up: a stop as the loop enters
#: one (before its ``try``: nothing of it ran) leaves the waiters to the next, which finds them
#: woken otherwise (one look at each future).
WAKES = 2


def _wake(loop: asyncio.AbstractEventLoop, futures: dict[asyncio.Future[None], None]) -> None:
    """The flight landed: its waiters on ``loop`` (``futures``, one each) read its outcome.
    The futures carry none: raised from a future, the flight's error was one object for every
    waiter (see :func:`~tiered_cache.errors.handed_on`). A future woken already (or
    cancelled: its waiter gave up) is passed over.

    The loop runs this as a callback of its own, after the landing: a stop there (a signal's
    handler raising Ctrl-C's KeyboardInterrupt in the loop's thread) left the loop's run with
    the callback gone, and the waiters it had not woken waited for ever once the loop ran
    again (or until their join timeout; tests/test_stopped_wakeups.py). So what is left is
    scheduled again, on this loop, before the stop goes on. A stop inside a future's own
    ``set_result``, as it schedules its waiter's wake-up (asyncio's ``call_soon`` is Python
    code), still loses that one waiter, until its join timeout or a cancellation: asyncio
    drops the callbacks of a future whose scheduling a stop broke, and nothing tells
    whether that one was scheduled (one future a loop, that stop lost them all)."""
    try:
        for future in futures:
            if not future.done():
                future.set_result(None)
    except BaseException:
        loop.call_soon(_wake, loop, futures)
        raise


class AsyncFlight:
    """One execution in progress; coroutines of any loop await its outcome."""

    __slots__ = (
        "_done",
        "_error",
        "_futures",
        "_leader",
        "_lock",
        "_result",
        "refresh",
        "tag",
        "waiters",
    )

    def __init__(self, tag: int = 0) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None
        #: The futures of its waiting coroutines, by loop (a dict: one given up goes at once).
        self._futures: dict[asyncio.AbstractEventLoop, dict[asyncio.Future[None], None]] = {}
        self.waiters = 0
        #: What the leader passed in (the chain: its fence mark, taken before the flight).
        self.tag = tag
        #: Led by a background refresh (:meth:`FlightTable.lead_after`, under the table's lock).
        self.refresh = False
        # Made by the task that leads it (FlightTable.join_or_lead, FlightTable.claim).
        self._leader = running_task()

    def led_here(self) -> bool:
        """Whether this flight is the calling task's own (:func:`own_flight`): awaiting
        it, it would wait for itself."""
        return own_flight(self._leader, running_task())

    def stalled(self) -> bool:
        """Whether the task leading this flight can make no progress (its loop closed under
        it, or left not running: :func:`~tiered_cache.loops.stalled`): it may never land,
        and a caller on another loop that joined it, or waited behind it, waited for ever."""
        leader = self._leader
        return leader is not None and stalled(leader)

    def join(self) -> None:
        """A coroutine will :meth:`wait` for this flight (its futures are made by ``wait``)."""
        self.waiters += 1

    async def wait(self) -> Any:
        """The flight's result (or its error raised). Cancelling a waiter cancels nothing
        else: the others, and the execution itself, go on."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = None
        with self._lock:
            if not self._done:
                future = loop.create_future()
                self._futures.setdefault(loop, {})[future] = None
        if future is not None:
            # Its own future (landed: the outcome was set before the wake-up), shielded: a
            # stop inside its set_result, as it schedules this wait's wake-up, drops that
            # wake-up, and a wait on the future itself would then be past even a
            # cancellation (a join timeout's); the shield's own future is still pending.
            try:
                await asyncio.shield(future)
            except BaseException:
                self._forget(loop, future)
                raise
        if self._error is not None:
            raise handed_on(self._error)  # a copy: the others raise theirs
        return self._result

    def _forget(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        """A waiter gave up (cancelled): its future goes, unless the flight landed (the
        wake-ups walk the futures then)."""
        with self._lock:
            if not self._done:
                waiting = self._futures[loop]
                waiting.pop(future, None)
                if not waiting:
                    del self._futures[loop]

    async def settle(self) -> None:
        """Wait until the flight lands, whatever its outcome: a coroutine that may not take it
        (an invalidation came since it read) waits for it to end before loading the key."""
        # Its error is the flight's, not this caller's (a cancellation of this caller is not
        # an Exception: it goes through).
        with contextlib.suppress(Exception):
            await self.wait()

    def land(self, result: Any, error: BaseException | None) -> None:
        """Deliver the outcome to every waiting loop. Called by the construct that claimed the
        flight, and again by it if a stop (an exception raised into its thread: a signal's
        handler) broke the first landing: the outcome published first stays, and every
        waiting loop is woken again (a wake-up twice wakes once). The wake-ups are scheduled,
        the current loop's too (``call_soon``): woken here, a stop inside the future's
        scheduling of its callbacks (``loop.call_soon`` is Python code) dropped them, and its
        waiters waited for ever, a landing again finding the future done. Each loop's
        wake-up, one body for every landing and for what a stop inside it left
        (:func:`_wake`), is scheduled :data:`WAKES` times."""
        if not self._done:
            if error is not None:
                # A copy as the error stands now: the leader's raise goes on adding its
                # caller's frames to the error's traceback, which are not the waiters'.
                error = handed_on(error)
            with self._lock:
                self._result = result
                self._error = error
                self._done = True
        # No future is added once landed (wait looks under the lock): kept, not cleared, for
        # a landing again.
        futures = self._futures
        if not futures:  # nobody waits (the usual miss): nothing to wake
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, waiting in futures.items():
            for _ in range(WAKES):
                if loop is current:
                    loop.call_soon(_wake, loop, waiting)
                    continue
                # A loop that was closed has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_wake, loop, waiting)


def async_flights() -> FlightTable[AsyncFlight]:
    """Flights by key for coroutines: :class:`~tiered_cache.singleflight.FlightTable`'s
    ``claim``/``land`` for batches, and ``join_or_lead`` for one key. The caller that leads a
    key runs the work and must ``land`` the flight; the others :meth:`AsyncFlight.wait` (or
    :meth:`AsyncFlight.settle`, behind a flight they may not join). (A
    table of its own, not a subclass: the table is compiled with the core, and a compiled
    class takes no interpreted subclass.)"""
    return FlightTable(AsyncFlight)


async def within_join_timeout(waited: Awaitable[T], key: str, wait: float | None) -> T:
    """``waited`` (a wait for another caller's flight of ``key``) within ``wait`` seconds
    (None: however long), else :class:`~tiered_cache.errors.LoadTimeout`.

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 ``wait_for`` returns the
    result of an awaitable that ended in the tick its caller was cancelled in, and a waiter
    cancelled as its flight landed went on with the value. Only the wait's own expiry is a
    ``LoadTimeout``: a flight that failed with ``TimeoutError`` (a source's) hands that on
    (its waiters got a bare ``AssertionError``, or a ``LoadTimeout`` naming the wait)."""
    timeout = asyncio.timeout(wait)
    try:
        async with timeout:
            return await waited
    except TimeoutError:
        if wait is None or not timeout.expired():
            raise
        raise LoadTimeout(waited_too_long(key, wait)) from None
