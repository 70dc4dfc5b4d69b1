"""An interrupt (a BaseException, as Ctrl-C's KeyboardInterrupt) raised in the main thread
at a chosen instant, for tests of what the chain gives back when a caller is interrupted."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import CodeType, FrameType


class Interrupted(BaseException):
    """Not an Exception, as KeyboardInterrupt (or a task queue's soft time limit), without
    interrupting pytest."""


@contextlib.contextmanager
def interrupting() -> Iterator[Callable[[], None]]:
    """``interrupt()``, called from any thread (a loader's), raises :class:`Interrupted` in
    the main thread wherever it is, blocked in a wait included: a signal handler (SIGUSR1),
    as Ctrl-C's. Enter it in the main thread."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, handler)
    main = threading.main_thread().ident
    assert main is not None
    try:
        yield lambda: signal.pthread_kill(main, signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)


#: A trace function (``sys.settrace``'s).
TraceFunction = Callable[[FrameType, str, object], object]


def interrupt_once(
    code: CodeType, when: Callable[[FrameType], bool], interrupt: Callable[[], None]
) -> TraceFunction:
    """A trace function for ``sys.settrace`` that calls ``interrupt()`` (from
    :func:`interrupting`) at the first line of ``code`` run where ``when(frame)`` holds, and
    stops tracing there: the interrupt lands in that very instant, as a signal at the worst
    moment would. ``code`` must run as Python (a module of the pure-Python core, or one the
    compiled core does not hold)."""

    def lines(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        if event == "line" and when(frame):
            sys.settrace(None)
            interrupt()  # raised here, as the handler runs
        return lines

    def calls(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        return lines if event == "call" and frame.f_code is code else None

    return calls
