"""The asyncio chain closed while a ``set`` is stuck in its bus publish on a stalled Redis
(SIGSTOP), on a ``redis.asyncio`` publisher with no socket timeout (a bus built by hand): the
chain's ``aclose()`` waits for its writes in flight the bus's ``close_wait`` at most, warns how
many it left running, and returns while Redis is still stopped; the write ends once Redis
resumes, its invalidation sent (late), and no connection is left open.

Seen failing: the chain's ``aclose()`` waited for the write without limit, so until Redis
resumed (the bus's own close was bounded; the chain's wait before it was not).

A real SIGSTOP under a real publish; waits are guards against a hang, never measures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer

# The bus's test's fixtures too (a private server each test, which it stops; asyncio).
from .test_redis_async_bus_close_stalled_publish import (  # noqa: F401
    STUCK,
    Stalled,
    anyio_backend,
    ended,
    server,
)


@pytest.mark.anyio
async def test_the_chains_aclose_returns_while_a_writes_publish_is_stuck(
    server: RedisServer,  # noqa: F811 (the fixture imported above)
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tiered_cache")
    stalled = Stalled(server)
    await stalled.warm()
    cache = AsyncTieredCache([MemoryTier(max_entries=10)], namespace="stalled", bus=stalled.bus)
    stalled.stop()
    try:
        # The first write's publish is on the wire; the second waits for it (the announcements'
        # lock), and publishes once the bus has closed.
        writers = [asyncio.create_task(cache.set(key, 1)) for key in ("k", "j")]
        await async_until(lambda: len(stalled.bus._publishes._running) == 1, "the publish sent")
        closer = asyncio.create_task(cache.aclose())
        closed_while_stopped = await ended(closer)
        writes_ended_while_stopped = [writer.done() for writer in writers]
    finally:
        stalled.resume()
    assert [closed_while_stopped, writes_ended_while_stopped] == [True, [False, False]]
    assert [r.getMessage() for r in caplog.records if "left running" in r.getMessage()] == [
        "the close stopped waiting for 2 write(s) left running (the bus's close_wait); "
        "each ends by itself"
    ]
    assert [await ended(writer) for writer in writers] == [True, True]
    assert [writer.result() for writer in writers] == [None, None]  # a publish never raises
    # Neither lost silently: the first sent once Redis resumed, the second refused by the
    # closed bus, logged ("could not announce") and counted.
    stats = cache.stats()
    assert (stats["bus_sent"], stats["bus_publish_errors"]) == (1, 1)
    assert [r.getMessage() for r in caplog.records if "could not announce" in r.getMessage()] == [
        "could not announce an invalidation on the bus (RuntimeError: bus 'stalled' is "
        "closed); other processes may serve their in-memory copy until it expires"
    ]
    assert await stalled.left_open() == []


def test_a_loop_ending_without_aclose_with_a_writes_publish_stuck_ends(
    server: RedisServer,  # noqa: F811 (the fixture imported above)
) -> None:
    """``asyncio.run`` ending without the chain's ``aclose()`` while a write's publish is
    stuck on the stopped Redis: the sweep cancels the write task; the write invalidates
    what it wrote and announces that, on a new connection whose handshake the stopped
    server never answers (the sweep's one cancellation spent), and the end of
    ``asyncio.run`` waited for it until Redis resumed. A write stopped so waits for its
    announcements the bus's ``close_wait`` at most, then gives them up, said and counted.
    Run in a forked child (``asyncio.run`` is what hangs); the server resumes only after
    the child reported, or was killed.

    Seen failing: ``TimeoutError: the forked child reported nothing within 15.0 s``."""

    async def main(pid: int) -> AsyncTieredCache:
        stalled = Stalled(server)
        await stalled.warm()
        cache = AsyncTieredCache([MemoryTier(max_entries=10)], namespace="s", bus=stalled.bus)
        os.kill(pid, signal.SIGSTOP)
        for key in ("k", "j"):  # never awaited: the service's coroutine returns
            asyncio.create_task(cache.set(key, 1))  # noqa: RUF006
        await async_until(lambda: len(stalled.bus._publishes._running) == 1, "on the wire")
        return cache

    # Each write's own invalidation as it was stopped, then its finishing's: each given up.
    assert given_up_at_loop_end(server, main) == [4, 4]


def given_up_at_loop_end(
    stopped: RedisServer, main: Callable[[int], Coroutine[Any, Any, AsyncTieredCache]]
) -> list[Any]:
    """``asyncio.run(main(pid))`` in a forked child (``asyncio.run`` is what hangs), ``main``
    stopping the server ``stopped`` (``pid``) and returning its chain with writes left
    stuck: the chain's ``bus_publish_errors`` and the announcements given up, as logged,
    once ``asyncio.run`` returned. The server resumes only after the child reported, or was
    killed."""
    pid = stopped.pid  # the server's process is the parent's: not known to a child
    assert pid is not None

    def body() -> list[Any]:
        said: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("tiered_cache").addHandler(handler)
        cache = asyncio.run(main(pid))
        given_up = [text for text in said if "gave up its announcement" in text]
        return [cache.stats()["bus_publish_errors"], len(given_up)]

    try:
        return cast(list[Any], in_a_child(body, timeout=STUCK))
    finally:
        os.kill(pid, signal.SIGCONT)
