"""The timer that pays owed deletes without waiting for a call (tiered_cache.owed_timer),
without a tier: its tries, on a fake clock."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from types import FrameType

import pytest

from tiered_cache.breaker import CircuitBreaker
from tiered_cache.errors import TierUnavailable
from tiered_cache.metrics import CacheMetrics
from tiered_cache.owed import OwedDeletes
from tiered_cache.owed_timer import MIN_RETRY, RETRY, PaymentTask, PaymentThread, PaymentTimer
from tiered_cache.steps import run
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.interrupts import Interrupted
from tiered_cache.testing.polling import async_until, until

from .test_owed import Payee, announced


class Tries:
    """The timer's payment: each try recorded (the clock's time); ``failing`` raises."""

    def __init__(self, owed: OwedDeletes, clock: FakeClock) -> None:
        self.owed = owed
        self.clock = clock
        self.at: list[float] = []
        self.failing = True
        self.payee = Payee()

    def __call__(self) -> None:
        self.at.append(self.clock())
        if self.failing:
            raise TierUnavailable("down")
        run(self.owed.settling(self.payee, announced([])))


def rig(breaker: CircuitBreaker | None) -> tuple[FakeClock, OwedDeletes, Tries, PaymentThread]:
    clock = breaker.clock if breaker is not None else FakeClock()
    assert isinstance(clock, FakeClock)
    owed = OwedDeletes("redis", CacheMetrics(["redis"]))
    tries = Tries(owed, clock)
    return clock, owed, tries, PaymentThread(PaymentTimer(owed, breaker, clock), tries, "redis")


def down() -> None:
    raise OSError("down")


def owed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tiered-cache-owed:redis"]


def test_a_tier_with_no_breaker_is_tried_at_once_then_every_retry_seconds() -> None:
    before = set(owed_threads())
    clock, owed, tries, thread = rig(None)
    start = clock()
    owed.owe(["k"])
    thread.arm()
    until(lambda: len(tries.at) == 1, "the first try")
    tries.failing = False
    clock.advance(RETRY)
    until(lambda: not owed.due, "the second try paid")
    assert tries.at == [start, start + RETRY]
    assert tries.payee.made == [("keys", ("k",))]
    until(lambda: not set(owed_threads()) - before, "the run ended: nothing owed")
    owed.owe(["j"])  # a later debt starts a run again
    thread.arm()
    until(lambda: not owed.due, "the later debt paid")
    thread.stop()
    assert not set(owed_threads()) - before


def test_a_breaker_of_a_short_cool_down_is_not_tried_in_a_tight_loop() -> None:
    """A ``cool_down`` shorter than ``MIN_RETRY`` (a millisecond; 0 is refused, as in a
    config file) lets a trial through almost at once: the timer still waits ``MIN_RETRY``
    after a failed try."""
    breaker = CircuitBreaker("redis", failure_threshold=1, cool_down=0.001, clock=FakeClock())
    clock, owed, tries, thread = rig(breaker)
    with pytest.raises(TierUnavailable):
        breaker.call(down)  # the circuit opens
    clock.advance(0.001)  # its cool-down over: the first try is made at once
    start = clock()
    owed.owe(["k"])
    thread.arm()
    until(lambda: len(tries.at) >= 1, "the first try")
    tries.failing = False
    clock.advance(MIN_RETRY)
    until(lambda: not owed.due, "the second try paid")
    assert tries.at == [start, start + MIN_RETRY]
    thread.stop()


def test_a_debt_armed_as_ctrl_c_lands_in_thread_start_is_paid_by_the_next_run() -> None:
    """Ctrl-C (or a SIGTERM handler's ``sys.exit()``) lands as ``Thread.start`` begins, in the
    ``arm()`` of a write's failed delete on the main thread: no thread was launched. The run
    it began is over; the next debt starts one. Seen failing: the run stayed begun with no
    thread to end it, so no debt of the process was ever paid by the timer again."""
    before = set(owed_threads())
    _, owed, tries, thread = rig(None)
    tries.failing = False

    def ctrl_c_in_start(frame: FrameType, event: str, arg: object) -> None:
        starting = frame.f_code is threading.Thread.start.__code__
        if (
            event == "call"
            and starting
            and frame.f_locals["self"].name == "tiered-cache-owed:redis"
        ):
            sys.settrace(None)
            raise Interrupted

    owed.owe(["k"])
    sys.settrace(ctrl_c_in_start)
    try:
        with pytest.raises(Interrupted):
            thread.arm()
    finally:
        sys.settrace(None)
    assert not set(owed_threads()) - before  # nothing launched
    owed.owe(["j"])  # the next debt
    thread.arm()
    until(lambda: not owed.due, "the timer's payment after the interrupted arm")
    assert tries.payee.made == [("keys", ("k", "j"))]
    thread.stop()
    assert not set(owed_threads()) - before


class SeenClock(FakeClock):
    """A fake clock that records each read of a run's thread made after ``returned`` was
    set."""

    def __init__(self, returned: threading.Event) -> None:
        super().__init__()
        self.returned = returned
        self.late: list[str] = []

    def __call__(self) -> float:
        here = threading.current_thread().name
        if here.startswith("tiered-cache-owed") and self.returned.is_set():
            self.late.append(here)
        return super().__call__()


def test_a_run_armed_as_the_chain_closes_has_ended_once_stop_returned() -> None:
    """A write's failed delete arms the timer as the chain closes: ``arm()`` has begun its
    run, not started its thread yet, when ``stop()`` comes (held here until ``stop()``
    returns, or 2 s). Seen failing: ``stop()`` returned first, and the run's thread began
    afterwards, the chain closed (``close()`` said no thread of it was left)."""
    returned = threading.Event()
    clock = SeenClock(returned)
    owed = OwedDeletes("redis", CacheMetrics(["redis"]))
    tries = Tries(owed, clock)
    thread = PaymentThread(PaymentTimer(owed, None, clock), tries, "redis")
    paused = threading.Event()

    def held_after_begin(frame: FrameType, event: str, arg: object) -> object:
        if frame.f_code is not PaymentThread.arm.__code__:
            return None
        if event == "line" and frame.f_locals.get("number") is not None:
            sys.settrace(None)
            paused.set()
            returned.wait(2)  # the close's stop() comes meanwhile
            return None
        return held_after_begin

    def write() -> None:
        owed.owe(["k"])
        sys.settrace(held_after_begin)
        try:
            thread.arm()
        finally:
            sys.settrace(None)

    writer = threading.Thread(target=write)
    writer.start()
    assert paused.wait(10), "arm() never began a run"
    thread.stop()
    returned.set()
    writer.join()
    for left in [t for t in threading.enumerate() if t.name == "tiered-cache-owed:redis"]:
        left.join()
    assert clock.late == []


def test_a_loop_closed_by_hand_with_a_run_waiting_says_what_it_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A debt armed on a loop closed by hand (no ``shutdown_asyncgens``): the next loop's
    arming finds the run left behind, and the one warning names the owed deletes, not the
    connections other parts of a loop leave."""
    clock = FakeClock()
    owed = OwedDeletes("redis", CacheMetrics(["redis"]))
    tries = Tries(owed, clock)

    async def pay() -> None:
        tries()

    task = PaymentTask(PaymentTimer(owed, None, clock), pay, "redis")
    owed.owe(["k"])

    async def arm_and_let_it_try() -> None:
        task.arm()
        await async_until(lambda: len(tries.at) == 1, "the first try")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(arm_and_let_it_try())
    for left in asyncio.all_tasks(loop):  # its run, waiting for the next try: ended by hand
        left.cancel()
        loop.run_until_complete(asyncio.wait({left}))
    loop.close()

    async def arm_again() -> None:
        task.arm()
        await task.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(arm_again())
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "event loop" in r.getMessage()
    ]  # (the stop's last try fails too, and warns of what it gives up)
    assert len(warned) == 1
    assert "owed deletes of redis" in warned[0]
    assert "connections" not in warned[0]
