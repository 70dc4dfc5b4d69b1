"""An interrupt (Ctrl-C's KeyboardInterrupt, a task queue's soft time limit: a signal handler
that raises on the main thread) landing in a DynamoDB connection's opening, in
:class:`~tiered_cache_dynamodb.openings.Openings`' bookkeeping: the opening fails, and leaves
neither the lock taken (every other thread's opening, and every fork, would wait for it for
ever) nor itself counted (every later fork would wait its whole bound for it, and warn)."""

from __future__ import annotations

import inspect
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from tiered_cache_dynamodb import openings

from tiered_cache.testing.frames import current_frames
from tiered_cache.testing.interrupts import Interrupted, interrupt_once, interrupting
from tiered_cache.testing.polling import until

#: The opening's generator function (``Openings.opening`` is its context manager).
OPENING = openings.Openings.unheld.__wrapped__  # type: ignore[attr-defined]


def left_behind(steps: openings.Openings) -> list[Any]:
    """Whether another thread can take the openings' lock now, and the openings counted."""
    free: list[bool] = []

    def take() -> None:
        lock = steps._changed._lock  # type: ignore[attr-defined]
        taken = lock.acquire(blocking=False)
        if taken:
            lock.release()
        free.append(taken)

    other = threading.Thread(target=take)
    other.start()
    other.join()
    return [free, dict(steps._unheld)]


def at_line(line: int) -> Callable[[FrameType], bool]:
    return lambda frame: frame.f_lineno == line


def an_opening(steps: openings.Openings) -> None:
    with steps.unheld():
        pass


def test_an_interrupt_as_an_opening_takes_the_lock_leaves_it_free() -> None:
    """The interrupt lands as the main thread takes the lock another thread let go of: inside
    ``Condition.__enter__`` (a Python function: 3.11 runs a pending handler as its call of the
    lock's ``__enter__`` returns), the lock taken and the ``with`` block not entered."""
    steps = openings.Openings()
    lock = steps._changed._lock  # type: ignore[attr-defined]
    main = threading.get_ident()

    def taking(frame: FrameType | None) -> bool:
        # Blocked in the lock's C __enter__: in the opening's frame, or in a Python frame it
        # called (the condition's __enter__).
        while frame is not None:
            if frame.f_code is OPENING.__code__:
                return True
            if frame.f_code is not threading.Condition.__enter__.__code__:
                return False
            frame = frame.f_back
        return False

    raised = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if not raised.is_set():
            raised.set()
            raise Interrupted

    held = threading.Event()

    def holder() -> None:
        with lock:  # (reentrant: taken on this thread, let go on it)
            held.set()
            until(lambda: taking(current_frames().get(main)), "the opening taking the lock")
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # handled on main

    previous = signal.signal(signal.SIGUSR1, handler)
    holding = threading.Thread(target=holder)
    try:
        holding.start()
        held.wait()
        try:
            an_opening(steps)
            outcome = "returned"
        except Interrupted:
            outcome = "interrupted"
    finally:
        holding.join()
        signal.signal(signal.SIGUSR1, previous)
    assert [outcome, *left_behind(steps)] == ["interrupted", [True], {}]


def test_an_interrupt_at_any_line_of_an_opening_until_it_yields_leaves_nothing_behind() -> None:
    """Interrupted at each line of the opening in turn until it yields to the connect (a trace
    function sends the signal there): after each, the lock is free and nothing is noted. On
    3.11 a handler runs as a call returns, a loop jumps back or a function starts: each of
    those lines starts at such an instant (or, with nothing run between, after one). Not the
    cleanup's lines: no handler runs before its first call returns."""
    code = OPENING.__code__
    source, first = inspect.getsourcelines(OPENING)
    last = next(first + n for n, text in enumerate(source) if text.strip().startswith("yield"))
    lines = sorted({line for _, _, line in code.co_lines() if line and first < line <= last})
    behind = {}
    for line in lines:
        steps = openings.Openings()
        with interrupting() as interrupt:
            sys.settrace(interrupt_once(code, at_line(line), interrupt))
            try:
                an_opening(steps)
            except Interrupted:
                pass
            finally:
                sys.settrace(None)
        left = left_behind(steps)
        if left != [[True], {}]:
            behind[source[line - first].strip()] = left
    assert behind == {}
