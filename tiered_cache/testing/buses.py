"""A fault injector around the in-process bus: cut and restore it as a transport would be."""

from __future__ import annotations

from ..bus import Invalidation, LocalBus

__all__ = ["CuttableBus"]


class CuttableBus(LocalBus):
    """A :class:`~tiered_cache.bus.LocalBus` that can be cut and restored (its listeners are
    told, as a transport tells them), and whose publishing can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.heard: list[Invalidation] = []
        self.attempts = 0

    def publish(self, message: Invalidation) -> None:
        self.attempts += 1
        if self.failing:
            raise ConnectionError("bus unreachable")
        self.heard.append(message)
        super().publish(message)

    def cut(self) -> None:
        """Tell every listener the connection is lost."""
        for listener in list(self._listeners):
            listener.on_disconnect()

    def restore(self) -> None:
        """Tell every listener the connection is back (what was sent meanwhile is lost)."""
        for listener in list(self._listeners):
            listener.on_reconnect()
