"""A caller stopped (Ctrl-C's KeyboardInterrupt, a task queue's time limit: any BaseException
raised into it, by a signal handler or ``PyThreadState_SetAsyncExc``) inside the landing of a
flight it leads still wakes that flight's waiters: other threads (or tasks) reading the same
key, which with no ``hard_timeout`` (the default) have no join timeout. The landing woke them
with ``threading.Event.set``, Python code taking a ``Condition``'s lock: stopped there, the
lock stayed held or the event unset, and the waiters waited for ever.

Each test reads a key whose loader, before it returns, lets another caller join the key's
flight and waits until it waits; the read is then stopped at every instant CPython can raise
into it (as a call returns, as a frame is entered: :data:`test_stopped_claims.CHECKED`) inside
the landing, one run per instant, the standard library's frames it calls included. On the
pure-Python core the landing's frames say where it is; compiled, the landing has no frames,
and every instant of a Python frame after the loader returned is stopped at (those the
compiled landing calls are among them)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.compiled import compiled_core
from tiered_cache.testing.frames import current_frames
from tiered_cache.testing.interrupts import Interrupted
from tiered_cache.testing.polling import until
from tiered_cache.testing.pure_core import on_the_pure_core

from .test_stopped_claims import StopAt, _landing

HERE = str(Path(__file__).resolve())
#: How long a waiter is given to end after the stop: a guard, not a measure.
GUARD = 10.0
#: The chains of a sweep, kept until it ends: one freed during a later run's read ran its
#: parts' finalizers there (weak references' callbacks), which the stop would hit.
KEPT: list[object] = []


class StopInLanding(StopAt):
    """A trace function (``sys.settrace``'s) that raises :class:`Interrupted` at the
    ``at``-th instant (counted from 0) of the landing (``compiled``: of any Python frame once
    :attr:`loaded`), in any module but this one; where it raised is kept in :attr:`where`
    (None: the read ended first)."""

    def __init__(self, at: int, *, compiled: bool) -> None:
        super().__init__(lambda: True, at)
        #: Set by the read's loader as it returns.
        self.loaded = False
        self.compiled = compiled

    def traced(self, frame: FrameType) -> bool:
        return frame.f_code.co_filename != HERE

    def counts(self, frame: FrameType) -> bool:
        if self.compiled:
            return self.loaded
        return _landing(frame, self.landing)


Run = Callable[[StopInLanding], str]


def _sweep(run: Run, compiled: bool) -> tuple[int, list[str]]:
    """``run(stop)`` at each instant of the landing, until a run ends before its instant;
    ``run`` sets ``stop.loaded`` as its loader returns, and returns what is wrong after it
    ("" if nothing). How many instants were stopped
    at, and the failures, each with where its stop landed."""
    failures: list[str] = []
    at = 0
    while True:
        stop = StopInLanding(at, compiled=compiled)
        wrong = run(stop)
        if stop.where is None:
            KEPT.clear()
            return at, failures
        if wrong:
            failures.append(f"{stop.where}: {wrong}")
        at += 1


def _blocked(thread: threading.Thread) -> bool:
    """Whether ``thread`` waits in a flight's wait (pure core: its frames say so; compiled,
    the wait has no frame to see, and joining is what is waited for)."""
    frame = current_frames().get(thread.ident or 0)
    return frame is not None and frame.f_code.co_name in ("wait", "_latched")


def _threaded_run(read: str, compiled: bool) -> Run:
    """One stopped ``read`` (``get`` or ``get_many``) of a memory chain, with a waiter."""

    def run(stop: StopInLanding) -> str:
        cache = TieredCache([MemoryTier(name="l1", max_entries=100, ttl=60)])
        KEPT.append(cache)
        flights = cache._loader.flights
        outcome: list[object] = []

        def waiter() -> None:
            try:
                outcome.append(cache.get("a", lambda: "again"))
            except BaseException as exc:
                outcome.append(exc)

        other = threading.Thread(target=waiter, daemon=True)

        def let_join() -> None:
            other.start()
            until(lambda: flights._flights["a"].waiters >= 1, "the other reader joined")
            if not compiled:
                until(lambda: _blocked(other), "the other reader waits")

        def one() -> str:
            let_join()
            stop.loaded = True
            return "loaded a"

        def batch(keys: Sequence[str]) -> dict[str, str]:
            let_join()
            stop.loaded = True
            return {key: f"loaded {key}" for key in keys}

        def leader() -> None:
            sys.settrace(stop)
            try:
                if read == "get":
                    cache.get("a", one)
                else:
                    cache.get_many(["a", "b"], batch)
            except Interrupted:
                pass
            finally:
                sys.settrace(None)

        # A thread of its own: its landing again, after the stop, may wait for ever too.
        stopped = threading.Thread(target=leader, daemon=True)
        stopped.start()
        stopped.join(GUARD)
        if stopped.is_alive():
            return "the stopped read still lands"
        wrong = []
        left = sorted(key for key in ("a", "b") if key in flights._flights)
        if left:
            wrong.append(f"left claimed {left}")
        other.join(GUARD)
        if other.is_alive():
            wrong.append("the other reader still waits")
        elif outcome not in (["loaded a"], ["again"]):
            wrong.append(f"the other reader got {outcome!r}")
        return "; ".join(wrong)

    return run


def _threaded_outcomes(compiled: bool) -> dict[str, tuple[bool, list[str]]]:
    outcomes = {}
    for read in ("get", "get_many"):
        stopped, failures = _sweep(_threaded_run(read, compiled), compiled)
        outcomes[read] = (stopped > 0, failures)
    return outcomes


def test_a_threaded_read_stopped_inside_its_landing_wakes_its_waiters_pure() -> None:
    """``get`` (``SingleFlight.run``'s landing) and ``get_many`` (``Leading``'s), on the
    pure core: stopped at each instant of the landing, the other reader ends."""
    if compiled_core():
        on_the_pure_core(test_a_threaded_read_stopped_inside_its_landing_wakes_its_waiters_pure)
        return
    outcomes = _threaded_outcomes(False)
    assert outcomes == dict.fromkeys(outcomes, (True, []))


def test_a_threaded_read_stopped_inside_its_landing_wakes_its_waiters_compiled() -> None:
    """The same on the compiled core: every Python frame after the load (what the compiled
    landing calls among them), stopped at each of its instants."""
    if not compiled_core():
        pytest.skip("the compiled core is not built here")
    outcomes = _threaded_outcomes(True)
    assert outcomes == dict.fromkeys(outcomes, (True, []))


def _async_run(read: str) -> Run:
    """One stopped ``read`` of an asyncio memory chain, with a waiting task on its loop."""

    def run(stop: StopInLanding) -> str:
        cache = AsyncTieredCache([MemoryTier(name="l1", max_entries=100, ttl=60)])
        KEPT.append(cache)
        flights = cache._loader.flights
        outcome: list[object] = []
        loop = asyncio.new_event_loop()

        async def again() -> str:
            return "again"

        async def waiter() -> None:
            try:
                outcome.append(await cache.get("a", again))
            except BaseException as exc:
                outcome.append(exc)

        tasks: list[asyncio.Task[None]] = []

        async def let_join() -> None:
            tasks.append(asyncio.get_running_loop().create_task(waiter()))
            while not flights._flights["a"]._futures:  # its wait's future made: it waits
                await asyncio.sleep(0)

        async def one() -> str:
            await let_join()
            stop.loaded = True
            return "loaded a"

        async def batch(keys: Sequence[str]) -> dict[str, str]:
            await let_join()
            stop.loaded = True
            return {key: f"loaded {key}" for key in keys}

        async def reads() -> None:
            sys.settrace(stop)
            try:
                if read == "get":
                    await cache.get("a", one)
                else:
                    await cache.get_many(["a", "b"], batch)
            except Interrupted:
                pass
            finally:
                sys.settrace(None)

        async def ended() -> bool:
            try:
                async with asyncio.timeout(GUARD):
                    await asyncio.gather(*tasks)
            except TimeoutError:
                return False
            return True

        try:
            loop.run_until_complete(reads())
            wrong = []
            left = sorted(key for key in ("a", "b") if key in flights._flights)
            if left:
                wrong.append(f"left claimed {left}")
            if not loop.run_until_complete(ended()):
                wrong.append("the other task still waits")
            elif outcome not in (["loaded a"], ["again"]):
                wrong.append(f"the other task got {outcome!r}")
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(cache.aclose())
        finally:
            loop.close()
        return "; ".join(wrong)

    return run


# A stop as a call returns a coroutine, before it is awaited, leaves that coroutine unawaited.
@pytest.mark.filterwarnings("ignore:coroutine '.*' was never awaited:RuntimeWarning")
def test_an_asyncio_read_stopped_inside_its_landing_wakes_its_waiters() -> None:
    """The asyncio face: ``get`` and ``get_many``, a task of the same loop waiting for the
    key's flight; stopped at each instant of the landing, that task ends (pure core)."""
    if compiled_core():
        on_the_pure_core(test_an_asyncio_read_stopped_inside_its_landing_wakes_its_waiters)
        return
    outcomes = {}
    for read in ("get", "get_many"):
        stopped, failures = _sweep(_async_run(read), False)
        outcomes[read] = (stopped > 0, failures)
    assert outcomes == dict.fromkeys(outcomes, (True, []))
