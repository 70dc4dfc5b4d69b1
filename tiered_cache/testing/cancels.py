"""Cancel a coroutine at each of its awaits in turn, for tests of what a cancelled caller
(a client that went away, an ``asyncio.timeout``) leaves behind.

:func:`cancelled_at` runs a coroutine as a task cancelled right after its ``n``-th step (the
``n``-th time it suspended on something: a socket read, a lock, a sleep, another task), so a
test can walk ``n = 1, 2, ...`` over every await a call goes through, until the call ends
before its ``n``-th step. The steps are the real ones of a run against real servers: their
number may vary from run to run (a reply already in the buffer does not suspend), but every
await that suspends in a run is cancelled at in that run's walk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

# The pure-Python Task: the C one offers no hook between its steps.
_PyTask: type[asyncio.Task[Any]] = asyncio.tasks._PyTask  # type: ignore[attr-defined]


class _CancelledAtStep(_PyTask):  # type: ignore[misc,valid-type]
    """A task that cancels itself once it has suspended ``n`` times."""

    def __init__(self, coro: Coroutine[Any, Any, Any], n: int) -> None:
        super().__init__(coro, loop=asyncio.get_running_loop())
        self.n = n
        self.steps = 0
        self.fired = False

    def _Task__step(self, exc: BaseException | None = None) -> None:
        super()._Task__step(exc)
        self.steps += 1
        if self.steps == self.n and not self.done():
            self.fired = True
            self.cancel()


async def cancelled_at(coro: Coroutine[Any, Any, Any], n: int) -> bool:
    """Run ``coro`` as a task cancelled after its ``n``-th step (``n`` >= 1); True when it
    was cancelled there, False when it ended before (the walk over its awaits is done).

    Its outcome is not the question: a cancelled call raised ``CancelledError`` (or, caught
    inside, anything else), a call that ended returned or raised as it would have."""
    task = _CancelledAtStep(coro, n)
    try:
        await task
    except BaseException:  # the test asks what is left, not how it ended
        here = asyncio.current_task()
        if here is not None and here.cancelling():  # the test itself was cancelled
            raise
    return bool(task.fired)
