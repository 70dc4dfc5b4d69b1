"""An interrupt (a BaseException, as Ctrl-C's KeyboardInterrupt) raised in the main thread
at a chosen instant, for tests of what the chain gives back when a caller is interrupted."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


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
