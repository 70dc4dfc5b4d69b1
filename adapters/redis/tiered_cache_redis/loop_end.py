"""The event loop an asyncio Redis tier's connections belong to, and what happens when it
ends.

A ``redis.asyncio`` connection belongs to the loop it was opened on. A chain kept across
``asyncio.run`` calls (a job runner that runs each job in a loop of its own) kept the
connections of the first loop, parked by the reader and pooled by the client: the next loop's
calls tried them, and each failed (``RuntimeError: Event loop is closed``, an error of the
tier for its breaker) until none was left -- 9 errors over 5 jobs. Once used on a loop, the
tier keeps a task there that ``asyncio.run``'s end cancels (it cancels every task left, then
runs them to their end, the loop still running): it disconnects the tier's connections then,
and the next loop opens its own. (A loop run by hand and left without ``asyncio.run``'s end
never runs that task: its connections are tried by the next loop, as before.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tiered_cache.logs import tier_logger
from tiered_cache.loops import cancel


class LoopEnd:
    """Calls ``let_go`` (a coroutine function: disconnect the connections) on the loop the
    tier is used on, when that loop ends."""

    def __init__(self, name: str, let_go: Callable[[], Awaitable[None]]) -> None:
        self._name = name
        self._let_go = let_go
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None

    def here(self) -> None:
        """Called by each call of the tier, on its loop: one look when nothing changed."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._move_to(loop)

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        previous, watch = self._loop, self._watch
        if previous is not None and watch is not None and not watch.done():
            if previous.is_running():
                # Two loops at once (threads): not supported, the connections are the first
                # loop's (redis-py fails the other's calls). Refusing the second loop's calls
                # outright was worse: its invalidations never reached Redis, and the first
                # loop read the old values there.
                return
            cancel(watch)  # a loop left not running: ended, should it ever run again
        self._loop = loop
        self._watch = loop.create_task(self._until_the_loop_ends())

    async def _until_the_loop_ends(self) -> None:
        try:
            await asyncio.get_running_loop().create_future()  # never set: only cancelled
        finally:
            if self._watch is asyncio.current_task():  # not stopped, nor moved on
                try:
                    await self._let_go()
                except Exception:
                    # Connections another loop opened meanwhile (two loops at once, not
                    # supported) cannot be disconnected from this one: left as they are.
                    tier_logger(self._name).debug("could not let go of a loop's connections")

    def stop(self) -> None:
        """The tier is closing: nothing to watch any more (its close disconnects)."""
        watch, self._watch, self._loop = self._watch, None, None
        if watch is not None and not watch.done():
            cancel(watch)

    def forget(self) -> None:
        """In a forked child: the parent's loop never runs here."""
        self._watch, self._loop = None, None
