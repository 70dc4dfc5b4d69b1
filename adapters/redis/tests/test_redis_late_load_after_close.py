"""A timed load left running when the chain closes: its late fill writes no closed tier.

A load past its caller's timeout goes on on a thread of its own and fills when it ends
(``SourceLoader._load_handing_off``). Ending after ``close()``, it wrote the closed memory
tier (which then held the value, though closed) and called the closed Redis tier, which
refused it: a warning of a tier failure and a tier error counted, for a chain already closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, LoadTimeout, TieredCache
from tiered_cache.testing.logged import ours
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING


def settings(server: RedisServer, namespace: str, lease: str) -> dict[str, Any]:
    """Memory and Redis; a load times out at 100 ms and goes on (on its worker, or task)."""
    return {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": server.url, "timeout": "5s"},
        ],
        # No soft timeout: no read here has a stale value for it.
        "protection": {"hard_timeout": "100ms", "soft_timeout": None, "lease": lease},
        "bus": {"kind": "off"},
    }


def quiet_and_empty(
    cache: TieredCache | AsyncTieredCache, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing logged, no tier error, and nothing in the closed memory tier."""
    assert [record.getMessage() for record in ours(caplog.records)] == []
    assert cache.tiers[0].peek("k") is MISSING  # the closed memory tier took nothing
    assert [tier["errors"] for tier in cache.stats()["tiers"]] == [0, 0]


@pytest.mark.parametrize("lease", ["auto", "off"])
def test_a_timed_load_ending_after_close_fills_no_tier_and_logs_nothing(
    redis_server: RedisServer, namespace: str, lease: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TieredCache.from_config(**settings(redis_server, namespace, lease))
    release = threading.Event()

    def slow() -> str:
        release.wait(10)
        return "late"

    with pytest.raises(LoadTimeout):
        cache.get("k", slow)  # the load goes on, on its worker
    cache.close()
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        release.set()
        assert cache.wait_background(10)  # the worker has ended (and done its fill, if any)
    quiet_and_empty(cache, caplog)


@pytest.mark.anyio
@pytest.mark.parametrize("lease", ["auto", "off"])
async def test_an_async_timed_load_left_running_at_aclose_fills_no_tier_and_logs_nothing(
    redis_server: RedisServer, namespace: str, lease: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Held already: the asyncio loader's aclose cancels the loads left running."""
    cache = AsyncTieredCache.from_config(**settings(redis_server, namespace, lease))
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "late"

    with pytest.raises(LoadTimeout):
        await cache.get("k", slow)
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        await cache.aclose()
        release.set()
        await asyncio.sleep(0)
    quiet_and_empty(cache, caplog)


def untimed(server: RedisServer, namespace: str, lease: str) -> dict[str, Any]:
    """Memory and Redis, loads untimed: the caller waits for its load, however long."""
    return {
        **settings(server, namespace, lease),
        "protection": {"hard_timeout": None, "soft_timeout": None, "lease": lease},
    }


@pytest.mark.parametrize("lease", ["auto", "off"])
def test_a_loader_that_closes_its_chain_fills_no_tier_and_logs_nothing(
    redis_server: RedisServer, namespace: str, lease: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The close waits for nothing the loader holds, and returns; the caller's fill then came
    # to the closed tiers: the Redis tier refused it (a tier failure logged and counted), and
    # the fill's undo was logged as a delete owed to a closed tier.
    cache = TieredCache.from_config(**untimed(redis_server, namespace, lease))

    def closing() -> str:
        cache.close()
        return "v"

    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        assert cache.get("k", closing) == "v"
        assert cache.wait_background(10)
    quiet_and_empty(cache, caplog)


@pytest.mark.parametrize("lease", ["auto", "off"])
def test_a_load_the_chain_closed_under_fills_no_tier_and_logs_nothing(
    redis_server: RedisServer, namespace: str, lease: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TieredCache.from_config(**untimed(redis_server, namespace, lease))
    loading, release = threading.Event(), threading.Event()
    got: list[str] = []

    def slow() -> str:
        loading.set()
        release.wait(10)
        return "late"

    reader = threading.Thread(target=lambda: got.append(cache.get("k", slow)))
    reader.start()
    assert loading.wait(10)
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        cache.close()  # does not wait for the caller's load
        release.set()
        reader.join(10)
    assert got == ["late"]  # the caller has its value
    quiet_and_empty(cache, caplog)


@pytest.mark.parametrize("lease", ["auto", "off"])
@pytest.mark.anyio
async def test_an_async_loader_that_closes_its_chain_fills_no_tier_and_logs_nothing(
    redis_server: RedisServer, namespace: str, lease: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def closing() -> str:
        await cache.aclose()
        return "v"

    cache = AsyncTieredCache.from_config(**untimed(redis_server, namespace, lease))
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        assert await cache.get("k", closing) == "v"
    quiet_and_empty(cache, caplog)
