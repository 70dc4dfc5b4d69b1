"""A threaded chain's close caught on its way, for tests of a close interrupted or beside
another: a background refresh held in its loader, which the close waits for (the loader's
pool shuts down first), until the test lets it go."""

from __future__ import annotations

import threading

from ..chain import TieredCache
from .clock import FakeClock
from .frames import current_frames
from .polling import until
from .sources import DictSource


class ClosesCounted(DictSource):
    """A source holding ``a = "old"`` that counts its closes."""

    def __init__(self) -> None:
        super().__init__({"a": "old"})
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


class HeldRefresh:
    """A refresh of ``a`` held in its loader until :attr:`go` is set, in ``cache`` (built
    with ``clock``, ``ttl=1``, serving stale values while they refresh: the defaults)."""

    def __init__(self, cache: TieredCache, clock: FakeClock) -> None:
        self.cache = cache
        self.inside, self.go = threading.Event(), threading.Event()
        assert cache.get("a") == "old"
        clock.advance(2.0)  # stale: served, and refreshed in the background
        assert cache.get("a", self._held) == "old"
        self.inside.wait()

    def _held(self) -> str:
        self.inside.set()
        self.go.wait()
        return "new"


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """``thread`` is blocked in one of ``threading``'s waits, under a call of ``function``."""
    frame = current_frames().get(thread.ident or 0)
    if frame is None or frame.f_code.co_filename != threading.__file__:
        return False
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def until_the_close_waits() -> None:
    """Until some thread's close waits for the held refresh (the pool's shutdown)."""
    until(
        lambda: any(waiting_in(thread, "shutdown") for thread in threading.enumerate()),
        "a close waiting for the held refresh",
    )
