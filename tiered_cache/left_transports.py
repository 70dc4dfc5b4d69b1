"""Transports closed off an event loop left open, finished if that loop is closed first.

A part that moves off a loop left open (run by hand, never closed, not running:
:mod:`tiered_cache.loop_end`) closes that loop's connections without waiting for it: each
transport's ``close()`` is made, and its socket is closed by a callback that loop runs next
(its ``shutdown_asyncgens`` included). A loop left open and then closed by hand without
running again (a warm-up loop closed at exit) discards that callback (``loop.close()`` clears
what is pending): each socket stayed open until the collector found its transport, with two
``ResourceWarning``s (``unclosed <socket.socket ...>``, ``unclosed transport``). So the loop's
close is watched (:func:`~tiered_cache.loop_end.when_closed`), and a transport whose socket is
still open then is finished as that loop would have: its protocol told, its socket closed.

Only asyncio's own selector transports are finished: asyncio offers no public way to finish a
transport's close without its loop (its ``_call_connection_lost`` is private, and a
transport's socket has no ``close()`` since Python 3.11); others (uvloop's, written in C) are
left to the collector, as before. A protocol that wakes a waiter of the closed loop in its
``connection_lost`` raises there (``Event loop is closed``): the socket is closed all the same
(asyncio closes it in a ``finally``), and nothing runs on that loop again.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from asyncio import selector_events
from collections.abc import Iterable
from typing import Any

from .loop_end import when_closed

__all__ = ["finish_if_closed_first"]


def finish_if_closed_first(
    loop: asyncio.AbstractEventLoop, transports: Iterable[asyncio.BaseTransport]
) -> None:
    """``transports`` were closed off ``loop``, which is not running: finish those whose
    socket is still open if ``loop`` is closed before it runs them."""
    closing: list[Any] = [
        transport
        for transport in transports
        if isinstance(transport, selector_events._SelectorTransport)  # type: ignore[attr-defined]
    ]
    if closing:
        found = _LEFT.get(loop)
        left = found() if found is not None else None
        if left is None:
            left = _Left(loop)
            _LEFT[loop] = weakref.ref(left)
        left.add(closing)


class _Left:
    """A loop left open's transports to finish, and the watch of its close: one per loop
    (a loop left again and again, run in between, watched once, its finished ones let go).

    Held by the loop alone (its watching timer's): the transports refer to their loop, so
    held from anywhere else (a table keyed weakly by the loop), they kept it alive for good:
    a loop dropped unclosed was never collected, its selector and sockets open, its
    ``__del__`` never run (adapters/redis/tests/test_redis_loop_left_open.py)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._transports: list[Any] = []
        #: Kept here (the timer holds this object): collected, the watch would tell nothing.
        self._watch = when_closed(loop, self._finish, keep=self)

    def add(self, transports: list[Any]) -> None:
        self._transports = [*filter(_socket_open, self._transports), *transports]

    def _finish(self, loop: asyncio.AbstractEventLoop) -> None:
        _LEFT.pop(loop, None)
        for transport in self._transports:
            if _socket_open(transport):
                with contextlib.suppress(RuntimeError):
                    transport._call_connection_lost(None)


#: The loops left open with transports to finish, each with its :class:`_Left` (held by the
#: loop: weakly here; a loop collected unclosed takes its entry).
_LEFT: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[_Left]] = (
    weakref.WeakKeyDictionary()
)


def _socket_open(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.fileno() != -1
