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
from typing import Protocol

logger = logging.getLogger(__name__)


class ForkAware(Protocol):
    """A part with threads of its own."""

    def after_fork_in_child(self) -> None:
        """Runs in the child right after ``fork()``, before anything else: only this thread
        exists, and locks the parent's other threads held are held forever here."""
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


def _in_child() -> None:
    for ref in list(_PARTS.values()):
        part = ref()
        if part is None:
            continue
        try:
            part.after_fork_in_child()
        except Exception:
            logger.exception("restarting %r after fork failed", part)


os.register_at_fork(after_in_child=_in_child)
