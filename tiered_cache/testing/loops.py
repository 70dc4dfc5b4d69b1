"""Another thread's event loop that keeps running: for tests of a chain used from two loops
at once (the second one refused, ``EventLoopConflict``); a loop run by hand and left open;
and what a loop closed by hand leaves, collected quietly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["another_loop_running", "collected_unclosed", "left_open"]


@contextlib.contextmanager
def left_open() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop the block runs by hand and leaves open; closed after the block as its user
    would at exit, with its end (what the chain began there is then let go of by it)."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@contextlib.contextmanager
def collected_unclosed() -> Iterator[None]:
    """Hold the collector off while the block runs a loop by hand and closes it (no
    ``shutdown_asyncgens``): what was that loop's (a task left pending, its connections)
    stays alive for the block, then is collected, its complaints (a pending task destroyed,
    an unclosed transport) silenced: they are the loop closed by hand, not the code tested."""
    gc.disable()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unraisable, sys.unraisablehook = sys.unraisablehook, lambda _: None
            try:
                gc.collect()
            finally:
                sys.unraisablehook = unraisable
        gc.enable()


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
