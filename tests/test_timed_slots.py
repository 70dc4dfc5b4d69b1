"""TimedSlots' waits: a freed slot goes to a waiter that still has time to load.

The clock of the waits is a fake one (the real waits are only upper bounds), so the moment
a waiter's timeout runs out is the test's to choose, not the scheduler's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tiered_cache.metrics import CacheMetrics
from tiered_cache.protection import Protection
from tiered_cache.timed_slots import ServeStale, TimedSlots


class Clock:
    """A fake monotonic clock that tells when a given thread has read it ``n`` times."""

    def __init__(self) -> None:
        self.now = 0.0
        self._reads: dict[str, int] = {}
        self._changed = threading.Condition()

    def __call__(self) -> float:
        with self._changed:
            name = threading.current_thread().name
            self._reads[name] = self._reads.get(name, 0) + 1
            self._changed.notify_all()
        return self.now

    def wait_reads(self, name: str, n: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self._reads.get(name, 0) >= n, 10)


class Waiter(threading.Thread):
    """A thread asking ``slots`` for a slot within ``timeout``; ``outcome`` is what it got."""

    def __init__(self, slots: TimedSlots, name: str, timeout: float) -> None:
        super().__init__(name=name, daemon=True)
        self.slots, self.timeout = slots, timeout
        self.outcome: float | BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = self.slots.take(self.name, self.timeout, serve_stale=True)
        except BaseException as exc:
            self.outcome = exc


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> CacheMetrics:
    return CacheMetrics(["memory"])


@pytest.fixture
def slots(clock: Clock, metrics: CacheMetrics) -> Iterator[TimedSlots]:
    slots = TimedSlots(Protection(max_timed_loads=1, max_abandoned_loads=1), metrics, clock)
    yield slots
    slots.done()  # a waiter left asleep by a failing test wakes up and goes
    slots.done()


def waiting(slots: TimedSlots, clock: Clock, name: str, timeout: float) -> Waiter:
    """A waiter started and asleep in ``slots.take``: it read the clock (its start) under
    the lock, and the lock is free again only once it sleeps."""
    waiter = Waiter(slots, name, timeout)
    waiter.start()
    clock.wait_reads(name, 1)
    assert slots.try_take("probe", 1.0, 0.0, serve_stale=False) is False  # takes the lock
    return waiter


def test_a_slot_freed_as_a_waiters_timeout_runs_out_goes_to_the_next_waiter(
    slots: TimedSlots, clock: Clock, metrics: CacheMetrics
) -> None:
    """``a`` and ``b`` wait for the one slot; it is freed just as ``a``'s timeout runs out.
    ``a`` has no time left to load: it is refused (serves stale), and the slot goes to
    ``b``, which has 70 s left. done() woke one waiter (``a``, the first): ``a`` took the
    slot with no time left (its load abandoned at once), and ``b`` slept all its timeout
    while the slot was free."""
    assert slots.take("held", 30.0, serve_stale=False) == 0.0
    a = waiting(slots, clock, "a", 30.0)
    b = waiting(slots, clock, "b", 100.0)
    clock.now = 30.0  # a's timeout runs out
    slots.done()  # the held slot is free
    a.join(10)
    assert isinstance(a.outcome, ServeStale)
    b.join(10)
    assert b.outcome == 30.0  # b took the freed slot
    assert slots.running == 1
    counted = metrics.snapshot()
    assert (counted["loads_refused"], counted["soft_timeouts"]) == (1, 1)  # a's


def test_a_waiter_woken_without_a_slot_sleeps_only_the_time_it_has_left(
    clock: Clock, metrics: CacheMetrics
) -> None:
    """A hung load (``abandoned``) wakes every waiter, and this one finds no slot with 0.01 s
    of its 1000 s left: it sleeps at most those 0.01 s, and is refused once the clock says
    its timeout ran out (it slept for up to its whole timeout again, 1000 s, plus the time
    it had waited)."""
    slots = TimedSlots(Protection(max_timed_loads=1, max_abandoned_loads=5), metrics, clock)
    assert slots.take("held", 30.0, serve_stale=False) == 0.0
    waiter = waiting(slots, clock, "w", 1000.0)
    clock.now = 999.99
    slots.abandoned()  # the held load hangs: no slot, but a wakeup
    clock.wait_reads("w", 2)  # it woke, and went back to sleep on the time it has left
    clock.now = 1000.0
    waiter.join(10)
    alive = waiter.is_alive()
    slots.done()  # a waiter asleep for good wakes up and goes
    waiter.join(10)
    assert not alive, "the waiter slept past its timeout"
    assert isinstance(waiter.outcome, ServeStale)
