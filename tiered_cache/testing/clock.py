"""A clock that only moves when a test says so."""

from __future__ import annotations

from ..clocks import ManualClock


class FakeClock(ManualClock):
    """Callable like ``time.time``; :meth:`advance` moves it forward. Thread-safe."""


class RecordingSleep:
    """An injected ``sleep`` that records what it was asked to wait and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
