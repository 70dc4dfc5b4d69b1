"""Whether the calling code runs inside a signal handler: what ``close()`` asks before it waits.

Python runs a handler installed with :func:`signal.signal` on the main thread, between two
steps of whatever that thread was doing -- maybe in the middle of a call of the chain, holding
one of its locks (the memory tier's, redis-py's pool queue's, the loader's) or with another
thread (a timed load's worker, the bus listener, a background refresh) waiting on such a lock.
A ``close()`` run there that waits for any of them waits for the frame it interrupted, which
cannot go on before the handler returns: the process hangs for ever (1 or 2 of 100 SIGTERMs of
a busy worker, tools/signal_close.py). Owner checks on the chain's own locks would not be
enough: what close waits for (other threads' calls, the bus listener, a late fill) may wait
in turn on a lock the interrupted frame holds, in the library or in redis-py.

A handler's frame is on the stack of the code it calls: the frames of the main thread are
looked up for the code of a handler installed now (a function, a method, a ``partial`` of
one, or a callable object's ``__call__``). Asked once per ``close()``; the stack and the
installed handlers are read, nothing is changed. A handler written in C (Python's default
SIGINT handler, which raises ``KeyboardInterrupt``) runs no Python code that could close.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from types import FrameType, FunctionType, MethodType


def _code_id(handler: object) -> int | None:
    """The id of the code object ``handler`` runs first, or None (``SIG_DFL``, ``SIG_IGN``,
    ``None`` for a handler not installed from Python, or a builtin)."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    if isinstance(handler, MethodType):
        handler = handler.__func__
    if isinstance(handler, FunctionType):
        return id(handler.__code__)
    if isinstance(handler, (int, type(None))):  # signal.Handlers and None: nothing of ours
        return None
    call = type(handler).__call__  # a callable object: its class's __call__
    return _code_id(call) if isinstance(call, FunctionType) else None


def _installed_handler_codes() -> set[int]:
    codes = set()
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):  # a number the platform lists but cannot ask about
            continue
        code = _code_id(handler)
        if code is not None:
            codes.add(code)
    return codes


def in_signal_handler() -> bool:
    """True when the caller runs inside a Python signal handler (on the main thread, under a
    frame of a handler installed now). A function installed as a handler and called by the
    program itself counts too: the caller cannot tell the two apart, and both are safe to
    treat as a handler (see :meth:`tiered_cache.TieredCache.close`)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    codes = _installed_handler_codes()
    if not codes:
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if id(frame.f_code) in codes:
            return True
        frame = frame.f_back
    return False
