"""A stop (Ctrl-C's KeyboardInterrupt, SystemExit: raised by a signal's handler in the loop's
thread) inside the event loop's run of an asyncio flight's wake-up, after the landing, loses
no waiter when the loop is run again.

The landing schedules each waiting loop's wake-up (``async_flight._wake``, ``call_soon``);
the loop runs it later, as a callback of its own. A KeyboardInterrupt raised there leaves
``run_until_complete`` with the callback gone: the future it was about to set stayed pending
(or was set with its callbacks, the waiters' shields, dropped), and every task waiting for
the flight on that loop waited for ever once the loop ran again (or until its join timeout).

Each run reads a key whose loader lets three other tasks of the loop join its flight and
waits until they wait; the loop's run of the wake-up is then stopped at one instant CPython
can raise into it (as a call returns, as a frame is entered:
:data:`test_stopped_claims.CHECKED`), in the wake-up's own frame and in the frames it calls
(asyncio's ``call_soon``, as a future schedules its callbacks), one run per instant; the loop
is then run again, and the waiting tasks counted."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from types import CoroutineType, FrameType

from tiered_cache import AsyncTieredCache, MemoryTier, async_flight

from .test_stopped_claims import StopAt, _landing

HERE = str(Path(__file__).resolve())
#: Tasks waiting for the flight, besides the one that leads it.
WAITERS = 3
#: Loop iterations the waiters are given to end once the loop runs again: every wake-up is
#: a callback or two away (a bound, not a measure: nothing here waits on time).
TICKS = 50
#: The chains of a sweep, kept until it ends (a chain freed during a later run runs its
#: parts' finalizers there, which the stop would hit).
KEPT: list[object] = []


class StopInWake(StopAt):
    """Raises KeyboardInterrupt at the ``at``-th instant of a run of the wake-up (its frame,
    and the frames it calls); where, in :attr:`where`, and whether that was the wake-up's
    own frame, in :attr:`own`."""

    def __init__(self, at: int) -> None:
        super().__init__(lambda: True, at)
        self.landing = frozenset({async_flight._wake.__code__})
        self.own = False

    def traced(self, frame: FrameType) -> bool:
        return frame.f_code.co_filename != HERE

    def counts(self, frame: FrameType) -> bool:
        inside = _landing(frame, self.landing)
        if inside and self.seen + 1 == self.at:
            self.own = frame.f_code is async_flight._wake.__code__
        return inside

    def step(self, frame: FrameType, event: str, arg: object) -> object:
        try:
            return super().step(frame, event, arg)
        except BaseException as stop:  # the base class's Interrupted, as Ctrl-C's
            raise KeyboardInterrupt from stop


def _run(stop: StopInWake) -> tuple[int, int]:
    """One read whose flight's wake-up is stopped at ``stop``'s instant: how many of the
    waiting tasks still wait once the loop has run again, and how many of those a
    cancellation (a join timeout's) does not end."""
    cache = AsyncTieredCache([MemoryTier(name="l1", max_entries=100, ttl=60)])
    KEPT.append(cache)
    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task[object]] = []

    async def again() -> str:
        return "again"

    async def loader() -> str:
        for _ in range(WAITERS):
            tasks.append(loop.create_task(cache.get("a", again)))
        while not all(map(_waits, tasks)):
            await asyncio.sleep(0)
        return "loaded a"

    async def ticks() -> None:
        for _ in range(TICKS):
            await asyncio.sleep(0)

    try:
        traced = loop.create_task(cache.get("a", loader))
        with contextlib.suppress(KeyboardInterrupt):
            loop.run_until_complete(_armed(stop, traced))
        loop.run_until_complete(ticks())  # the loop run again after the stop
        waiting = sum(not task.done() for task in tasks)
        results = {task.result() for task in tasks if task.done() and not task.cancelled()}
        assert results <= {"loaded a", "again"}, results
        for task in tasks:
            task.cancel()
        loop.run_until_complete(ticks())
        stuck = 0
        for task in tasks:
            if not task.done():
                # Asleep on a future set with its wake-up dropped (a stop inside that
                # future's set_result): not even a cancellation reaches it.
                stuck += 1
                task._log_destroy_pending = False  # type: ignore[attr-defined]
        loop.run_until_complete(cache.aclose())
    finally:
        loop.close()
    return waiting, stuck


def _waits(task: asyncio.Task[object]) -> bool:
    """``task`` waits for a flight's outcome (its innermost coroutine is the flight's wait)."""
    coro: object = task.get_coro()
    while isinstance(getattr(coro, "cr_await", None), CoroutineType):
        coro = coro.cr_await  # type: ignore[attr-defined]
    return isinstance(coro, CoroutineType) and coro.cr_code.co_qualname == "AsyncFlight.wait"


async def _armed(stop: StopInWake, read: asyncio.Task[object]) -> None:
    """Wait for ``read`` with ``stop`` tracing the loop's thread, then one more tick (the
    wake-ups the landing scheduled run before it)."""
    sys.settrace(stop)
    try:
        await read
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    finally:
        sys.settrace(None)


def test_a_stop_inside_the_loops_run_of_a_wake_up_loses_no_waiter() -> None:
    """Stopped at any instant of the wake-up's own frame, no task waits once the loop runs
    again; stopped inside a future's own scheduling of its callbacks (asyncio's
    ``call_soon``, under ``set_result``), at most that future's task waits (asyncio drops
    the callbacks of a future whose ``set_result`` a stop broke: nobody can tell whether
    its task's wake-up was scheduled), and a cancellation (a join timeout's) still ends it.
    Failed on main 00141af (one future a loop, its wake-up scheduled once): ``AssertionError:
    20 of 33 instants``, ``async_flight.py:30 _wake (its own frame): 3 of 3 tasks still
    wait`` (twice), ``base_events.py:761 BaseEventLoop.call_soon (a frame it calls): 3 of 3
    tasks still wait``, ..."""
    failures: list[str] = []
    stopped = {True: 0, False: 0}
    at = 0
    while True:
        stop = StopInWake(at)
        waiting, stuck = _run(stop)
        if stop.where is None:
            break
        stopped[stop.own] += 1
        if waiting > (0 if stop.own else 1) or stuck:
            where = "its own frame" if stop.own else "a frame it calls"
            failures.append(
                f"{stop.where} ({where}): {waiting} of {WAITERS} tasks still wait"
                + (f", {stuck} past a cancellation" if stuck else "")
            )
        at += 1
    KEPT.clear()
    assert stopped[True] > 0 and stopped[False] > 0, stopped
    assert not failures, f"{len(failures)} of {at} instants:\n" + "\n".join(failures)
