"""TimedSlots' rule at its exact boundaries, and what a refusal says and counts.

Exactly ``max_timed_loads`` running, exactly ``max_abandoned_loads`` hung, a wait that used
exactly its timeout; the refusal's message names the key, the count and the setting it hit,
and (for want of a running slot) the timeout. Time is a fake clock's: the real waits are only
upper bounds, so what a waiter sees is the test's to choose.
"""

from __future__ import annotations

import threading

import pytest

from tiered_cache import LoadTimeout
from tiered_cache.metrics import CacheMetrics
from tiered_cache.protection import Protection
from tiered_cache.timed_slots import ServeStale, TimedSlots, after_wait


class Steps:
    """A fake monotonic clock that moves ``step`` seconds at every read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


def slots_of(running: int, hung: int, clock: Steps | None = None) -> TimedSlots:
    metrics = CacheMetrics(["memory"])
    protection = Protection(max_timed_loads=running, max_abandoned_loads=hung)
    return TimedSlots(protection, metrics, clock or Steps(0.0))


def counts(slots: TimedSlots) -> tuple[int, int, int]:
    counted = slots._metrics.snapshot()
    return counted["loads_refused"], counted["soft_timeouts"], counted["hard_timeouts"]


def hang(slots: TimedSlots, n: int) -> None:
    """``n`` timed loads start, and their callers stop waiting for them."""
    for i in range(n):
        assert slots.try_take(f"hung{i}", 1.0, 0.0, serve_stale=False) is True
        slots.abandoned()


def test_the_timeout_left_after_a_wait() -> None:
    assert after_wait(2.0, 5.0, 0.5) == (1.5, 5.0)  # the soft timeout is the one waited on
    assert after_wait(2.0, 5.0, 3.0) == (0.0, 5.0)  # none left, never less
    assert after_wait(None, 5.0, 1.5) == (None, 3.5)
    assert after_wait(None, 5.0, 6.0) == (None, 0.0)
    assert after_wait(None, None, 1.0) == (None, None)


def test_exactly_max_abandoned_loads_hung_refuse_a_load_at_once() -> None:
    slots = slots_of(running=10, hung=3)
    hang(slots, 2)
    assert slots.crowded() is False
    assert slots.try_take("two hang", 1.0, 0.0, serve_stale=False) is True  # 2 of 3: loads
    slots.abandoned()
    assert slots.hung == 3
    assert slots.crowded() is True  # 3 of 10 running, but 3 of 3 hang
    with pytest.raises(LoadTimeout) as refused:
        slots.try_take("k", 2.5, 0.0, serve_stale=True)  # refused, not a stale value
    assert str(refused.value) == (
        "3 loads are still running after their callers stopped waiting "
        "(max_abandoned_loads); 'k' was not loaded"
    )
    with pytest.raises(LoadTimeout, match=r"^3 loads .*\(max_abandoned_loads\); 'j' was"):
        slots.take("j", 2.5, serve_stale=False)
    assert slots.running == 3  # neither started a load
    assert counts(slots) == (2, 0, 0)  # refused, neither timed out


def test_a_hung_load_that_ends_makes_room_for_one_more() -> None:
    slots = slots_of(running=10, hung=3)
    hang(slots, 3)
    slots.abandoned_done()  # one of the three ends
    slots.done()
    assert slots.hung == 2
    hang(slots, 1)  # room for exactly one more
    with pytest.raises(LoadTimeout, match=r"^3 loads .*max_abandoned_loads"):
        slots.try_take("k", 1.0, 0.0, serve_stale=False)


def test_exactly_max_timed_loads_running_leave_a_load_waiting() -> None:
    slots = slots_of(running=2, hung=5)
    assert slots.try_take("a", 1.0, 0.0, serve_stale=False) is True
    assert slots.crowded() is False
    assert slots.try_take("b", 1.0, 0.0, serve_stale=False) is True
    assert slots.crowded() is True  # 2 of 2 running, none hung
    assert slots.try_take("c", 1.0, 0.5, serve_stale=False) is False  # waits on
    with pytest.raises(LoadTimeout) as refused:
        slots.try_take("c", 2.5, 2.5, serve_stale=False)  # its whole timeout waited
    assert str(refused.value) == (
        "2 loads were running (max_timed_loads) for all of the timeout of 2.5s; 'c' was not loaded"
    )
    with pytest.raises(ServeStale):
        slots.try_take("d", 2.5, 2.5, serve_stale=True)
    assert slots.running == 2
    assert counts(slots) == (2, 1, 1)


def test_a_wait_that_used_exactly_its_timeout_is_refused_even_with_a_slot_free() -> None:
    """It has no time left to load: the free slot is left to a caller that has."""
    slots = slots_of(running=2, hung=5)
    with pytest.raises(LoadTimeout, match=r"timeout of 1.0s; 'k' was not loaded"):
        slots.try_take("k", 1.0, 1.0, serve_stale=False)
    assert slots.running == 0
    assert slots.try_take("k", 1.0, 0.0, serve_stale=False) is True  # none waited: loads


def test_a_claim_gives_its_slot_back_once() -> None:
    slots = slots_of(running=1, hung=1)
    claim = slots.claim()
    assert slots.try_take("k", 1.0, 0.0, serve_stale=False, claim=claim) is True
    assert slots.running == 1
    claim.give_back()
    claim.give_back()  # a no-op: given back already
    assert slots.running == 0
    assert slots.try_take("j", 1.0, 0.0, serve_stale=False) is True
    assert slots.try_take("i", 1.0, 0.0, serve_stale=False) is False  # still 1 slot, not 2


def test_take_waits_its_timeout_for_a_slot_then_is_refused() -> None:
    """Nothing frees the one slot: the waiter wakes when its timeout runs out (the clock
    moves 0.01 s per read: the wait took exactly the timeout), and is refused."""
    slots = slots_of(running=1, hung=1, clock=Steps(0.01))
    assert slots.take("held", 0.01, serve_stale=False) == 0.0
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            slots.take("k", 0.01, serve_stale=False)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(10)
    alive = waiter.is_alive()
    slots.done()  # a waiter asleep for good wakes up and goes
    waiter.join(10)
    assert not alive, "the waiter slept past its timeout"
    assert len(outcome) == 1 and isinstance(outcome[0], LoadTimeout)
    assert str(outcome[0]) == (
        "1 loads were running (max_timed_loads) for all of the timeout of 0.01s; 'k' was not loaded"
    )
    assert counts(slots) == (1, 0, 1)
