"""An interrupt (a BaseException, as Ctrl-C's KeyboardInterrupt) raised in the main thread
at a chosen instant, for tests of what the chain gives back when a caller is interrupted."""

from __future__ import annotations

import contextlib
import dis
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Protocol

from .frames import current_frames
from .polling import until


class Interrupted(BaseException):
    """Not an Exception, as KeyboardInterrupt (or a task queue's soft time limit), without
    interrupting pytest."""


@contextlib.contextmanager
def interrupting() -> Iterator[Callable[[], None]]:
    """``interrupt()``, called from any thread (a loader's), raises :class:`Interrupted` in
    the main thread wherever it is, blocked in a wait included: a signal handler (SIGUSR1),
    as Ctrl-C's. Enter it in the main thread.

    Called from another thread, ``interrupt()`` returns once the main thread has raised it,
    sending the signal again until then: CPython runs a handler when the main thread next
    checks for signals, or when the signal breaks its wait (EINTR); a signal that arrives
    after its last check and before it blocks (a lock's wait: ``Future.result``,
    ``Event.wait``) breaks nothing, and is raised only when that wait ends, a timeout later.
    Each ``interrupt()`` raises once: a signal sent again after it was raised does nothing.

    A handler that runs inside a finalizer (a weak reference's callback, a ``__del__``: the
    main thread runs them wherever the garbage collector starts) raises into code whose
    exception CPython ignores ("Exception ignored in ..."): that interrupt is not counted
    raised, and ``interrupt()`` sends it again, to land in the code the finalizer ran in."""
    asked = 0  # interrupt() calls
    raised = 0  # Interrupted raised by the handler (in the main thread, under the GIL)

    def handler(signum: int, frame: object) -> None:
        nonlocal raised
        if raised < asked:
            raised += 1
            raise Interrupted

    def ignored(unraisable: sys.UnraisableHookArgs) -> None:
        nonlocal raised
        if isinstance(unraisable.exc_value, Interrupted):
            raised -= 1  # lost in a finalizer: interrupt() sends it again
        else:
            previous_hook(unraisable)

    previous = signal.signal(signal.SIGUSR1, handler)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = ignored
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        nonlocal asked
        asked += 1
        wanted = asked
        signal.pthread_kill(main, signal.SIGUSR1)  # in the main thread, raised right here
        for _ in range(1_000):  # a guard (10 s), not a measure
            if raised >= wanted or threading.get_ident() == main:
                return
            threading.Event().wait(0.01)
            if raised < wanted:
                signal.pthread_kill(main, signal.SIGUSR1)

    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGUSR1, previous)
        sys.unraisablehook = previous_hook


def interrupted_when(
    ready: Callable[[], object],
    call: Callable[[], object],
    then: Callable[[], object] | None = None,
) -> None:
    """Run ``call()`` in the main thread and interrupt it (:func:`interrupting`) from another
    thread once ``ready()`` returned there (it blocks until the instant wanted: a held
    delete reached, the close waiting); ``call()`` must raise :class:`Interrupted`.
    ``then()``, if given, runs in that thread as soon as the interrupt was raised (a held
    reply let go, so that what the interrupted call gives back is answered at once)."""
    with interrupting() as interrupt:

        def when_ready() -> None:
            ready()
            interrupt()
            if then is not None:
                then()

        interrupter = threading.Thread(target=when_ready)
        interrupter.start()
        try:
            _interrupted(call)
        finally:
            interrupter.join()


def _interrupted(call: Callable[[], object]) -> None:
    """Run ``call()``, which must raise :class:`Interrupted`."""
    try:
        call()
    except Interrupted:
        return
    raise AssertionError(f"{call!r} returned: it was never interrupted")


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


def raised_at_line(line: int, raised: type[BaseException]) -> Callable[..., object]:
    """A local trace function (``sys.settrace``'s, for one frame) that raises ``raised`` as
    its frame reaches ``line``, once: the tracing is unset first (CPython unsets a trace
    function that raises anyway), so the interrupt's handling runs untraced."""

    def lines(frame: FrameType, event: str, arg: object) -> object:
        if event == "line" and frame.f_lineno == line:
            sys.settrace(None)
            frame.f_trace = None
            raise raised
        return lines

    return lines


class _Lock(Protocol):
    def acquire(self) -> bool: ...
    def release(self) -> None: ...


def _taking(code: CodeType) -> frozenset[int]:
    """The offsets in ``code`` where it waits for a lock: a ``with`` statement's entry
    (``BEFORE_WITH``, which calls ``__enter__``), and the call of a method ``acquire``."""
    offsets: set[int] = set()
    method = None
    for instruction in dis.get_instructions(code):
        if instruction.opname == "BEFORE_WITH":
            offsets.add(instruction.offset)
        elif instruction.opname in ("LOAD_METHOD", "LOAD_ATTR"):
            method = instruction.argval
        elif instruction.opname == "CALL":
            if method == "acquire":
                offsets.add(instruction.offset)
            method = None
    assert offsets, f"{code.co_qualname} takes no lock"
    return frozenset(offsets)


def interrupted_at_lock(
    lock: _Lock, code: CodeType, call: Callable[[], object], *, in_the_wait: bool = False
) -> bool:
    """Run ``call()`` in the main thread while another thread holds ``lock``, and interrupt
    it (:class:`Interrupted`, from a SIGUSR1 handler) once it waits for the lock in ``code``.
    ``call()`` must raise :class:`Interrupted`; ``code`` must run as Python (the pure-Python
    core). Returns whether it raised while the other thread still held the lock.

    By default the interrupt lands as the wait ends with the lock taken: the signal reaches
    the thread holding the lock (a signal sent to the process may reach any of its threads:
    it breaks no wait of the main thread's), which then lets the lock go. CPython runs the
    handler in the main thread at its first check for signals after it took the lock: after
    a call of ``lock.acquire()``, as the call returns (3.11 checks there); after a ``with``
    statement's ``__enter__``, inside the block.

    ``in_the_wait``: the signal reaches the main thread as it waits, and is sent again until
    raised (one that lands before the wait blocks breaks nothing); the holder lets the lock go
    once ``call()`` raised (or after 10 s, a guard)."""
    main = threading.get_ident()
    assert main == threading.main_thread().ident, "call() must run in the main thread"
    taking = _taking(code)
    raised, caught, let_go = threading.Event(), threading.Event(), threading.Event()

    def handler(signum: int, frame: object) -> None:
        if not raised.is_set():
            raised.set()
            raise Interrupted

    def waiting() -> bool:
        frame = current_frames().get(main)
        return frame is not None and frame.f_code is code and frame.f_lasti in taking

    def holder() -> None:
        try:
            until(waiting, f"the main thread waiting for the lock in {code.co_qualname}")
            if not in_the_wait:
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
                return
            for _ in range(1_000):  # a guard (10 s), not a measure
                signal.pthread_kill(main, signal.SIGUSR1)
                if caught.wait(0.01):
                    return
        finally:
            let_go.set()
            lock.release()

    previous = signal.signal(signal.SIGUSR1, handler)
    lock.acquire()
    holding = threading.Thread(target=holder)
    try:
        holding.start()
        _interrupted(call)
        early = not let_go.is_set()
        caught.set()
        return early
    finally:
        caught.set()
        holding.join()
        signal.signal(signal.SIGUSR1, previous)
