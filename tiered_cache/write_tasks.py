"""The asyncio chain's writes and invalidations, each run to its end in a task of its own.

A caller cancelled (a client timeout) stops waiting, not the write: the source may already hold
the new value, and a write stopped half-way leaves older copies in the tiers. The write task
itself is cancelled only by a sweep of every task: ``asyncio.run``'s end when the service's
coroutine returned with writes left in flight (fire-and-forget ``invalidate`` tasks), or a
server's shutdown. Such a write, stopped before its first step or on the wire, left the old
value in Redis for its TTL, read by every process (40 of 40 fire-and-forget invalidations).
It is finished instead by an invalidation of what it wrote (``undo``: its keys, its prefix,
everything), awaited in the task the sweep cancelled, which the end of ``asyncio.run`` waits
for while the loop still runs. Its calls begin after the sweep, so the sweep does not cancel
them again (redis-py's sends await ``asyncio.wait_for``, a task of its own that a sweep
cancels: a write task that merely ignored its cancellation failed all the same), and each is
bounded by its tier's timeouts. A write task that never began (cancelled before its first
step) cannot run anything: its caller, cancelled by the same sweep while it waits, finishes
it instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .logs import logger_for
from .steps import Steps, arun

if TYPE_CHECKING:
    from .closed import Paths

__all__ = ["WriteTasks", "undo_of"]

logger = logger_for("chain")

#: What finishes a write stopped by a sweep: an invalidation of what it wrote.
Undo = Callable[[], Steps[None]]


def undo_of(paths: Paths, keys: Sequence[str] | None, prefix: str | None) -> Undo:
    """The one rule for what finishes a write stopped by a sweep, from what the write names:
    its keys (a ``set``, a ``set_many``, an invalidation of keys), its prefix, or neither
    (a ``clear``: everything). Never strict: the finishing drops what it can, and says so
    when a tier fails (:func:`_finish`)."""
    if keys is not None:
        return lambda: paths.invalidate_many(keys)
    if prefix is not None:
        return lambda: paths.invalidate_prefix(prefix)
    return paths.clear


class WriteTasks:
    """The write tasks of one chain running (any event loop)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def running(self) -> set[asyncio.Task[None]]:
        """The write tasks not ended yet (a copy: :meth:`AsyncTieredCache.aclose` waits)."""
        return set(self._tasks)

    async def run(self, steps: Steps[None], undo: Undo) -> None:
        """Run ``steps`` in a task to their end, however the caller is cancelled."""
        begun: list[bool] = []
        task = asyncio.ensure_future(self._write(steps, undo, begun))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # Cancelled by its own client only, the write goes on. Cancelled with its write,
            # before that one began: the write never runs a step, this caller finishes it.
            if not begun and task.cancelling():
                await _finish(undo)
            raise

    async def _write(self, steps: Steps[None], undo: Undo, begun: list[bool]) -> None:
        begun.append(True)
        try:
            await arun(steps)
        except asyncio.CancelledError:
            await _finish(undo)
            raise

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its caller has seen it, or was cancelled

    def forget(self) -> None:
        """In a forked child: the parent's loop, whose tasks these are, never runs here."""
        self._tasks = set()


async def _finish(undo: Undo) -> None:
    """Invalidate what a write stopped by a sweep wrote, in the cancelled task (its
    cancellation taken: the tiers' own timeouts, ``asyncio.timeout``, count cancellations).
    Failing, it says so: the copies it could not drop stay until their TTL, as after a
    failed invalidation."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    try:
        await arun(undo())
    except Exception as exc:
        logger.warning(
            "a write stopped as its event loop ended could not be finished (%s: %s); "
            "the copies it should have dropped stay until their TTL",
            type(exc).__name__,
            exc,
        )
