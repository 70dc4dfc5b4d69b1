"""A clock that moves only when told: for simulations (trace replay) and tests.

A timer waiting for a time of such a clock (the owed deletes' payment,
:mod:`tiered_cache.owed_timer`) cannot count real seconds: nothing happens until the clock is
moved. It asks to be woken when the clock moves (:meth:`ManualClock.on_move`) and looks again;
:func:`seconds_until` is what any other clock's waiter sleeps.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable


class ManualClock:
    """Callable like ``time.time``; :meth:`advance` and :meth:`set` move it. Thread-safe."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        #: Called after each move (:meth:`on_move`), by number.
        self._moves: dict[int, Callable[[], object]] = {}
        self._numbers = itertools.count()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backward)."""
        if seconds < 0:
            raise ValueError("a clock does not go backward")
        with self._lock:
            self._now += seconds
        self._moved()

    def set(self, now: float) -> None:
        """Jump to ``now`` (not earlier than the current time)."""
        with self._lock:
            if now < self._now:
                raise ValueError("a clock does not go backward")
            self._now = now
        self._moved()

    def on_move(self, wake: Callable[[], object]) -> Callable[[], None]:
        """Call ``wake`` after each move of the clock (on the thread moving it, outside the
        clock's lock), until the function returned is called."""
        number = next(self._numbers)
        self._moves[number] = wake

        def stop_waking() -> None:
            self._moves.pop(number, None)

        return stop_waking

    def _moved(self) -> None:
        for wake in list(self._moves.values()):
            wake()


def seconds_until(clock: Callable[[], float], when: float) -> float | None:
    """How long a waiter for ``when`` of ``clock`` sleeps before it looks again: the seconds
    left for a clock that moves with time, None (until woken) for a :class:`ManualClock`,
    which its waiters ask to wake them (:meth:`ManualClock.on_move`)."""
    if isinstance(clock, ManualClock):
        return None
    return max(0.0, when - clock())


def on_move(clock: Callable[[], float], wake: Callable[[], object]) -> Callable[[], None]:
    """:meth:`ManualClock.on_move` for a clock that moves only when told; for any other
    clock, nothing (its waiters sleep :func:`seconds_until`)."""
    if isinstance(clock, ManualClock):
        return clock.on_move(wake)
    return _nothing


def _nothing() -> None:
    return None
