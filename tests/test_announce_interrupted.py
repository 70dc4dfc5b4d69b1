"""A write interrupted (Ctrl-C's ``KeyboardInterrupt``, a SIGTERM handler's ``sys.exit()``)
while it announces itself on the bus: at each line the announcement and its driver run.

Found by SIGTERM to a process writing from five threads, its handler closing the chain then
calling ``sys.exit()``, as the bus's listener reconnected (1 of 30 and 1 of 40 rounds hung):
the main thread and a writer waited for the bus link's lock of its announcements for good.
The lock was taken as a step of the announcement (``yield lock.acquire``); an interrupt
landing in the driver as the acquire returned was thrown into the announcement where nothing
gave the lock back, and the interrupted write's own clean-up announced again.

A profile function raises the interrupt where CPython checks for signals: as a function of
the announcement (``BusLink``'s code) or of its driver (``steps.run``, driving it) is
entered, and the instant after a call there returned (a C function's too). Not before a C
function is called, nor as a generator yields: no signal lands there (a trace function's
line events are not such instants either: an exception raised from some, a ``try:``'s,
skips the frame's handlers).
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.bus import LocalBus
from tiered_cache.coherence import BusLink
from tiered_cache.steps import run
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.interrupts import Interrupted

RUN = run.__code__


def announcement_frame(frame: FrameType) -> str | None:
    """The name a line of ``frame`` is listed under, if it is the announcement's: its driver's
    frame (``run`` driving ``announcing``) or a frame of ``BusLink``'s code."""
    if frame.f_code is RUN:
        steps = frame.f_locals.get("steps")
        return "run" if getattr(steps, "__name__", None) == "announcing" else None
    if frame.f_code.co_filename == BusLink.announcing.__code__.co_filename:
        return frame.f_code.co_name
    return None


def a_check_for_signals(frame: FrameType, event: str) -> bool:
    """Whether the profile ``event`` is at an instant CPython checks for signals: a function
    entered, a C call returned, a function returned to its caller (not a generator's yield,
    resumed by its driver: the check is the driver's, after its call)."""
    if event == "return":
        return not frame.f_code.co_flags & inspect.CO_GENERATOR
    return event in ("call", "c_return")


def announcement_events() -> int:
    """How many checks for signals the announcement (and its driver) make in a write."""
    seen = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal seen
        seen += announcement_frame(frame) is not None and a_check_for_signals(frame, event)

    cache = TieredCache([MemoryTier()], bus=LocalBus())
    sys.setprofile(count)
    try:
        cache.set("k", "v")
    finally:
        sys.setprofile(None)
    cache.close()
    return seen


EVENTS = range(announcement_events())


def interrupted_at(nth: int) -> Callable[[FrameType, str, object], None]:
    """A profile function raising :class:`Interrupted` at the announcement's ``nth`` check."""
    seen = 0

    def events(frame: FrameType, event: str, arg: object) -> None:
        nonlocal seen
        if announcement_frame(frame) is None or not a_check_for_signals(frame, event):
            return
        seen += 1
        if seen == nth + 1:
            sys.setprofile(None)
            raise Interrupted

    return events


@pytest.mark.parametrize("nth", EVENTS)
def test_a_write_interrupted_as_it_announces_leaves_the_lock_free(nth: int) -> None:
    """Seen failing where the interrupt landed in the driver once the lock was taken (the
    line after the acquire's call): the child reported nothing within 20 s (the interrupted
    write's clean-up waited for the lock it had left held). Now the write is interrupted,
    and another thread's write returns."""

    def body() -> list[Any]:
        cache = TieredCache([MemoryTier()], bus=LocalBus())
        seen: list[Any] = []
        sys.setprofile(interrupted_at(nth))
        try:
            cache.set("k", "v")
            seen.append("not interrupted")
        except Interrupted:
            seen.append("interrupted")
        finally:
            sys.setprofile(None)
        other = threading.Thread(target=cache.set, args=("j", "w"), daemon=True)
        other.start()
        other.join(10)  # a guard, not a measure: the write returns at once
        seen.append(("the other write returned", not other.is_alive()))
        cache.close()
        return seen

    assert in_a_child(body, timeout=20) == ["interrupted", ["the other write returned", True]]
