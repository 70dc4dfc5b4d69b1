"""A caller of an untimed load cancelled by the end of ``asyncio.run`` (its sweep of every task,
the loop then closed): the load is not begun again (nothing would run it to its end), and the
caller's Redis lease is given back before ``asyncio.run`` returns. A caller cancelled any other
way has its load begun again as a task of the loader (tests/test_async_impatient_loads.py);
begun in the sweep, that task was left pending as the loop closed, its lease held until
``lease_ttl``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer

from .leases_held import leases_in
from .test_redis_async import PATIENT, chain


class Hangs:
    """A loader that never answers; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.Event().wait()
        return "never"


def test_a_caller_cancelled_by_the_end_of_asyncio_run_begins_nothing_and_holds_no_lease(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    load = Hangs()
    kept: list[Any] = []

    async def service() -> AsyncTieredCache:
        cache = chain(redis_server.url, namespace, protection=PATIENT)
        kept.append(asyncio.create_task(cache.get("k", load)))  # a request still running
        await async_until(lambda: load.calls == 1, "the request loads")
        assert len(leases_in(redis_server, namespace)) == 1  # under the key's lease
        return cache  # the end of asyncio.run cancels the request

    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        cache = asyncio.run(service())
    assert load.calls == 1  # not begun again after the sweep
    assert leases_in(redis_server, namespace) == []
    assert cache.stats()["abandoned_loads"] == 0
    assert not [r.getMessage() for r in caplog.records if "event loop was closed" in r.getMessage()]


def test_a_load_left_running_is_stopped_by_the_end_of_asyncio_run_and_gives_its_lease_back(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A load begun again before the loop's end (its caller cancelled by hand) is a task the
    sweep cancels: it gives back the lease it took over, and a caller that joined it,
    cancelled by the same sweep, begins nothing."""
    load = Hangs()
    kept: list[Any] = []

    async def service() -> AsyncTieredCache:
        cache = chain(redis_server.url, namespace, protection=PATIENT)
        first = asyncio.create_task(cache.get("k", load))
        await async_until(lambda: load.calls == 1, "the first request loads")
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await async_until(lambda: load.calls == 2, "its load begun again")
        kept.append(asyncio.create_task(cache.get("k", load)))  # joins it
        await async_until(
            lambda: any(left[2].waits for left in cache._loader._abandoned.values()),
            "the next request joins the load left running",
        )
        assert len(leases_in(redis_server, namespace)) == 1
        return cache

    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        cache = asyncio.run(service())
    assert load.calls == 2
    assert leases_in(redis_server, namespace) == []
    assert cache.stats()["abandoned_loads"] == 1
    assert not [r.getMessage() for r in caplog.records if "event loop was closed" in r.getMessage()]
