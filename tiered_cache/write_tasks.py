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
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .logs import logger_for
from .loops import running_task, stalled
from .steps import Steps, arun

if TYPE_CHECKING:
    from .closed import Paths

__all__ = ["WriteTasks", "undo_of"]

logger = logger_for("chain")

T = TypeVar("T")

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
    """The write tasks of one chain running (any event loop), and which of them are in their
    bus's publish (:meth:`publishing`) rather than in a tier, a source or the fence: the
    chain's close waits for the rest of a write without the bus's bound
    (:meth:`tier_parts_ended`), for its publish at most ``close_wait``.

    Args:
        within: the bus's ``close_wait``, how long a write stopped by a sweep waits for each
            of its calls (:meth:`bounded`); None (no bus, or none declared): without limit.
    """

    def __init__(self, within: float | None = None) -> None:
        self._within = within
        self._tasks: set[asyncio.Task[None]] = set()
        #: The write tasks inside their publish (its lock's wait included).
        self._publishing: set[asyncio.Task[Any]] = set()
        #: A wake-up for each close waiting in :meth:`tier_parts_ended` (any loop's): a write
        #: ended, or began its publish.
        self._waiting: set[Callable[[], None]] = set()
        #: The tasks finishing a write stopped by a sweep (:func:`_finish`, its cancellation
        #: taken back): their publishes are bounded (:meth:`announced`).
        self._finishing: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def running(self) -> set[asyncio.Task[None]]:
        """The write tasks not ended yet, but the running task (a copy:
        :meth:`AsyncTieredCache.aclose` and ``wait_background`` wait for them). A write that
        awaits one of them from inside (a source's ``store``, a tier's write, a hook of its
        own) cannot end before that returns: waited for, it waited for itself for good."""
        here = running_task()
        return {task for task in self._tasks if task is not here}

    def inside(self) -> bool:
        """Whether the running task is one of the writes: a close awaited there must not wait
        for its own end (:meth:`running`): it is started, and left to go on once the write
        has ended."""
        task = running_task()
        return task is not None and task in self._tasks

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """Around a publish of the chain's bus: a write task inside it is past its tiers (a
        publish is a write's last step, and what the bus's ``close_wait`` bounds). Any other
        task's publish (an owed delete's payment by its timer) is no write's: nothing noted."""
        task = running_task()
        if task is None or task not in self._tasks:
            yield
            return
        self._publishing.add(task)
        self._wake()
        try:
            yield
        finally:
            self._publishing.discard(task)

    def stopping(self) -> bool:
        """Whether the running task is a write stopped by a sweep (the end of its loop: a
        write task is cancelled by nothing else), or finishing one (:func:`_finish`)."""
        task = running_task()
        if task is None:
            return False
        return task in self._finishing or (task in self._tasks and task.cancelling() > 0)

    def bounded(self, call: Awaitable[T]) -> Awaitable[T]:
        """``call`` as the running task awaits it: a write stopped by a sweep
        (:meth:`stopping`) waits for it the bus's ``close_wait`` at most (as a close does),
        then :class:`TimeoutError`; any other task, as long as the call takes. The one rule
        for a stopping write's calls, which each of them goes through: its announcements
        (:meth:`announced`) and its native tier calls (the asyncio tier accessor's deletes
        and lease give-backs, given this method). The end of ``asyncio.run`` waits for the
        tasks it cancelled: a call stuck on a stalled Redis, on a client with no socket
        timeout (a new connection's, after the sweep's one cancellation stopped the call on
        the wire), held it until Redis resumed."""
        within = self._within
        if within is None or not self.stopping():
            return call
        return _within(call, within)

    async def announced(self, announcing: Awaitable[bool], given_up: Callable[[], None]) -> bool:
        """Await a write's announcement (True if it went out), :meth:`bounded`: given up
        past the bound, ``given_up()`` says and counts it, as a failed publish. (A publish
        never raises to the write: it went out, or it failed.)"""
        try:
            return await self.bounded(announcing)
        except TimeoutError:
            given_up()
            return False

    def in_tiers(self) -> list[asyncio.Task[None]]:
        """The write tasks running that are not in their publish (nor on a loop that makes no
        progress: one closed or left, whose tasks never end)."""
        publishing = self._publishing
        return [
            task
            for task in list(self._tasks)
            if not task.done() and task not in publishing and not stalled(task)
        ]

    async def tier_parts_ended(self) -> None:
        """Wait until every write running has ended or is in its publish: each of its calls
        on a tier or the source is bounded by that part's own timeouts, not the bus's (a
        write still in its tiers past ``close_wait`` had the bus and the tier closed under
        it: its next call refused, its publish too). Woken by each write's end and each
        publish's start, whatever loop runs them."""
        loop = asyncio.get_running_loop()
        while True:
            woken: asyncio.Future[None] = loop.create_future()

            def wake(woken: asyncio.Future[None] = woken) -> None:
                with contextlib.suppress(RuntimeError):  # this loop was closed meanwhile
                    loop.call_soon_threadsafe(_settle, woken)

            # Noted before the writes are looked at: a change in between wakes it.
            self._waiting.add(wake)
            try:
                if not self.in_tiers():
                    return
                await woken
            finally:
                self._waiting.discard(wake)

    def _wake(self) -> None:
        for wake in list(self._waiting):
            wake()

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
                await self._finish(undo)
            raise

    async def _write(self, steps: Steps[None], undo: Undo, begun: list[bool]) -> None:
        begun.append(True)
        try:
            await arun(steps)
        except asyncio.CancelledError:
            await self._finish(undo)
            raise

    async def _finish(self, undo: Undo) -> None:
        """:func:`_finish`, its task noted as finishing (:meth:`stopping`)."""
        task = asyncio.current_task()
        if task is None:
            await _finish(undo)
            return
        self._finishing.add(task)
        try:
            await _finish(undo)
        finally:
            self._finishing.discard(task)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._publishing.discard(task)
        self._wake()
        if not task.cancelled():
            task.exception()  # retrieved: its caller has seen it, or was cancelled

    def forget(self) -> None:
        """In a forked child: the parent's loop, whose tasks these are, never runs here."""
        self._tasks = set()
        self._publishing = set()
        self._waiting = set()
        self._finishing = set()


async def _within(call: Awaitable[T], within: float) -> T:
    async with asyncio.timeout(within):
        return await call


def _settle(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


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
