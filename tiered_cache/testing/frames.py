"""Other threads' current frames, for tests that wait until a thread blocks in a chosen call.

``sys._current_frames()`` on CPython 3.11 before 3.11.9 holds the runtime's head lock while it
makes the frame objects it returns. Making one can run the cyclic garbage collector, whose
finalizers may let another thread take the GIL; a thread that then starts or ends (each takes
the head lock while holding the GIL) deadlocks the interpreter, and every thread waits for
the GIL for ever, a test's timeout included (CPython gh-106883). The collector is paused
around the call, as CPython 3.11.9 does itself.
"""

from __future__ import annotations

import gc
import sys
import threading
from types import FrameType

__all__ = ["current_frames"]

#: One call at a time: the collector's state is the process's, and a second caller must not
#: turn it back on while the first is inside.
_lock = threading.Lock()


def current_frames() -> dict[int, FrameType]:
    """``sys._current_frames()``, with the garbage collector paused around it."""
    with _lock:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return sys._current_frames()
        finally:
            if enabled:
                gc.enable()
