"""Another thread's event loop that keeps running: for tests of a chain used from two loops
at once (the second one refused, ``EventLoopConflict``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["another_loop_running"]


@contextlib.contextmanager
def another_loop_running(
    begin: Callable[[], Awaitable[None]],
    end: Callable[[], Awaitable[None]] | None = None,
    *,
    timeout: float = 30.0,
) -> Iterator[None]:
    """Run ``begin()`` on a loop of its own in a thread, and keep that loop running while the
    block runs; then ``end()`` on it (to close what belongs to that loop), and let it end.
    ``timeout`` bounds the waits for the thread (a hung test fails instead of hanging)."""
    holding, done = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    async def hold() -> None:
        await begin()
        holding.set()
        while not done.is_set():  # the loop runs on
            await asyncio.sleep(0.01)
        if end is not None:
            await end()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failed.append(exc)
            holding.set()

    thread = threading.Thread(target=run, name="another-loop", daemon=True)
    thread.start()
    try:
        if not holding.wait(timeout):
            raise TimeoutError(f"the other loop did not begin within {timeout} s")
        if failed:
            raise failed[0]
        yield
    finally:
        done.set()
        thread.join(timeout)
    if failed:
        raise failed[0]
