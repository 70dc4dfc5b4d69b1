"""A fault injector around the in-process bus: cut and restore it as a transport would be."""

from __future__ import annotations

from ..bus import Invalidation, LocalBus

__all__ = ["CuttableBus"]


class CuttableBus(LocalBus):
    """A :class:`~tiered_cache.bus.LocalBus` that can be cut and restored (its listeners are
    told, as a transport tells them), whose publishing can fail, and whose messages can be
    held back and delivered later."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.heard: list[Invalidation] = []
        self.attempts = 0
        #: Published messages not delivered yet (see :meth:`hold`), or None: delivered at once.
        self.held: list[Invalidation] | None = None

    def publish(self, message: Invalidation) -> None:
        self.attempts += 1
        if self.failing:
            raise ConnectionError("bus unreachable")
        self.heard.append(message)
        if self.held is not None:
            self.held.append(message)
            return
        super().publish(message)

    def hold(self) -> None:
        """Keep what is published from the listeners until :meth:`deliver` (a slow network)."""
        self.held = []

    def deliver(self) -> None:
        """Deliver what was held, in order, and deliver at once from now on."""
        held, self.held = self.held or [], None
        for message in held:
            super().publish(message)

    def cut(self) -> None:
        """Tell every listener the connection is lost."""
        for listener in list(self._listeners):
            listener.on_disconnect()

    def restore(self) -> None:
        """Tell every listener the connection is back (what was sent meanwhile is lost)."""
        for listener in list(self._listeners):
            listener.on_reconnect()
