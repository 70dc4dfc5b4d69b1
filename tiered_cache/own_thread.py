"""Blocking calls awaited from daemon threads the end of the event loop does not wait for
(:class:`OwnThreads`).

``asyncio.to_thread`` runs its call in the loop's default executor, whose threads the end of
``asyncio.run`` joins (``shutdown_default_executor``: without limit before Python 3.12), once
every task has ended; and the interpreter's exit joins every executor's threads. A call stuck
there (a threaded bus's publish on a stalled Redis, its publisher with no socket timeout)
held the loop's end until Redis resumed, though every task had stopped waiting for it. A
daemon thread is joined by neither: the caller bounds its own wait, and the call ends by
itself, or with the process.

A thread started for each call cost 99 us an awaited no-op against the executor's 31 us: the
threads here are kept and reused, one for each call running at once (a single one, as long
as the calls do not overlap). Kept until the close only, an asyncio chain dropped without
``aclose()`` (forgotten, or built again by a framework's reload) left its workers waiting
for good (20 chains: 58 threads): a worker with no call for :data:`IDLE_END` seconds ends,
as a thread started for each call did after its call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

__all__ = ["OwnThreads"]

T = TypeVar("T")

#: Seconds a worker waits for its next call before it ends. Publishes closer together than
#: this (a service's writes) share a worker; after a quiet spell the next call starts one
#: again (a thread start, about 0.1 ms, against a wait of this long).
IDLE_END = 30.0

#: A call handed to a worker, which returns how to tell its outcome; None tells an idle worker
#: to end (:meth:`OwnThreads.close`).
Job = Callable[[], Callable[[], None]] | None


class OwnThreads:
    """Daemon threads named ``name``, started as needed and kept for the next calls.

    A call goes to a worker waiting for one, else to a new worker: a call stuck (a publish on
    a stalled Redis) never holds the next one back (a threaded bus's writer asks its breaker
    before it waits for the publish in flight). Closed, the idle workers end, and the busy
    ones once their call has returned; a call after the close still runs, in a worker that
    ends after it. A worker given no call for ``idle`` seconds ends too.
    """

    def __init__(self, name: str, *, idle: float = IDLE_END) -> None:
        self._name = name
        self._idle_end = idle
        self._forget()

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        #: Workers waiting for a job that none has been handed for yet.
        self._idle = 0
        self._closed = False

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker, awaited (the context copied, as
        ``asyncio.to_thread`` does). Cancelled, the wait ends; the call goes on, its outcome
        dropped."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()

        def call() -> Callable[[], None]:
            try:
                result = context.run(function, *args)
            except BaseException as exc:
                told = partial(_raised, outcome, exc)
            else:
                told = partial(_returned, outcome, result)
            return partial(_tell, loop, told)

        self._hand(call)
        return await outcome

    def _hand(self, job: Callable[[], Callable[[], None]]) -> None:
        with self._lock:  # the job and its worker's promise together (see _work)
            self._jobs.put(job)
            if self._idle:
                self._idle -= 1
                return
        threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            try:
                job = jobs.get(timeout=self._idle_end)
            except queue.Empty:
                if self._retire():
                    return
                continue  # a job was handed to this worker meanwhile: it is in the queue
            if job is None:
                return
            tell = job()
            # Idle before the caller is told: its next call, made as soon as it is, finds
            # this worker (else a thread was started for each call made one after another).
            with self._lock:
                closed = self._closed
                if not closed:
                    self._idle += 1
            tell()
            if closed:
                return

    def _retire(self) -> bool:
        """Whether a worker whose wait ran out ends: yes while more workers wait than jobs
        were handed to them (``_idle``); else a job is on its way to a waiting one, maybe
        this one, which waits again (ending, it could leave that job to no worker)."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                return True
            return False

    def close(self) -> None:
        """End the idle workers (the busy ones end after their call)."""
        with self._lock:
            self._closed = True
            for _ in range(self._idle):
                self._jobs.put(None)
            self._idle = 0

    def after_fork_in_child(self) -> None:
        """In a forked child: the parent's workers do not exist here, and its lock may have
        been held at the fork."""
        self._forget()


def _tell(loop: asyncio.AbstractEventLoop, told: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
        loop.call_soon_threadsafe(told)


def _returned(outcome: asyncio.Future[T], result: T) -> None:
    if not outcome.done():  # not given up (cancelled) meanwhile
        outcome.set_result(result)


def _raised(outcome: asyncio.Future[Any], exc: BaseException) -> None:
    if not outcome.done():
        outcome.set_exception(exc)
