"""Test stand-ins for what a chain calls on a miss: a loader and a background runner."""

from __future__ import annotations

from collections.abc import Callable


class Background:
    """Collects background refreshes so a test decides when they run (pass it as the
    chain's ``background``)."""

    def __init__(self) -> None:
        self.tasks: list[Callable[[], None]] = []

    def __call__(self, task: Callable[[], None]) -> None:
        self.tasks.append(task)

    def run(self) -> int:
        """Run the tasks collected so far; how many there were."""
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task()
        return len(tasks)


class Loader:
    """Successive versions ``v1``, ``v2``...; fails while ``error`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return f"v{self.calls}"
