"""The threaded chain's close: run once, on a thread of its own, and waited for by every
``close()`` that may wait.

Run on the caller's thread, the close could be left half done for good: a signal handler
raising (Ctrl-C's ``KeyboardInterrupt``, a SIGTERM handler's ``sys.exit()``) runs on the main
thread between two of its steps, and the chain, marked closed first, then had every later
``close()`` return at once, its Redis tier, bus and source open; a ``close()`` on a second
thread beside a running one (a shutdown hook beside the service's ``with``) returned before
anything was closed. A handler raises on the main thread only, so a close on a thread of its
own is never stopped on its way: the caller stops waiting, not the close, which the next
``close()`` waits for, and the interpreter's exit too (the thread is not a daemon).

Each ``close()`` starts the thread if none is running it (a thread made by a caller that a
signal stopped before it started it never runs); two threads started by two callers at once
are harmless: the steps run under a lock, once. Every ``close()`` waits for each close thread
running as the close is done: one that found the steps done may still be ending (a
``close()`` that returned then left a ``tiered-cache-close`` thread running).

A ``close()`` stopped as it starts the thread raises at once, launched or not; the next
``close()`` finishes the close, and so does the interpreter's exit (``atexit``, its hook
registered before the start and let go of once the thread has begun: the exit waits only for
a thread that had begun), a second interrupt included (tests/test_close_interrupted_start.py).
The hook is registered by ``close()``'s first call, :attr:`CloseOnce.hold_exit`, a callable
written in C: CPython runs a signal handler where it checks for signals (entering a Python
function, after a call returns, a loop's jump back), so between ``close()``'s entry and the
registration there is no such instant. An interrupt landing as ``close()`` is entered stops
it before it did anything, as one landing just before the call would: the chain stays open,
and nothing (the next ``close()`` aside) closes it (tests/test_close_interrupted_entry.py).

Started in a signal handler (``start(aside=True)``), the thread is started by a thread of
the low-level :mod:`_thread` module, which takes no lock of :mod:`threading` to begin:
``Thread.start`` waits for the new thread to begin, and a thread that is not a daemon takes
``threading``'s lock of the ended threads (``_shutdown_locks_lock``, CPython 3.11 and 3.12)
as it begins; the main thread holds that lock in every ``join()`` or ``is_alive()`` of such a
thread that ended (another chain's close, a pool's shutdown), and a handler landing there
waited for ever (tests/test_close_in_signal_handler.py). The handler waits for nothing; the
launcher may wait for that lock until the handler has returned.
"""

from __future__ import annotations

import _thread
import atexit
import functools
import threading
from collections.abc import Callable

from .errors import handed_on
from .forking import restart_after_fork


class CloseOnce:
    """Runs ``steps`` once, on a thread named ``tiered-cache-close`` (not a daemon), and lets
    callers wait until they are done (the thread then ended): what ``TieredCache.close``
    owns."""

    def __init__(self, steps: Callable[[], None]) -> None:
        self._steps = steps
        #: Held by the thread running the steps: a second thread started meanwhile waits,
        #: then finds them done. Never taken on a thread a signal handler can run on.
        self._once = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        #: Every close thread started (more than one when callers start them at once).
        self._threads: list[threading.Thread] = []
        #: The thread that ran the steps (set before they begin), and what they raised.
        self._runner: threading.Thread | None = None
        self._failed: BaseException | None = None
        #: One per start from a signal handler, set once its launcher has started the thread.
        self._launches: list[threading.Event] = []
        #: ``close()``'s first call: registers the exit's hook with no Python frame in between
        #: (see the module's doc); :meth:`start` lets go of it.
        self.hold_exit: Callable[[], object] = functools.partial(
            atexit.register, self._finish_at_exit
        )
        restart_after_fork(self)

    def start(self, *, aside: bool = False) -> None:
        """Start the close unless it runs or is done (not on the thread running it: a
        source's close that closes its chain), and let go of the exit's hook
        (:attr:`hold_exit`) once its thread has begun. ``aside`` (in a signal handler): the
        thread is started by a launcher of its own, and this returns at once."""
        if self._done.is_set() or threading.current_thread() is self._runner:
            atexit.unregister(self._finish_at_exit)
        elif aside:
            launched = threading.Event()
            self._launches.append(launched)
            try:
                _thread.start_new_thread(self._start_aside, (launched,))
            except RuntimeError:  # no thread can start: the exit's hook, held, closes
                launched.set()
        else:
            self._start()

    def _start_aside(self, launched: threading.Event) -> None:
        try:
            self._start()
        finally:
            launched.set()

    def wait(self) -> None:
        """Return once the close is done (its thread ended), raising what it raised. On the
        thread running it, at once."""
        here = threading.current_thread()
        if here is self._runner and not self._done.is_set():
            return
        for launched in tuple(self._launches):  # a thread a handler's close has yet to start
            launched.wait()
        self._done.wait()  # a signal handler raising stops this wait only, not the close
        runner = self._runner
        if runner is not None and runner is not here:
            runner.join()  # ended right after the steps: none left once close() returned
        for thread in tuple(self._threads):
            # Alive: ending (the steps are done). Not started yet: the close() starting it
            # waits for it (where it may wait).
            if thread is not here and thread.is_alive():
                thread.join()
        if self._failed is not None:
            raise handed_on(self._failed)  # a copy: each caller's raise is its own

    def _start(self) -> None:
        thread = self._thread
        if thread is not None and (self._done.is_set() or thread.is_alive()):
            atexit.unregister(self._finish_at_exit)
            return
        # The exit's hook, registered by close() before anything can be left half done
        # (hold_exit), is let go of once the thread has begun (the exit waits for it then:
        # not a daemon): a chain closed in order holds no place in ``atexit``. Stopped
        # (Ctrl-C, a handler raising) on the way, this close() raises at once, and the exit
        # finishes the close, as the next close() does (a thread not alive is started again;
        # two run the steps once). Whether a thread was launched nothing here can tell:
        # Thread.start lists it (threading.enumerate shows it) before it launches it, and one
        # launched may not have begun (the interpreter's exit waits only for threads that
        # had). A wait for it to begin waited for ever for one never launched; not waiting,
        # the process that the interrupt ended exited with the chain open (tools/
        # signal_close.py --how ctrl-c). Registered in an ``except`` clause instead, a second
        # interrupt there, before the registration, left the close undone at the exit
        # (tests/test_close_interrupted_start.py); registered here, an interrupt before this
        # line did (tests/test_close_interrupted_entry.py).
        thread = threading.Thread(target=self._run, name="tiered-cache-close", daemon=False)
        self._thread = thread
        self._threads.append(thread)
        try:
            thread.start()
        except RuntimeError:  # no thread can start (interpreter shutting down): run here
            self._run()
        atexit.unregister(self._finish_at_exit)

    def _finish_at_exit(self) -> None:
        """At the interpreter's exit, after a ``close()`` stopped before its thread began, or
        a handler's whose launcher had not started it (registered from ``close()``'s entry
        until then only: a chain closed in order holds no place in ``atexit``)."""
        if not self._done.is_set():
            self.start()
            self.wait()

    def _run(self) -> None:
        with self._once:
            if self._done.is_set():
                return
            self._runner = threading.current_thread()
            try:
                self._steps()
            except BaseException as exc:
                self._failed = exc
            finally:
                self._done.set()

    def after_fork_in_child(self) -> None:
        """In a forked child: a close the parent was running there never ends here (its
        thread does not exist, its lock may be held for good). The child's next ``close()``
        runs the steps again, on the child's parts (each harmless twice)."""
        self._once = threading.Lock()
        done = self._done.is_set()
        self._done = threading.Event()
        if done:
            self._done.set()
        else:
            self._thread = self._runner = None
        self._threads = []  # the parent's: none runs here
        self._launches = []  # the parent's launchers: none runs here
