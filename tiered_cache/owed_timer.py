"""Owed deletes paid when the tier lets calls through again, without waiting for a call.

A delete a shared tier owes (:mod:`tiered_cache.owed`) is paid before the owing chain's next
call to the tier. A chain whose memory answers every read after its breaker's cool-down makes
no such call: its debt stayed unpaid, and every other process, told of the write by the bus,
read Redis's old copy until its ``ttl`` (``tools/two_writers.py``: 7 of 12 rounds with writes
ending 2.6 s before the cool-down did). So a debt arms a timer: at the end of the tier's
cool-down (when its :class:`~tiered_cache.breaker.CircuitBreaker` lets a trial through), it
pays through the accessor's own payment, the one every call makes first (so still before any
other call to the tier, and announced again by the chain); when that fails (the tier still
down: its breaker opens again), it tries at the next cool-down's end, until nothing is owed or
the chain closes. A tier with no breaker is tried at once, then every :data:`RETRY` seconds.

:class:`PaymentTimer` is the rule, written once as steps (:mod:`tiered_cache.steps`); two
drivers run it:

- :class:`PaymentThread` for the threaded chain: a daemon thread per run (a chain never closed
  does not hold the interpreter's exit), started when a debt is recorded and ended once
  nothing is owed or by the chain's ``close()``, which lets a payment in flight end (bounded
  by the tier's timeouts) and leaves no thread. A forked child starts its own when it
  inherited a debt.
- :class:`PaymentTask` for the asyncio chain: a task on the loop the debt was recorded on (the
  tier's calls belong to it), ended likewise by ``aclose()``, and by its loop's end (its
  ``shutdown_asyncgens``, :mod:`tiered_cache.loop_end`). A task left on a loop closed by hand
  is forgotten, one left on a loop left open (run by hand, never closed) cancelled, to end when
  that loop runs again; the debt is then paid by the chain's next call to the tier, or, that call's
  payment refused, by a task of its loop, which it starts; or the timer is armed again by the
  next debt (a forked asyncio child, which has no loop yet, the same).

A driver about to lose its means of paying later makes one last try (:meth:`PaymentTimer.last`:
at once, the breaker's cool-down cut short, bounded by the tier's timeouts): the chain's
close, which then gives up what it could not pay (logged and counted), and the asyncio
task's cancellation by the sweep at the end of ``asyncio.run`` (what it could not pay stays
owed: the next loop's first call to the tier pays it). Both come once per chain or per loop,
so cutting the cool-down short cannot hammer a tier that is down.

Time is the breaker's clock (the chain's for a tier with no breaker): a clock that moves only
when told (:class:`~tiered_cache.clocks.ManualClock`, the tests' ``FakeClock``) wakes the
timer when it moves; any other is waited for in real seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .breaker import CircuitBreaker
from .clocks import on_move, seconds_until
from .forking import restart_after_fork, start_when_restarted
from .loop_end import LoopEnd
from .loops import ends_within, stalled
from .owed import OwedDeletes
from .steps import Steps, arun, run

__all__ = ["MIN_RETRY", "RETRY", "PaymentTask", "PaymentThread", "PaymentTimer"]

log = logging.getLogger(__name__)

#: What the warning says when the timer moves off a loop left open (tiered_cache.loop_end).
LEFT_OPEN = (
    "the timer's task on that loop is cancelled (it ends when that loop runs again), and this "
    "loop's timer pays what is owed"
)
#: Seconds (of the chain's clock) between tries of a tier that has no breaker.
RETRY = 5.0
#: The shortest wait after a failed try (a breaker whose ``cool_down`` is 0 lets a trial
#: through at once: tried in a tight loop, a tier that is down would cost a core).
MIN_RETRY = 0.05

Clock = Callable[[], float]
#: ``wait(clock, when)``: returns once ``clock()`` reached ``when`` or the timer was stopped.
Wait = Callable[[Clock, float], Any]


class PaymentTimer:
    """When one tier's debt is paid, and whether a run of its timer goes on (see the
    module's notes). Thread-safe: debts are recorded on any thread.

    Args:
        owed: the tier's record of owed deletes.
        breaker: the tier's breaker (when it lets a trial through), or None.
        clock: the chain's clock (a tier with no breaker: :data:`RETRY` seconds of it).
    """

    def __init__(self, owed: OwedDeletes, breaker: CircuitBreaker | None, clock: Clock) -> None:
        self._owed = owed
        self._breaker = breaker
        self._clock = clock
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        #: The number of the run going on; 0: none.
        self._running = 0
        #: Closed: no run starts, the one going on ends at its next look.
        self.stopped = False
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """The parent's run is not in the child (its driver starts another)."""
        self._lock = threading.Lock()
        self._running = 0

    def begin(self) -> int | None:
        """The number of a run to start; None if one runs, the timer is stopped or nothing is
        owed."""
        with self._lock:
            if self._running or self.stopped or not self._owed.due:
                return None
            self._running = number = next(self._numbers)
            return number

    def end(self, number: int) -> None:
        """Run ``number`` is over (or never started)."""
        with self._lock:
            if self._running == number:
                self._running = 0

    def stop(self) -> None:
        """No run starts from now on (the chain closes)."""
        with self._lock:
            self.stopped = True

    def paying(self, number: int, wait: Wait, pay: Callable[[], Any]) -> Steps[None]:
        """Run ``number``: wait for the next trial, pay, again while something is owed.
        ``pay`` is the accessor's payment (raises while it cannot be made)."""
        try:
            clock, when = self._next(failed=False)
            while self._goes_on(number):
                yield wait, (clock, when)
                if not self._goes_on(number):
                    return
                try:
                    yield pay, ()
                except Exception as exc:
                    log.debug("owed deletes not paid yet (%s: %s)", type(exc).__name__, exc)
                    clock, when = self._next(failed=True)
                else:
                    clock, when = self._next(failed=False)  # owed again meanwhile: at once
        finally:
            self.end(number)

    def last(self, pay: Callable[[], Any]) -> Steps[bool]:
        """The last try of a driver about to lose its means of paying later (its runs
        over): the chain closes, or the asyncio loop of its task ends. What is owed is paid
        now, once, the breaker's cool-down cut short (it is the breaker's probe: no later try
        of this driver would come at its end), bounded by the tier's timeouts. True once
        nothing is owed."""
        if not self._owed.due:
            return True
        if self._breaker is not None:
            self._breaker.end_cool_down()
        try:
            yield pay, ()
        except Exception as exc:
            log.debug("owed deletes not paid at the last try (%s: %s)", type(exc).__name__, exc)
        return not self._owed.due

    def closing(self, pay: Callable[[], Any]) -> Steps[None]:
        """The chain closes (after :meth:`stop`, its run over): the last try, and what it
        could not pay, or is owed later, is given up (logged and counted:
        ``deletes_owed_dropped``)."""
        yield from self.last(pay)
        self._owed.give_up()

    def _goes_on(self, number: int) -> bool:
        """Whether run ``number`` goes on; it ends (in the same step) once nothing is owed:
        a debt recorded after this look finds no run going on, and starts one."""
        with self._lock:
            if self._running == number and not self.stopped and self._owed.due:
                return True
            if self._running == number:
                self._running = 0
            return False

    def _next(self, failed: bool) -> tuple[Clock, float]:
        """The clock and time of the next try: the end of the breaker's cool-down (a failed
        try: the next one's, a cool-down from now at the soonest when it is not open again);
        at once while it lets calls through."""
        breaker = self._breaker
        if breaker is None:
            now = self._clock()
            return self._clock, now + RETRY if failed else now
        clock = breaker.clock
        now = clock()
        trial = breaker.trial_at()
        if not failed:
            return clock, now if trial is None else trial
        if trial is None or trial <= now:
            # Refused beside another call's probe or payment, or failed below the breaker's
            # threshold: that call's outcome decides; look again after a cool-down.
            trial = now + breaker.cool_down
        return clock, max(trial, now + MIN_RETRY)


class PaymentThread:
    """The threaded chain's driver of a :class:`PaymentTimer`: a daemon thread per run.

    Args:
        timer: the rule.
        pay: the accessor's payment (``TierAccessor.settle``).
        name: the tier's name (the thread's is ``tiered-cache-owed:<name>``).
    """

    def __init__(self, timer: PaymentTimer, pay: Callable[[], None], name: str) -> None:
        self._timer = timer
        self._pay = pay
        self._name = name
        self._woken = threading.Condition()
        #: Held by arm() from a run's begin until its thread started (or never will): stop()
        #: takes it before it looks at the threads, so it joins the thread of a run begun
        #: before the stop. Reentrant: a signal handler's write on the arming thread arms too
        #: (and finds the run begun).
        self._starting = threading.RLock()
        #: The threads of the runs, the last one's still ending (and the one going on).
        self._threads: list[threading.Thread] = []
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """The parent's threads are not in the child: a debt inherited (a payment the parent
        was making included: the record keeps it) is paid by the child's own thread."""
        self._woken = threading.Condition()
        self._starting = threading.RLock()
        self._threads = []
        start_when_restarted(self.arm)  # nothing owed: no run starts

    def arm(self) -> None:
        """A debt was recorded: start a run unless one goes on."""
        with self._starting:
            number = self._timer.begin()
            if number is None:
                return
            self._start(number)

    def _start(self, number: int) -> None:
        steps = self._timer.paying(number, self._wait, self._pay)
        thread = threading.Thread(
            target=run, args=(steps,), name=f"tiered-cache-owed:{self._name}", daemon=True
        )
        self._threads = [*(t for t in self._threads if t.is_alive()), thread]
        try:
            thread.start()
        except RuntimeError:  # no thread can start (the interpreter is exiting)
            self._timer.end(number)
        except BaseException:
            # Interrupted in Thread.start (Ctrl-C, a SIGTERM handler's sys.exit() on the
            # thread of a write): a thread not running yet may never have been launched, and
            # its run, left begun, would refuse every later one. Over, then: launched after
            # all, it ends at its first look; the next debt starts a run.
            if thread.ident is None:
                self._timer.end(number)
            raise

    def stop(self) -> None:
        """No more runs; the one going on ends (a payment in flight first); then the last
        try, on this thread (:meth:`PaymentTimer.closing`), before this returns."""
        self._timer.stop()
        self._wake()
        with self._starting:  # a run begun before the stop: its thread started
            threads = self._threads
        here = threading.current_thread()
        for thread in threads:
            if thread is not here and thread.ident is not None:
                thread.join()
        run(self._timer.closing(self._pay))

    def _wake(self) -> None:
        with self._woken:
            self._woken.notify_all()

    def _wait(self, clock: Clock, when: float) -> None:
        with self._woken:
            stop_waking = on_move(clock, self._wake)
            try:
                while not self._timer.stopped and clock() < when:
                    self._woken.wait(seconds_until(clock, when))
            finally:
                stop_waking()


class PaymentTask:
    """The asyncio chain's driver of a :class:`PaymentTimer`: a task per run, on the loop the
    debt was recorded on.

    Args:
        timer: the rule.
        pay: the accessor's payment (a coroutine function: ``AsyncTierAccessor``'s).
        name: the tier's name (the task's is ``tiered-cache-owed:<name>``).
    """

    def __init__(self, timer: PaymentTimer, pay: Callable[[], Awaitable[None]], name: str) -> None:
        self._timer = timer
        self._pay = pay
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._number = 0
        #: What wakes the run's wait, from any thread.
        self._wake: Callable[[], None] = _nothing
        #: Stops the run when its loop ends. A write the end of ``asyncio.run`` cancelled is
        #: finished after that sweep (:mod:`tiered_cache.write_tasks`); its delete failing,
        #: the run it armed was a task the sweep never saw, destroyed pending as the loop
        #: closed. (A loop closed by hand: the run is over, :meth:`arm` sees it stalled.)
        self._loop_end = LoopEnd(
            f"owed deletes of {name}",
            self._at_loop_end,
            self._drop,
            left="the timer's task on that loop is dropped (it never runs again), and what is "
            "still owed is paid on this loop",
            leave=self._leave,
            left_open=LEFT_OPEN,
        )
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """The parent's task belongs to a loop that never runs in the child."""
        self._task = None
        self._wake = _nothing
        self._loop_end.stop()

    def arm(self) -> None:
        """A debt was recorded (on the running loop): start a run unless one goes on. A run
        left on a loop that ended (its task never to run again) is over."""
        if self._timer.stopped:
            return  # the chain closes: its last try failed (it must not watch this loop)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._task
        if task is not None and (task.done() or stalled(task)):
            self._timer.end(self._number)
        self._loop_end.here()
        if self._loop_end.ended_here():
            return  # past the loop's end: its next loop's first call to the tier pays
        number = self._timer.begin()
        if number is None:
            return
        self._number = number
        self._task = loop.create_task(self._run(number), name=f"tiered-cache-owed:{self._name}")

    def _drop(self) -> None:
        """The run's loop was closed by hand (:mod:`tiered_cache.loop_end`): its task never
        runs again (:meth:`arm` sees it stalled, ends its run and starts one on this loop).
        Collected pending, asyncio logged it as an error (``Task was destroyed but it is
        pending!``; at the process's exit, a reference cycle keeping it) about a run whose
        debts this loop pays: told not to, as in :meth:`_leave`."""
        task = self._task
        if task is not None and task.get_loop().is_closed():
            task._log_destroy_pending = False  # type: ignore[attr-defined]

    def _leave(self, _: asyncio.AbstractEventLoop) -> None:
        """The run's loop is left open, not running, and a debt is recorded on another
        (:mod:`tiered_cache.loop_end`): its run is over (:meth:`arm` saw it stalled) and its
        task is cancelled, to end when that loop runs again (its ``shutdown_asyncgens``
        included). Left waiting, nothing woke it there (its wake is the later run's): it was
        destroyed pending as that loop closed.

        That loop closed by hand without running again (a warm-up loop closed at exit), the
        cancellation never runs, and asyncio logged the task collected pending as an error
        (``Task was destroyed but it is pending!``) about a run whose debts this loop pays:
        the task is told not to, with asyncio's own flag (``gather`` sets it on its
        children; asyncio offers no public way)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            task._log_destroy_pending = False  # type: ignore[attr-defined]

    async def _run(self, number: int) -> None:
        try:
            await arun(self._timer.paying(number, self._wait, self._pay))
        except asyncio.CancelledError:
            # A sweep of every task: the end of asyncio.run, the loop still running. The
            # next loop may never call the tier (its memory answering every read, or no next
            # loop): the last try, begun after the sweep, which does not cancel it again (as
            # a write it stopped is finished: tiered_cache.write_tasks); bounded by the
            # tier's timeouts. Not at the loop's end itself (_at_loop_end): the tier lets go
            # of its connections then, and a call would open one left to the next loop.
            # Its cancellation taken first: the tier's own timeouts (asyncio.timeout) count
            # cancellations.
            # Not a run left on a loop left open (:meth:`_leave`): a later loop's run pays.
            task = asyncio.current_task()
            if (
                task is not None
                and task is self._task
                and not self._timer.stopped
                and not self._loop_end.ended_here()
            ):
                task.uncancel()
                await arun(self._timer.last(self._pay))
            raise

    async def stop(self) -> None:
        """No more runs; the one going on ends (a payment in flight first), unless its loop
        ended (it never runs again); then the last try, on this loop
        (:meth:`PaymentTimer.closing`), before this returns."""
        self._timer.stop()
        self._wake()
        self._loop_end.stop()
        task = self._task
        if task is not None and not stalled(task):
            await ends_within(task, None)
        await arun(self._timer.closing(self._pay))

    async def _at_loop_end(self) -> None:
        """The run's loop ends (its ``shutdown_asyncgens``): the run ends there (a payment
        in flight stopped: what it was paying stays owed)."""
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.wait({task})

    async def _wait(self, clock: Clock, when: float) -> None:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(woken.set)

        self._wake = wake
        stop_waking = on_move(clock, wake)
        try:
            while not self._timer.stopped and clock() < when:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds_until(clock, when)):
                        await woken.wait()
                woken.clear()
        finally:
            stop_waking()


def _nothing() -> None:
    return None
