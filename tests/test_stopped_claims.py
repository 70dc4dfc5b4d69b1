"""A caller stopped (Ctrl-C's KeyboardInterrupt, SystemExit, a task queue's time limit: any
BaseException raised into it, by a signal handler or ``PyThreadState_SetAsyncExc``) at any
step from the claim of a key's single-flight to its landing lands that flight: the key's next
read, by the same thread (or task) or another, loads it. A flight left claimed made every
later read of its key by that thread a ``RecursiveLoad`` ("the load of 'a' read 'a' again"),
and every other thread's read of it waited for ever.

Each test stops the read at every instant from the step the key is in the flight table on
where CPython can raise into it (as a call returns, as a frame is entered), one run per
instant (a trace function raises there, as a signal's handler would), and after each run
reads the key again. The instants of the landing itself are not stopped at
(:func:`landing`: a stop inside it, after the flight left the table and before its waiters were
woken, is a window no Python code can close). On the pure-Python core (the loader and the
flight table are compiled otherwise: no frames to stop in)."""

from __future__ import annotations

import asyncio
import contextlib
import dis
import itertools
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest

import tiered_cache
from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.async_flight import AsyncFlight
from tiered_cache.compiled import compiled_core
from tiered_cache.singleflight import Flight, FlightTable, Leading
from tiered_cache.testing.interrupts import Interrupted
from tiered_cache.testing.pure_core import on_the_pure_core

PACKAGE = str(Path(tiered_cache.__file__).parent)


def landing() -> frozenset[CodeType]:
    """The landing's own code (and what it calls): not stopped in. On the pure core only
    (compiled, these functions have no code objects: none)."""
    if compiled_core():
        return frozenset()
    return frozenset(
        {
            FlightTable.land.__code__,
            FlightTable.land_one.__code__,
            Flight.land.__code__,
            AsyncFlight.land.__code__,
            Leading.__exit__.__code__,
        }
    )


def _landing(frame: FrameType | None, codes: frozenset[CodeType]) -> bool:
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


#: The instructions after which CPython 3.11 raises an asynchronous exception (a signal's
#: handler, ``PyThreadState_SetAsyncExc``): a call's return and a frame's (re)entry. A stop
#: at any line would also land where none can (between a ``with`` block's last line and
#: its ``__exit__``, the lock still held).
CHECKED = frozenset({"CALL", "CALL_FUNCTION_EX", "RESUME"})
_AFTER_CHECK: dict[CodeType, frozenset[int]] = {}


def _after_check(code: CodeType) -> frozenset[int]:
    """The offsets in ``code`` of the instructions right after one in :data:`CHECKED`."""
    offsets = _AFTER_CHECK.get(code)
    if offsets is None:
        instructions = list(dis.get_instructions(code))
        offsets = frozenset(
            after.offset
            for before, after in itertools.pairwise(instructions)
            if before.opname in CHECKED
        )
        _AFTER_CHECK[code] = offsets
    return offsets


class StopAt:
    """A trace function (``sys.settrace``'s) that raises :class:`Interrupted` at the
    ``at``-th instant the chain's code could be interrupted (:data:`CHECKED`) once
    ``claimed()`` holds (counted from 0); where it raised is kept in :attr:`where` (None:
    the read ended first)."""

    def __init__(self, claimed: Callable[[], bool], at: int) -> None:
        self.claimed = claimed
        self.at = at
        self.seen = -1
        self.where: str | None = None
        self.landing = landing()

    def traced(self, frame: FrameType) -> bool:
        """Whether ``frame``'s instants may be stopped at: the package's."""
        return frame.f_code.co_filename.startswith(PACKAGE)

    def counts(self, frame: FrameType) -> bool:
        """Whether the instant ``frame`` is at is one counted (and stopped at, the
        ``at``-th): any once the key is claimed, but the landing's."""
        return not _landing(frame, self.landing) and (self.seen >= 0 or self.claimed())

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if self.where is not None or not self.traced(frame):
            return None
        frame.f_trace_opcodes = True
        return self.step

    def step(self, frame: FrameType, event: str, arg: object) -> Any:
        if self.where is not None:
            return None
        if event != "opcode" or frame.f_lasti not in _after_check(frame.f_code):
            return self.step
        if self.counts(frame):
            self.seen += 1
            if self.seen == self.at:
                code = frame.f_code
                self.where = f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_qualname}"
                sys.settrace(None)
                frame.f_trace = None
                raise Interrupted
        return self.step


def sweep(
    claimed: Callable[[], bool], stop_in: Callable[[StopAt], None], check: Callable[[], str]
) -> tuple[int, list[str]]:
    """Stop ``stop_in``'s read at each line from the claim on (``stop_in`` runs it with the
    trace set, and must let :class:`Interrupted` out or return); after each, ``check()``
    says what is wrong ("" if nothing). Returns how many lines were stopped at, and the
    failures, each with where its stop landed."""
    failures: list[str] = []
    at = 0
    while True:
        stop = StopAt(claimed, at)
        with contextlib.suppress(Interrupted):
            stop_in(stop)
        if stop.where is None:
            return at, failures
        wrong = check()
        if wrong:
            failures.append(f"{stop.where}: {wrong}")
        at += 1


def memory_chain() -> TieredCache:
    return TieredCache([MemoryTier(name="l1", max_entries=100, ttl=60)])


def _batch(keys: Sequence[str]) -> dict[str, str]:
    return {key: f"loaded {key}" for key in keys}


def _threaded_read(cache: TieredCache, read: str, keys: list[str]) -> None:
    if read == "get_many":
        cache.get_many(keys, _batch)
    elif read == "get":
        cache.get(keys[0], lambda: f"loaded {keys[0]}")
    else:
        cache.get_after_l1(keys[0], lambda: f"loaded {keys[0]}", None)


def _threaded_check(cache: TieredCache, keys: list[str], first: list[bool]) -> str:
    """What is wrong after a stopped read: a flight left in the table, the same thread's
    read of a key failing, another thread's read not ending (looked at until one failure:
    it waits for ever then)."""
    flights = cache._loader.flights
    wrong = []
    left = {key: flights._flights[key] for key in keys if key in flights._flights}
    if left:
        wrong.append(f"left claimed {sorted(left)}")
    for key in keys:
        try:
            cache.get(key, lambda: "again")
        except Exception as exc:
            wrong.append(f"{type(exc).__name__} reading {key!r} again")
    if first[0]:
        other = threading.Thread(target=lambda: cache.get_many(keys, _batch), daemon=True)
        other.start()
        other.join(10.0)  # a guard, not a measure
        if other.is_alive():
            first[0] = False
            wrong.append("another thread's read still waits")
    if left:  # landed by hand, for the next run (and the waiting thread)
        flights.land(left, {}, Interrupted())
    cache.invalidate_many(keys)
    return "; ".join(wrong)


def test_a_threaded_read_stopped_anywhere_after_its_claim_leaves_no_flight_claimed() -> None:
    """``get_many`` of two keys (the batch's claim, ``load_batch``, the batch's steps), ``get``
    (``SingleFlight.run``: ``setdefault``, the try) and the decorator's miss (``get_after_l1``,
    the same flight): stopped at each line, the keys' flights land."""
    if compiled_core():
        on_the_pure_core(
            test_a_threaded_read_stopped_anywhere_after_its_claim_leaves_no_flight_claimed
        )
        return
    outcomes = {read: _threaded_sweep(read) for read in ("get_many", "get", "decorator_miss")}
    assert outcomes == dict.fromkeys(outcomes, (True, []))


def _threaded_sweep(read: str) -> tuple[bool, list[str]]:
    """:func:`sweep` of a threaded chain's ``read``; True if it stopped the read at more
    than ten lines (it did stop the read at its lines)."""
    cache = memory_chain()
    keys = ["a", "b"] if read == "get_many" else ["a"]
    flights = cache._loader.flights
    first = [True]

    def stop_in(stop: StopAt) -> None:
        sys.settrace(stop)
        try:
            _threaded_read(cache, read, keys)
        finally:
            sys.settrace(None)

    stopped, failures = sweep(
        lambda: "a" in flights._flights, stop_in, lambda: _threaded_check(cache, keys, first)
    )
    return stopped > 10, failures


def _async_sweep(read: str) -> tuple[bool, list[str]]:
    """:func:`sweep` of an asyncio chain's ``read`` (``get_many`` of two keys, or ``get``):
    after each stop the same task reads the keys again, and then another task."""
    cache = AsyncTieredCache([MemoryTier(name="l1", max_entries=100, ttl=60)])
    flights = cache._loader.flights
    keys = ["a", "b"] if read == "get_many" else ["a"]
    again: list[str] = []
    first = [True]
    loop = asyncio.new_event_loop()

    async def batch(asked: Sequence[str]) -> dict[str, str]:
        return _batch(asked)

    async def reads(stop: StopAt) -> None:
        sys.settrace(stop)
        try:
            if read == "get_many":
                await cache.get_many(keys, batch)
            else:

                async def one() -> str:
                    return "loaded a"

                await cache.get("a", one)
        except Interrupted:
            pass
        finally:
            sys.settrace(None)
        for key in keys:  # the same task

            async def later() -> str:
                return "again"

            try:
                await cache.get(key, later)
            except Exception as exc:
                again.append(f"{type(exc).__name__} reading {key!r} again")

    def stop_in(stop: StopAt) -> None:
        again.clear()
        loop.run_until_complete(reads(stop))

    async def other() -> bool:
        try:
            async with asyncio.timeout(10.0):  # a guard, not a measure
                await cache.get_many(keys, batch)
        except TimeoutError:
            return False
        return True

    def check() -> str:
        wrong = []
        left = {key: flights._flights[key] for key in keys if key in flights._flights}
        if left:
            wrong.append(f"left claimed {sorted(left)}")
        wrong.extend(again)
        if first[0] and not loop.run_until_complete(other()):
            first[0] = False
            wrong.append("another task's read still waits")
        if left:
            flights.land(left, {}, Interrupted())
        loop.run_until_complete(cache.invalidate_many(keys))
        return "; ".join(wrong)

    try:
        stopped, failures = sweep(lambda: "a" in flights._flights, stop_in, check)
        loop.run_until_complete(cache.aclose())
    finally:
        loop.close()
    return stopped > 10, failures


# A stop as a call returns a coroutine, before it is awaited, leaves that coroutine unawaited.
@pytest.mark.filterwarnings("ignore:coroutine '.*' was never awaited:RuntimeWarning")
def test_an_asyncio_read_stopped_anywhere_after_its_claim_leaves_no_flight_claimed() -> None:
    """The asyncio face: ``get_many`` (the same steps as the threaded one's, the asyncio
    loader's ``load_batch``) and ``get`` (``AsyncTieredCache.get_after_l1``), stopped at each
    line from the claim (a signal's handler raising in the loop's thread; a cancellation
    comes only at an ``await``, and there is none between a claim and its ``try``)."""
    if compiled_core():
        on_the_pure_core(
            test_an_asyncio_read_stopped_anywhere_after_its_claim_leaves_no_flight_claimed
        )
        return
    outcomes = {read: _async_sweep(read) for read in ("get_many", "get")}
    assert outcomes == dict.fromkeys(outcomes, (True, []))
