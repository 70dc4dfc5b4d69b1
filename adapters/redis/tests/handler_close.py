"""A close run by a signal handler that lands in a call of the main thread, its Redis stopped
(SIGSTOP) under the call: for the tests of a tier's or a bus's close by hand from a handler."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

#: Generous: a call that has not returned by then is stuck, not slow.
STUCK = 15.0


@contextmanager
def closed_by_a_handler(
    close: Callable[[], None], in_call: Callable[[int], bool], server: RedisServer
) -> Iterator[threading.Event]:
    """Inside the block ``server`` is stopped, and once ``in_call(main thread's id)`` holds,
    SIGUSR1 is sent to the main thread until its handler, ``close()``, has run; then the
    server resumes (whatever happens). Yields the event the handler sets once it closed."""
    closed = threading.Event()

    def handler(signum: int, frame: object) -> None:
        close()
        closed.set()

    previous = signal.signal(signal.SIGUSR1, handler)
    pid = server.pid
    assert pid is not None
    main = threading.get_ident()

    def signal_then_resume() -> None:
        try:
            until(lambda: in_call(main), "the main thread's call")
            while not closed.wait(0.05):  # sent again until the handler ran: see interrupting()
                signal.pthread_kill(main, signal.SIGUSR1)
        finally:
            os.kill(pid, signal.SIGCONT)

    os.kill(pid, signal.SIGSTOP)
    resumer = threading.Thread(target=signal_then_resume)
    resumer.start()
    try:
        yield closed
    finally:
        resumer.join(STUCK)
        signal.signal(signal.SIGUSR1, previous)
