"""Waiting for and cancelling asyncio tasks whatever event loop runs them.

An asyncio chain may be used from several event loops (one per thread): a load left running
by a cancelled caller, or a write whose caller went away, runs on the loop that started it,
and another loop may wait for it (the next miss of the key, ``wait_background``, ``aclose``).
``asyncio.wait`` cannot do that: the task's done callbacks run on the task's own loop, which
would set this loop's future from that thread without waking it (the wait slept to its
timeout, or for ever), and ``Task.cancel`` is not thread-safe. Every such wait goes through
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Collection
from typing import Any

__all__ = [
    "CancellationKept",
    "all_end_within",
    "cancel",
    "ends_within",
    "past_first_step",
    "running_task",
    "stalled",
]


async def ends_within(task: asyncio.Task[Any], timeout: float | None) -> bool:
    """Whether ``task`` ends within ``timeout`` seconds (None: however long it takes). A task
    of another event loop tells its end to this one through ``call_soon_threadsafe``; one
    whose loop is closed never ends (False at once)."""
    if task.done():
        return True
    loop = asyncio.get_running_loop()
    if task.get_loop() is loop:
        done, _ = await asyncio.wait({task}, timeout=timeout)
        return bool(done)
    ended: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not ended.done():
            ended.set_result(None)

    def on_end(_: object) -> None:  # on the task's loop
        with contextlib.suppress(RuntimeError):  # this loop was closed meanwhile
            loop.call_soon_threadsafe(settle)

    try:
        task.get_loop().call_soon_threadsafe(task.add_done_callback, on_end)
    except RuntimeError:  # its loop is closed: it never ends
        return False
    told, _ = await asyncio.wait({ended}, timeout=timeout)
    return bool(told)


async def all_end_within(tasks: Collection[asyncio.Task[Any]], timeout: float | None) -> bool:
    """Whether every one of ``tasks`` ends within ``timeout`` seconds (waited for at once)."""
    if not tasks:
        return True
    ended = await asyncio.gather(*(ends_within(task, timeout) for task in tasks))
    return all(ended)


async def past_first_step(task: asyncio.Task[Any]) -> None:
    """Wait until ``task``, just spawned on the running loop, has run its first step or has
    ended, through any cancellation of the caller (the caller raises its own afterwards): a
    turn of the loop, its first step being due. A task cancelled before its first step runs
    nothing, not even its ``finally``: the sweep of every task at the end of ``asyncio.run``
    cancels those spawned in the loop's last turn (a caller cancelled by hand as the service
    returned) before they begin, and what such a task was to do is its spawner's again.

    A cancellation met here is not lost: the caller's count of them (``cancelling()``) is
    left as it is, so a caller cancelled again in that turn, by hand or by an expiring
    ``asyncio.timeout`` around it, still ends cancelled, and the timeout does not turn a
    cancellation by hand into ``TimeoutError``
    (``adapters/redis/tests/test_redis_left_load_cancelled_again.py``)."""
    coroutine = task.get_coro()
    if not inspect.iscoroutine(coroutine):  # not a coroutine's task: nothing to tell
        return
    while not task.done() and inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)


def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` from this thread: through its own loop when that is another thread's
    (``Task.cancel`` is not thread-safe, and that loop might not wake to run it)."""
    loop = task.get_loop()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        task.cancel()
        return
    with contextlib.suppress(RuntimeError):  # its loop is closed: it never runs again
        loop.call_soon_threadsafe(task.cancel)


def stalled(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` can make no progress now: its loop is closed, or not running (a loop
    run by hand, ``run_until_complete``, and then left: only ``asyncio.run`` closes its
    loop). It runs again only if someone runs that loop, which may be never: nobody should
    wait for it. (The running loop of the caller is running: its tasks never stall.)"""
    loop = task.get_loop()
    return loop.is_closed() or not loop.is_running()


def running_task() -> asyncio.Task[Any] | None:
    """The running task; None outside one (a thread without a running loop, a coroutine
    closed by the collector or driven by hand)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class CancellationKept:
    """A block that ends by raising ``CancelledError`` when its task was cancelled inside it
    and the block went on as though not: the cancellation was lost there.

    Python 3.11's ``asyncio.wait_for`` returns the result of an awaitable that ended in the
    tick its caller was cancelled in, and drops the cancellation; redis-py sends every
    command under it. A read of the chain cancelled there returned its value: an
    ``asyncio.timeout`` around it did not time out, and a task cancelled by a shutdown went
    on running. Raised too when the block then failed (an ``Exception``). Only for a call
    whose result may be dropped (a read, a write that is finished either way), and never
    around a caller's code: Python 3.11's ``TaskGroup`` leaves its parent's count of
    cancellations up by one after a child failed, a cancellation nobody asked for."""

    __slots__ = ("_before", "_task")

    def __enter__(self) -> None:
        self._task = task = running_task()
        self._before = task.cancelling() if task is not None else 0

    def lost(self) -> bool:
        """The task was cancelled since the block began (and nothing raised it yet)."""
        task = self._task
        return task is not None and task.cancelling() > self._before

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, *_: object
    ) -> None:
        # An error after the lost cancellation (Redis stalled: the call then timed out) is
        # no answer for a cancelled caller either: the chain read past the tier to the source.
        if (exc is None or isinstance(exc, Exception)) and self.lost():
            raise asyncio.CancelledError from exc
