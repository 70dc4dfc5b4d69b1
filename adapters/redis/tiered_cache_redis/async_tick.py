"""Calls of one loop tick, sent as batches once the tick is over (:class:`TickBatch`).

A burst of coroutines (a service starting under traffic, a cleared memory tier) asks Redis
for one key each in the same pass of the event loop. Sent one by one, every call queues for
the pool and runs a timed step (the pool wait, a connect, a socket read) while the loop is
busy with the others: the timeouts measure the loop's queue, not Redis, and the tier's
breaker counts them as Redis failing. Gathered, the calls of one tick leave together when
the tick is over, as the batches ``send`` makes of them.

``send`` answers each call on its own (a value or an error), so each caller gets its own
outcome, and an error of a batch reaches each of its callers (the chain's breaker counts
it once per caller, as it counted the calls the batch replaces). A cancelled first caller
(its caller went away) does not cancel the others: their calls are sent again without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

Call = TypeVar("Call")
Result = TypeVar("Result")

_Waiting = list[tuple[Call, "asyncio.Future[Result]"]]


class TickBatch(Generic[Call, Result]):
    """Gathers the calls of a tick (per event loop: a batch never crosses loops) and sends
    them with ``send``, which returns one result or one exception per call, in order."""

    def __init__(
        self,
        send: Callable[[Sequence[Call]], Awaitable[Sequence[Result | Exception]]],
        unclaimed: Callable[[list[tuple[Call, Result]]], Coroutine[Any, Any, None]] | None = None,
        *,
        alone: Callable[[Call], Awaitable[Result]] | None = None,
    ) -> None:
        self._send = send
        #: How a call that is alone in its tick (:func:`runs_alone`) is sent at once, without
        #: the yield: its result, or raises its error. Given for the reads only: a read
        #: whose caller is cancelled once it was sent loses nothing, where a lease taken
        #: then would be held until its TTL (None: every first call yields).
        self._alone = alone
        #: Given the results of callers that stopped waiting (cancelled) before theirs came:
        #: what they would have had to undo (a lease taken for them) is undone there.
        self._unclaimed = unclaimed
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Call, asyncio.Future[Result]]]]
        self._pending = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, call: Call) -> Result:
        """``call``'s result, sent with the other calls of this tick.

        The first call of a tick leads: it lets the tick end (one yield to the loop, no task),
        then sends the calls gathered meanwhile and hands each waiter its outcome. With
        ``alone``, a call that nothing else of its tick can follow (:func:`runs_alone`) is
        sent at once: the yield would gather nothing and cost a pass of the loop (a lone L2
        hit's)."""
        loop = asyncio.get_running_loop()
        waiting = self._pending.get(loop)
        if waiting is not None:
            future: asyncio.Future[Result] = loop.create_future()
            waiting.append((call, future))
            return await future
        alone = self._alone
        if alone is not None and runs_alone(loop):
            return await alone(call)
        waiting = self._pending[loop] = []
        try:
            try:
                await asyncio.sleep(0)
            finally:
                del self._pending[loop]
            outcomes = await self._send([call] + [other for other, _ in waiting])
        except BaseException as exc:
            self._hand_over(loop, waiting, exc)
            raise
        self._settle(loop, waiting, outcomes[1:])
        outcome = outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _hand_over(
        self,
        loop: asyncio.AbstractEventLoop,
        waiting: list[tuple[Call, asyncio.Future[Result]]],
        exc: BaseException,
    ) -> None:
        """``send`` itself failed: the same error for every waiter. The leader was cancelled:
        the waiters' calls are sent again without it."""
        if isinstance(exc, Exception):
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        rest = [(call, future) for call, future in waiting if not future.done()]
        if rest and not loop.is_closed():
            self._track(loop.create_task(self._resend(rest)))

    async def _resend(self, waiting: list[tuple[Call, asyncio.Future[Result]]]) -> None:
        try:
            outcomes = await self._send([call for call, _ in waiting])
        except Exception as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in waiting:
                future.cancel()
            raise
        self._settle(asyncio.get_running_loop(), waiting, outcomes)

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        waiting: Sequence[tuple[Call, asyncio.Future[Result]]],
        outcomes: Sequence[Result | Exception],
    ) -> None:
        """Hand each waiter its outcome; the results of those that stopped waiting go to
        ``unclaimed`` (a lease's token dropped here held the lease until its TTL), in a task
        :meth:`drain` waits for: awaited here, the sender's own result would be lost if it
        were cancelled meanwhile."""
        dropped: list[tuple[Call, Result]] = []
        for (call, future), outcome in zip(waiting, outcomes, strict=True):
            if future.done():
                if not isinstance(outcome, Exception):
                    dropped.append((call, outcome))
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if dropped and self._unclaimed is not None:
            self._track(loop.create_task(self._unclaimed(dropped)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Let the batches sent for a cancelled leader, and the give-backs of callers that
        stopped waiting, end."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def stop_here(self, within: float) -> None:
        """The running loop ends: the batches sent for a cancelled leader and the give-backs
        of callers that stopped waiting, on this loop, are cancelled, and waited for
        ``within`` seconds at most. One made during the sweep at the end of ``asyncio.run``
        is not among the tasks it cancels: it went on into a pool disconnected under it, or
        was destroyed pending as the loop closed (one made before was cancelled on the
        wire). What they took or gave back is their owner's to finish (the tier's loop end)."""
        loop = asyncio.get_running_loop()
        tasks = [task for task in self._sending if task.get_loop() is loop]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=within)


def runs_alone(loop: asyncio.AbstractEventLoop) -> bool:
    """True when no other code of this tick can run before a call that yields to ``loop``
    would resume: asyncio's own loop (``BaseEventLoop``) with no callback ready and no task
    factory. Its next pass runs the yielding task's step first, ahead of the callbacks of
    the I/O and the timers that pass finds, so a yield there gathers no other call; a task
    factory (an eager one, Python 3.12's) may run a new task's first steps inside its
    creator's, outside the ready queue. Any other loop (uvloop): False, the yield is kept.

    ``_ready`` is the loop's queue of callbacks to run (CPython's, no public accessor)."""
    return (
        isinstance(loop, asyncio.BaseEventLoop)
        and not loop._ready  # type: ignore[attr-defined]
        and loop.get_task_factory() is None
    )


def rounds(keys: Sequence[str]) -> list[list[int]]:
    """The positions of ``keys`` in rounds with each key at most once, in order: the n-th
    call for a key goes in round n, so the calls for one key run one after the other, as
    they would have one by one (a batch of leases cannot hold a key twice)."""
    seen: dict[str, int] = {}
    out: list[list[int]] = []
    for index, key in enumerate(keys):
        n = seen[key] = seen.get(key, -1) + 1
        if n == len(out):
            out.append([])
        out[n].append(index)
    return out
