"""Parts that own threads start afresh in a forked child.

``os.fork()`` copies a process with only the thread that called it (gunicorn ``--preload``,
Celery prefork, multiprocessing's fork start). A part that owns threads (the invalidation
bus's listener, the background load pool) registers here; in the child, each is told to drop
what belonged to the parent's threads and to start its own.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class ForkAware(Protocol):
    """A part with threads of its own."""

    def after_fork_in_child(self) -> None:
        """Runs in the child right after ``fork()``, before anything else: only this thread
        exists, and locks the parent's other threads held are held forever here. Start no
        thread here: :func:`start_when_restarted`."""
        ...


#: The parts, in the order they registered (held weakly). A part registers when it is built,
#: after the parts it is built from: they restart before it, so a part's restart may use them
#: (a chain's tells its memory tier and its fence, whose locks are new by then).
_PARTS: dict[int, weakref.ref[ForkAware]] = {}
_numbers = itertools.count()


def restart_after_fork(part: ForkAware) -> None:
    """Tell ``part`` when this process forks (as long as ``part`` is alive)."""
    number = next(_numbers)
    _PARTS[number] = weakref.ref(part, lambda _gone: _PARTS.pop(number, None))


#: What the restarts asked to start once every part has restarted (:func:`start_when_restarted`).
_STARTS: list[Callable[[], object]] = []


def start_when_restarted(start: Callable[[], object]) -> None:
    """From a part's ``after_fork_in_child``: call ``start`` (which starts a thread: the bus's
    listener) once every part has restarted. A thread started during the restarts runs beside
    them, and may reach a part that has not restarted yet -- its lock still the one a thread
    of the parent held at the fork -- and wait there for ever (the bus's listener, telling
    the chain the bus is down, waited in the fence's log: the child never subscribed and
    served its memory for good)."""
    _STARTS.append(start)


#: What forked children let go of, kept for their life (:func:`keep_from_the_parent`).
_KEPT: list[object] = []


def keep_from_the_parent(*parts: object) -> None:
    """In a forked child, keep ``parts`` (the parent's asyncio clients, connections, tasks)
    referenced for the life of this process, never closed: closed or collected while a loop
    runs, a connection of the parent's loop closes its transport, which takes the socket out
    of that loop's epoll set -- shared with the parent across ``fork()`` -- and the parent's
    reads on it then time out. A part that lets go of the parent's connections (rather than
    use them: a command written on a shared socket is answered to whichever process reads
    first) keeps them here."""
    _KEPT.extend(part for part in parts if part is not None)


class _Anchor:
    """Stands in the registry for a part that cannot be weakly referenced (a class compiled
    by mypyc: its instances have no weak reference slot). The part keeps its anchor, the
    anchor keeps the part: both go together, when the garbage collector finds them unused."""

    __slots__ = ("__weakref__", "part")

    def __init__(self, part: ForkAware) -> None:
        self.part = part

    def after_fork_in_child(self) -> None:
        self.part.after_fork_in_child()


def restart_compiled_after_fork(part: ForkAware) -> object:
    """:func:`restart_after_fork` for a part compiled with the core; returns what the part
    must keep (it is told for as long as it keeps it)."""
    anchor = _Anchor(part)
    restart_after_fork(anchor)
    return anchor


def _in_child() -> None:
    for ref in list(_PARTS.values()):
        part = ref()
        if part is None:
            continue
        try:
            part.after_fork_in_child()
        except Exception:
            logger.exception("restarting %r after fork failed", part)
    starts = list(_STARTS)
    _STARTS.clear()
    for start in starts:
        try:
            start()
        except Exception:
            logger.exception("starting %r after fork failed", start)


os.register_at_fork(after_in_child=_in_child)
