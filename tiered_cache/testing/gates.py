"""Gates that hold a thread at a chosen instant inside the chain, for race and fork tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ..memory import MemoryTier


class Held:
    """A one-shot gate: once :attr:`armed`, the next :meth:`hold` sets :attr:`inside` and
    waits until :attr:`go` (for at most ``timeout`` seconds: a guard, not a measure)."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.armed = False
        self.inside = threading.Event()
        self.go = threading.Event()
        self.timeout = timeout

    def hold(self) -> None:
        """Wait here if armed (disarming the gate: the calls after it pass)."""
        if self.armed:
            self.armed = False
            self.inside.set()
            assert self.go.wait(self.timeout), "the gate was never opened"


class HeldDrop(MemoryTier):
    """A memory tier whose drops (``delete_many``: an invalidation's; ``clear``) wait at
    ``held`` before they drop anything."""

    def __init__(self, held: Held, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held = held

    def delete_many(self, keys: Sequence[str]) -> None:
        self.held.hold()
        super().delete_many(keys)

    def clear(self) -> None:
        self.held.hold()
        super().clear()
