"""A threaded chain's close caught on its way, for tests of a close interrupted or beside
another: a background refresh held in its loader, which the close waits for (the loader's
pool shuts down first), until the test lets it go."""

from __future__ import annotations

import textwrap
import threading

from ..chain import TieredCache
from .clock import FakeClock
from .frames import current_frames
from .interpreters import run_python
from .polling import until
from .sources import DictSource


class ClosesCounted(DictSource):
    """A source holding ``a = "old"`` that counts its closes."""

    def __init__(self) -> None:
        super().__init__({"a": "old"})
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


#: A service, the head of a child interpreter's script: ``cache``, a chain whose source says
#: on stdout when it is closed; the test's lines follow (an interrupted close).
SERVICE_HEAD = """
import sys, threading
from tiered_cache import MemoryTier, TieredCache
from tiered_cache.memory import LruPolicy
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import ClosesCounted

class Reported(ClosesCounted):
    def close(self):
        super().close()
        print("source closed", flush=True)

clock = FakeClock(1000.0)
cache = TieredCache([MemoryTier(policy=LruPolicy(100), clock=clock)], Reported(), clock=clock)
"""


def service_ended(script: str) -> list[str]:
    """Run the service ``script`` (:data:`SERVICE_HEAD` and the test's lines) in a child
    interpreter: what it said it closed. It must end by a ``KeyboardInterrupt``."""
    ended = run_python(textwrap.dedent(script), timeout=30, what="the interrupted process")
    assert "KeyboardInterrupt" in ended.stderr, ended.stderr
    return ended.stdout.splitlines()


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
