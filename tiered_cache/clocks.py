"""A clock that moves only when told: for simulations (trace replay) and tests."""

from __future__ import annotations

import threading


class ManualClock:
    """Callable like ``time.time``; :meth:`advance` and :meth:`set` move it. Thread-safe."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backward)."""
        if seconds < 0:
            raise ValueError("a clock does not go backward")
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        """Jump to ``now`` (not earlier than the current time)."""
        with self._lock:
            if now < self._now:
                raise ValueError("a clock does not go backward")
            self._now = now
