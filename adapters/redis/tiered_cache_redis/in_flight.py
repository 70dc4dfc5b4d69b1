"""The calls a Redis tier (or the threaded bus's publisher) has on the wire, so that closing
it waits for them to end before it closes the client.

Closed under them, the client's pool disconnected their connections; each call's retry then
reconnected its connection (or the call took a new one from the emptied pool) and gave it
back to the closed pool still connected: a socket nobody closed, until the collector found
the pool (1 to 8 per close of a chain under load). Once closing, the tier refuses new calls
(``RuntimeError: tier ... is closed``, as after close); the calls already running end as
they would have -- each is bounded by the client's own timeouts.

One counter for both tiers: calls are counted by what runs them -- the thread, or the task
(an asyncio tier's calls may come from several loops, and a task of a loop closed or left
not running never ends: its calls are not waited for). Only closing waits on the counter's
condition: a call takes its lock (reentrant: see ``__init__``) as it starts and as it ends,
and wakes a waiter only when the tier is closing and it was the last call of its thread or
task running. A close that stops waiting (either bus's, bounded) leaves what it would have
done next to the last call to end: the client is closed after its last call either way. The
asyncio bus's calls run in ``async with``, so that the last of them awaits the publisher's
``aclose()`` on its loop as it ends; what that close raises is logged, not raised into the
call's caller (whose call itself went as it went).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterable
from types import TracebackType
from typing import Any, cast

from tiered_cache.logs import logger_for
from tiered_cache.loops import all_end_within, stalled


def closed_error(name: str, kind: str = "tier") -> RuntimeError:
    """What a call of a closed tier (or bus: ``kind``) raises."""
    return RuntimeError(f"{kind} {name!r} is closed")


class CallsInFlight:
    """The calls of a tier running (``with calls: ...`` around each call), counted by their
    ``owner`` (``threading.get_ident`` for the threaded tier, :func:`current_task` for the
    asyncio tier's: called as each call starts and ends, on the call's own thread). The asyncio
    bus's calls use ``async with calls: ...`` (:meth:`aclose`'s ``then``)."""

    __slots__ = (
        "_athen",
        "_closing",
        "_idle",
        "_kind",
        "_lock",
        "_name",
        "_owner",
        "_running",
        "_then",
    )

    def __init__(self, name: str, owner: Callable[[], Hashable], kind: str = "tier") -> None:
        self._name = name
        self._kind = kind
        self._owner = owner
        # The threaded tier's threads, or loops of several. Reentrant: a signal handler that
        # closes the chain (SIGTERM) runs on the main thread between two of its steps, maybe
        # while that thread holds this lock as a call starts or ends; with a plain lock the
        # handler's close waited for the frame it interrupted, for ever.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # what close waits on
        #: ``owner: calls of it running``.
        self._running: dict[Hashable, int] = {}
        self._closing = False
        #: What a close that stopped waiting left to the last call to end (:meth:`close`).
        self._then: Callable[[], object] | None = None
        #: What an :meth:`aclose` that stopped waiting left to the last call to end, awaited.
        self._athen: Callable[[], Awaitable[object]] | None = None

    def __enter__(self) -> None:
        owner = self._owner()
        with self._lock:
            if self._closing:
                raise closed_error(self._name, self._kind)
            running = self._running
            running[owner] = running.get(owner, 0) + 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        owner = self._owner()
        then = None
        with self._lock:
            running = self._running
            left = running.pop(owner) - 1
            if left:
                running[owner] = left
            elif self._closing:
                self._idle.notify_all()
                if not running:  # the last: what a close left to it, if it did
                    then, self._then = self._then, None
        if then is not None:
            self._run_left(then)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """As :meth:`__exit__`; then, if this was the last of the calls :meth:`aclose` stopped
        waiting for, await what it left (the publisher's close), on this call's loop."""
        self.__exit__(exc_type, exc, traceback)
        then = self._left_to_await(current_task())
        if then is not None:
            await self._await_left(then)

    def _left_to_await(self, here: asyncio.Task[Any]) -> Callable[[], Awaitable[object]] | None:
        """What an :meth:`aclose` left to the last call, taken if none it waits for runs."""
        with self._lock:
            if self._athen is None or _waited_for(self._running, here):
                return None
            athen, self._athen = self._athen, None
            return athen

    def _run_left(self, then: Callable[[], object]) -> None:
        try:
            then()
        except Exception:
            self._log_left_failed()

    async def _await_left(self, then: Callable[[], Awaitable[object]]) -> None:
        try:
            await then()
        except Exception:
            self._log_left_failed()

    def _log_left_failed(self) -> None:
        """The close left to a call failed: said, not raised into the call's caller (the
        call went as it went, and a close's error is no answer to it)."""
        logger_for(f"{self._kind}.{self._name}").exception(
            "%s %r: closing its client after its last call failed", self._kind, self._name
        )

    @property
    def closing(self) -> bool:
        """Whether new calls are refused (:meth:`close` or :meth:`aclose` began)."""
        return self._closing

    def after_fork(self) -> CallsInFlight:
        """The count a forked child goes on with (every tier's and bus's ``after_fork_in_child``):
        none of the parent's calls runs there (its threads and tasks are not the child's), and
        once the parent's close began (closing or closed) the child's calls are refused too, as
        in the parent. A count of its own: a thread of the parent may have held this one's lock
        at the fork (a call starting or ending), for good in the child. It waits for nothing
        and asks no owner (:meth:`close` asks for the running task, and a fork's hook runs in
        none)."""
        child = CallsInFlight(self._name, self._owner, self._kind)
        child._closing = self._closing  # read without the lock: see above
        return child

    def close(
        self, *, within: float | None = None, then: Callable[[], object] | None = None
    ) -> None:
        """Refuse new calls, wait for the ones running on other threads to end (the threaded
        tier and bus), then run ``then`` (the bus's: close its publisher). Not for those of the
        thread closing: a signal handler that closes the chain (a service's SIGTERM handler)
        runs on the main thread in the middle of whatever it was doing, a call of this tier
        among others, which cannot end before the handler returns -- waited for, the process
        hung there for ever. ``then`` is left to such a call, as below: run under it, the
        publisher's close disconnected its connection, and its retry left one open.

        ``within``: wait that long at most; past it the close returns, and ``then`` is run by
        the last call to end, on its thread as it ends. So a call that outlives the close
        still ends before what it runs on is closed: closed under it, its retry reconnected,
        and gave the closed pool a connection nobody closed (a publish stuck on a stalled
        Redis, on a client with no socket timeout, held the bus's close until Redis resumed)."""
        here = self._owner()
        with self._lock:
            self._closing = True
            others_ended = self._idle.wait_for(lambda: not self._running.keys() - {here}, within)
            if not others_ended or here in self._running:
                self._then = then
                return
        if then is not None:
            then()

    async def settled(self) -> None:
        """Wait until the tasks with a call of the running loop in flight have ended, those
        that made one meanwhile too (the asyncio tier's, as its loop ends; each call is
        bounded by the client's timeouts)."""
        loop = asyncio.get_running_loop()
        here = asyncio.current_task()
        while True:
            with self._lock:
                tasks = cast(list[asyncio.Task[Any]], list(self._running))
            running = [task for task in tasks if task is not here and task.get_loop() is loop]
            if not running:
                return
            await all_end_within(running, None)

    async def aclose(
        self,
        *,
        within: float | None = None,
        then: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Refuse new calls, then wait for the tasks running them to end (the asyncio tier's;
        the task closing, and those of a loop closed or left not running, never do: not
        waited for), then await ``then`` (the asyncio bus's: close its publisher).

        ``within``: wait that long at most, as :meth:`close`; past it (or cancelled while it
        waits) the close leaves ``then`` to the last of those calls to end, awaited by its
        task as the call ends (``async with``). So a publish stuck on a stalled Redis, on a
        client with no socket timeout, holds the close no longer than ``within``, and still
        ends before the publisher is closed."""
        here = asyncio.current_task()
        with self._lock:
            self._closing = True
            tasks = cast(list[asyncio.Task[Any]], list(self._running))
        try:
            ended = await all_end_within(_waited_for(tasks, here), within)
        except asyncio.CancelledError:
            if then is not None and not self._leave_to_the_last(then, here):
                await self._await_left(then)  # none left to do it
            raise
        if then is None or (not ended and self._leave_to_the_last(then, here)):
            return
        await then()

    def _leave_to_the_last(
        self, then: Callable[[], Awaitable[object]], here: asyncio.Task[Any] | None
    ) -> bool:
        """Whether a call waited for still runs: ``then`` is then left to the last of them."""
        with self._lock:
            if not _waited_for(self._running, here):
                return False
            self._athen = then
            return True


def _waited_for(
    owners: Iterable[Hashable], here: asyncio.Task[Any] | None
) -> list[asyncio.Task[Any]]:
    """The tasks among ``owners`` an :meth:`CallsInFlight.aclose` waits for: not ``here``
    (the task closing, or the call's own as it ends), nor one that makes no progress."""
    tasks = cast(Iterable[asyncio.Task[Any]], owners)
    return [task for task in tasks if task is not here and not stalled(task)]


def current_task() -> asyncio.Task[Any]:
    """The task running an asyncio tier's call: what :class:`CallsInFlight` counts it under."""
    task = asyncio.current_task()
    assert task is not None  # a coroutine of the tier runs in a task
    return task
