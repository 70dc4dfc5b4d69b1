"""The steps during which a watched client's socket descriptor is held by no object of the
process, counted, for a fork to wait for: a forked child closes its copies of the parent's
sockets by reading the objects that hold them (:mod:`.pools`, :mod:`.aio_pools`,
:mod:`.inherited`), and a copy of a descriptor no object held at the fork stays open in the
child for its life. Nothing of the child refers to that copy, which is never written or
read; but it keeps the parent's connection open on the wire (no FIN) until the child ends,
after the parent closed it.

Two such steps: an opening (a socket made, connecting or in its TLS handshake, before its
connection object or connector holds it), and a close. CPython's ``socket.close()`` lets go
of the descriptor (``fileno()`` is ``-1`` from then on) before it calls ``close(2)`` without
the GIL. Every close of a socket, plain or TLS, ends in its ``_real_close`` (``close()`` once
no file made of it is open, or the last such file's close), but that of a socket collected
unclosed: its finalizer (C, the socket type's ``__del__``) lets go of the descriptor and
closes it the same way, without ``_real_close``. :func:`count_closes` has both counted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from tiered_cache.logs import logger_for

__all__ = ["OPENINGS", "OPENING_WAIT", "Openings", "count_closes"]

#: The longest a fork waits for the connections being opened (a connect, a TLS handshake:
#: each bounded by the client's ``connect_timeout``, 1 s unless set; a name lookup is not) or
#: closed (microseconds; a socket given ``SO_LINGER`` may take its linger time).
OPENING_WAIT = 5.0


class Openings:
    """The watched clients' descriptors no object of theirs holds now, each step noted with
    its thread: a connection being opened (a thread's connect and TLS handshake; an asyncio
    connector's socket being made, until its socket object holds its descriptor and is
    noted), and a socket being closed (its object lets go of its descriptor, ``-1``, before
    ``close()`` runs without the GIL: :func:`count_closes`). A fork (``before``) waits until none
    is, and holds new openings until it is done (not closes: :meth:`unheld`), so that no
    child gets a copy of a descriptor no object of its own holds. Not those of the forking
    thread: a close may run in it during the fork (a reply collected by the garbage
    collector closes its socket), and an opening calls no user code, but a signal handler
    may run inside one, on the main thread, and fork (a prefork server's SIGCHLD handler):
    neither can end before the fork does, and the fork may take the lock the step it
    interrupted holds (reentrant).

    A handler may raise there too (Ctrl-C, a task queue's soft time limit): the lock is taken
    with ``with`` on the lock itself (C, as the core's: no handler runs between its taking
    and the block), never on the condition (whose ``__enter__`` and ``__exit__`` are Python:
    a handler raising in them left the lock held, and every other thread's step and every
    fork waited for it for ever); and a step is noted inside the ``try`` that forgets it, by
    a token of its own (a step interrupted before it was noted forgets nothing; noted before
    the ``try``, one interrupted as the lock was let go stayed noted, and every later fork
    waited its whole bound for it)."""

    def __init__(self) -> None:
        self._anew({})

    def _anew(self, unheld: dict[object, int]) -> None:
        # Reentrant: a signal handler's fork, on the thread holding it (see above).
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # its waits alone
        #: ``token: its thread``, a step each.
        self._unheld = unheld
        #: The threads forking now (two threads may fork at once).
        self._forking: set[int] = set()

    @contextlib.contextmanager
    def unheld(self, *, held_by_forks: bool = True) -> Iterator[None]:
        """Around a step during which a descriptor of a watched client is held by no object
        (an opening, a close). Not ``held_by_forks`` (a close), it waits for no fork under
        way: a close runs under whatever lock its thread holds (the collector's, in whichever
        thread allocates: a socket's finalizer, an aiohttp transport's or a urllib3 pool's
        that closes its sockets), logging's among them, which its at-fork hook takes after
        this one's; the close waited for the fork, and the fork for that lock, both for
        ever. A fork still waits for a close under way (not for one that starts as the fork
        leaves its wait: the child may keep that copy)."""
        me = threading.get_ident()
        token = object()
        try:
            with self._lock:
                if held_by_forks:
                    self._changed.wait_for(lambda: not self._forking or me in self._forking)
                self._unheld[token] = me
            yield
        finally:
            # First, and without the lock: one dictionary call (atomic), before which no
            # handler runs, so no interrupt leaves it noted.
            self._unheld.pop(token, None)
            with self._lock:
                self._changed.notify_all()

    def _others(self) -> int:
        """The steps under way of threads other than this one."""
        me = threading.get_ident()
        return sum(thread != me for thread in self._unheld.values())

    def before_fork(self) -> None:
        with self._lock:
            self._forking.add(threading.get_ident())
            if not self._changed.wait_for(lambda: self._others() == 0, OPENING_WAIT):
                logger_for("source").warning(
                    "a fork waited %s s for the DynamoDB connections being opened or closed "
                    "(%d left); the child keeps its copies of their sockets",
                    OPENING_WAIT,
                    self._others(),
                )

    def after_fork_in_parent(self) -> None:
        with self._lock:
            self._forking.discard(threading.get_ident())
            self._changed.notify_all()

    def after_fork_in_child(self) -> None:
        # Only this thread: the other steps noted were the parent's threads'. This thread's
        # (a handler's fork, inside one) ends here as it would have in the parent.
        me = threading.get_ident()
        self._anew({token: thread for token, thread in self._unheld.items() if thread == me})


OPENINGS = Openings()
os.register_at_fork(
    before=OPENINGS.before_fork,
    after_in_parent=OPENINGS.after_fork_in_parent,
    after_in_child=OPENINGS.after_fork_in_child,
)


#: The counting subclass of each socket class met (a plain socket, an ``SSLSocket``).
_COUNTING: dict[type[socket.socket], type[socket.socket]] = {}


def _counting(kind: type[socket.socket]) -> type[socket.socket]:
    if kind not in _COUNTING:

        def _real_close(self: socket.socket) -> None:
            with OPENINGS.unheld(held_by_forks=False):
                kind._real_close(self)  # type: ignore[attr-defined]

        def __del__(self: socket.socket) -> None:
            # Collected: its finalizer closes the descriptor if it is still open (a connection
            # dropped unclosed, a client's transports collected with a loop closed by hand).
            if self.fileno() < 0:
                kind.__del__(self)  # type: ignore[attr-defined]  # nothing to close
                return
            with OPENINGS.unheld(held_by_forks=False):
                kind.__del__(self)  # type: ignore[attr-defined]

        # No slot of its own: the same layout as ``kind``, so that a socket made by urllib3 or
        # aiohttp can be given this class.
        _COUNTING[kind] = type(
            kind.__name__,
            (kind,),
            {
                "__slots__": (),
                "_real_close": _real_close,
                "__del__": __del__,
                "__module__": __name__,
            },
        )
    return _COUNTING[kind]


def count_closes(sock: Any) -> None:
    """From now on, ``sock``'s close (by ``close()``, or by its finalizer once it is collected
    unclosed) is a step a fork waits for (a socket of another kind,
    urllib3's TLS-in-TLS ``SSLTransport``, is left as it is: it holds a socket of its own)."""
    if isinstance(sock, socket.socket) and type(sock) not in _COUNTING.values():
        sock.__class__ = _counting(type(sock))
