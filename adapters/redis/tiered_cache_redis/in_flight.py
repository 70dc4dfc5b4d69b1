"""The calls a Redis tier has on the wire, so that closing it waits for them to end before it
closes the client.

Closed under them, the client's pool disconnected their connections; each call's retry then
reconnected its connection (or the call took a new one from the emptied pool) and gave it
back to the closed pool still connected: a socket nobody closed, until the collector found
the pool (1 to 8 per close of a chain under load). Once closing, the tier refuses new calls
(``RuntimeError: tier ... is closed``, as after close); the calls already running end as
they would have -- each is bounded by the client's own timeouts.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from tiered_cache.loops import all_end_within, stalled


def closed_error(name: str) -> RuntimeError:
    """What a call of a closed tier raises."""
    return RuntimeError(f"tier {name!r} is closed")


class CallsInFlight:
    """The calls of a threaded tier running (``with calls: ...`` around each call)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._idle = threading.Condition(threading.Lock())
        self._running = 0
        self._closing = False

    def __enter__(self) -> None:
        with self._idle:
            if self._closing:
                raise closed_error(self._name)
            self._running += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._idle:
            self._running -= 1
            if not self._running:
                self._idle.notify_all()

    def close(self) -> None:
        """Refuse new calls, then wait for the ones running to end."""
        with self._idle:
            self._closing = True
            self._idle.wait_for(lambda: not self._running)


class AsyncCallsInFlight:
    """The tasks running a call of an asyncio tier (``with calls: ...`` around each call), of
    any event loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()  # loops of several threads may share the tier
        self._tasks: dict[asyncio.Task[object], int] = {}
        self._closing = False

    def __enter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None  # a coroutine of the tier runs in a task
        with self._lock:
            if self._closing:
                raise closed_error(self._name)
            self._tasks[task] = self._tasks.get(task, 0) + 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        with self._lock:
            left = self._tasks.pop(task) - 1
            if left:
                self._tasks[task] = left

    async def close(self) -> None:
        """Refuse new calls, then wait for the ones running to end (those of a loop closed or
        left not running never do: not waited for)."""
        here = asyncio.current_task()
        with self._lock:
            self._closing = True
            running = [task for task in self._tasks if task is not here and not stalled(task)]
        await all_end_within(running, None)
