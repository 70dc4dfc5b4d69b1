"""``aclose()`` interrupted: its caller gave up (a shutdown timeout, a second signal), another
``aclose()`` ran beside it (a signal handler's and the service's ``async with``), or the loop's
end cancelled it (a handler's close task left running as ``asyncio.run`` returns). The chain
ends closed all the same: every connection of its Redis tier and bus closed on the server,
its source closed, once.

The connections are counted on a real redis-server (``CLIENT LIST``), without a
``gc.collect()``; a write is held in the source's ``store`` so that the close is caught on
its way (it waits for the writes in flight first)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisBus, AsyncRedisTier
from tiered_cache_redis.async_tier import make_async_client

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource

from .server_connections import no_connection_opened_since


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class HeldSource(AsyncDictSource):
    """A source whose first ``store`` waits for ``go`` (``inside`` set once it waits), and
    which counts its closes."""

    def __init__(self) -> None:
        super().__init__({"a": "old"})
        self.inside, self.go = asyncio.Event(), asyncio.Event()
        self.closes = 0

    async def store(self, key: str, value: Any) -> None:
        self.inside.set()
        await self.go.wait()
        await super().store(key, value)

    async def aclose(self) -> None:
        self.closes += 1


def chain(url: str, namespace: str, source: HeldSource) -> AsyncTieredCache:
    return AsyncTieredCache(
        [
            MemoryTier(max_entries=100),
            AsyncRedisTier(make_async_client(url, timeout=2.0), namespace=namespace),
        ],
        source,
        namespace=namespace,
        bus=AsyncRedisBus(
            lambda: aioredis.Redis.from_url(url),
            f"{namespace}:invalidations",
            listen_with=lambda: redis.Redis.from_url(url),
        ),
    )


@pytest.fixture
def watch(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, set[int]]]:
    client = redis.Redis.from_url(redis_server.url)
    yield client, {int(info["id"]) for info in client.client_list()}
    client.close()


async def writing_held(cache: AsyncTieredCache, source: HeldSource) -> asyncio.Task[None]:
    """A write held in the source's store, the chain used first (its bus listening)."""
    assert await cache.get("a") == "old"
    writing = asyncio.create_task(cache.set("a", "new"))
    await source.inside.wait()
    return writing


@pytest.mark.anyio
async def test_an_aclose_its_caller_gave_up_on_is_finished_by_the_next_aclose(
    redis_server: RedisServer, namespace: str, watch: tuple[redis.Redis, set[int]]
) -> None:
    """Seen failing: the first ``aclose`` marked the chain closed and was cancelled as it
    waited for the write; the second returned at once, and the tier's and the bus's
    connections stayed open (``['evalsha', 'get', 'publish', 'subscribe']``), the source
    never closed."""
    source = HeldSource()
    cache = chain(redis_server.url, namespace, source)
    writing = await writing_held(cache, source)
    closing = asyncio.create_task(cache.aclose())
    await asyncio.sleep(0)
    closing.cancel()  # a shutdown timeout, say
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    source.go.set()
    await writing
    await cache.aclose()
    assert source.closes == 1
    assert await no_connection_opened_since(*watch) == []


@pytest.mark.anyio
async def test_a_second_aclose_returns_once_the_chain_is_closed(
    redis_server: RedisServer, namespace: str, watch: tuple[redis.Redis, set[int]]
) -> None:
    """Seen failing: the second ``aclose`` (a signal handler's task beside the service's
    ``async with``) returned at once, before the source and the tiers were closed:
    ``0 == 1`` closes of the source when it returned."""
    source = HeldSource()
    cache = chain(redis_server.url, namespace, source)
    writing = await writing_held(cache, source)
    first = asyncio.create_task(cache.aclose())
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.aclose())
    await asyncio.sleep(0)
    source.go.set()
    await second
    assert source.closes == 1  # checked before this task lets the first one run again
    await first
    await writing
    assert source.closes == 1
    assert await no_connection_opened_since(*watch) == []


def test_an_aclose_left_running_as_the_loop_ends_still_closes_the_chain(
    redis_server: RedisServer, namespace: str, watch: tuple[redis.Redis, set[int]]
) -> None:
    """A SIGTERM handler's ``create_task(cache.aclose())`` still running as the service's
    coroutine returns: ``asyncio.run`` cancels it with every task. Seen failing: the source
    was never closed (``0 == 1``)."""
    source = HeldSource()

    async def service() -> AsyncTieredCache:
        cache = chain(redis_server.url, namespace, source)
        await writing_held(cache, source)
        asyncio.get_running_loop().create_task(cache.aclose())
        await asyncio.sleep(0)
        return cache

    cache = asyncio.run(service())
    assert cache.closed
    assert source.closes == 1
    assert asyncio.run(no_connection_opened_since(*watch)) == []


class HeldDrain(AsyncRedisTier):
    """An asyncio Redis tier whose first close waits, once its calls have ended, for a
    ``go`` that never comes (``inside`` set then): a close the loop's end cancels there."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(make_async_client(url, timeout=2.0), namespace=namespace)
        self.inside = asyncio.Event()
        drain = self._leases.drain
        held = [True]

        async def drain_once_held() -> None:
            if held.pop() if held else False:
                self.inside.set()
                await asyncio.Event().wait()
            await drain()

        self._leases.drain = drain_once_held  # type: ignore[method-assign]


def test_a_close_the_loop_ends_inside_a_tier_closes_that_tier_all_the_same(
    redis_server: RedisServer, namespace: str, watch: tuple[redis.Redis, set[int]]
) -> None:
    """The loop's end cancels the chain's close inside the Redis tier's (after its calls
    ended); the close runs again after the sweep. Seen failing with only the chain's part
    of the fix: the tier had let go of its client before the cancel, and its second close
    found none to close (``['evalsha', 'get']`` open on the server)."""
    source = HeldSource()

    async def service() -> AsyncTieredCache:
        tier = HeldDrain(redis_server.url, namespace)
        cache = AsyncTieredCache([tier], source, namespace=namespace)
        assert await cache.get("a") == "old"
        asyncio.get_running_loop().create_task(cache.aclose())
        await tier.inside.wait()
        return cache

    cache = asyncio.run(service())
    assert cache.closed
    assert source.closes == 1
    assert asyncio.run(no_connection_opened_since(*watch)) == []
