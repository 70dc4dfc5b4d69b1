"""An invalidation stopped in its first shared tier's delete leaves the other shared tiers owing.

A chain with two shared tiers (two Redis servers here; Redis then DynamoDB as a cache tier
alike) deletes from the slower one first, then the faster. A stop inside the first delete --
Ctrl-C's ``KeyboardInterrupt``, a signal handler's ``sys.exit()``, a task queue's time limit:
a ``BaseException`` -- left that tier owing its delete (``tiered_cache.owed``), but the loop
never reached the second: not owed, its old copy was read by every process, this one first,
until its ``ttl``. Seen failing on main: ``assert [cache.get(key) for key in KEYS] == ['new',
'new']`` with ``['old', 'old']``, read from the faster Redis.

Each entry point that deletes from the shared tiers is stopped in turn: ``invalidate``,
``invalidate_many``, ``invalidate_prefix``, ``clear``, a write of the ``"around"`` policy
(the source written, then every tier dropped), a decorated function's ``invalidate``; and on
the asyncio chain, an interrupt raised in the first tier's awaited delete, and a cancellation
of the write's own task there twice (two sweeps of the loop's tasks, a server's shutdown then
``asyncio.run``'s end: the first stops the write, the second the invalidation that finishes
it; one alone is finished, ``tiered_cache.write_tasks``).

Real parts: two private redis-servers. The stop is raised by the slower tier's client as
its delete is about to be sent (nothing of it sent), as a signal handler raises it there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from tiered_cache_redis import AsyncRedisTier, RedisTier, make_async_client

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.testing.interrupts import Interrupted
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource, DictSource

KEYS = ["p:a", "p:b"]


@pytest.fixture(scope="module")
def second_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class StoppedTier(RedisTier):
    """A Redis tier whose next delete (``stop``: armed) raises ``stopped`` before it is sent."""

    stop: BaseException | None = None

    def _stopping(self) -> None:
        stop, self.stop = self.stop, None
        if stop is not None:
            raise stop

    def delete_many(self, keys: Any) -> None:
        self._stopping()
        super().delete_many(keys)

    def delete_prefix(self, prefix: str) -> None:
        self._stopping()
        super().delete_prefix(prefix)

    def clear(self) -> None:
        self._stopping()
        super().clear()


class AsyncStoppedTier(AsyncRedisTier):
    """:class:`StoppedTier` for the asyncio chain: the stop raised inside the awaited delete;
    ``cancels``: the running task is cancelled there instead, in that many deletes in a row,
    as a sweep of the loop's tasks cancels it."""

    stop: BaseException | None = None
    cancels = 0

    async def _stopping(self) -> None:
        stop, self.stop = self.stop, None
        if stop is not None:
            raise stop
        if self.cancels:
            self.cancels -= 1
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)  # the cancellation lands here

    async def delete_many(self, keys: Any) -> None:
        await self._stopping()
        await super().delete_many(keys)

    async def delete_prefix(self, prefix: str) -> None:
        await self._stopping()
        await super().delete_prefix(prefix)

    async def clear(self) -> None:
        await self._stopping()
        await super().clear()


def stale(servers: list[RedisServer], namespace: str) -> list[str]:
    """The keys of ``KEYS`` still held (any value) by either Redis."""
    held = []
    for server in servers:
        watch = redis.Redis.from_url(server.url)
        held += [key for key in KEYS if watch.get(f"{namespace}:{key}") is not None]
        watch.close()
    return held


SYNC_STOPS: dict[str, Callable[[TieredCache], None]] = {
    "invalidate": lambda cache: cache.invalidate(KEYS[0]),
    "invalidate_many": lambda cache: cache.invalidate_many(KEYS),
    "invalidate_prefix": lambda cache: cache.invalidate_prefix("p:"),
    "clear": lambda cache: cache.clear(),
    "set_around": lambda cache: cache.set(KEYS[0], "new"),
    "decorated_invalidate": lambda cache: cache.cached(key="p:{name}")(
        lambda name: "new"
    ).invalidate(name="a"),  # type: ignore[attr-defined]
}


@pytest.mark.parametrize("how", sorted(SYNC_STOPS))
@pytest.mark.parametrize("stop", [Interrupted, SystemExit])
def test_a_stop_in_the_first_shared_delete_leaves_no_old_copy_in_the_second(
    redis_server: RedisServer,
    second_redis: RedisServer,
    namespace: str,
    how: str,
    stop: type[BaseException],
) -> None:
    source = DictSource()
    faster = RedisTier(redis.Redis.from_url(redis_server.url), name="faster", namespace=namespace)
    slower = StoppedTier(redis.Redis.from_url(second_redis.url), name="slower", namespace=namespace)
    cache = TieredCache(
        [MemoryTier(), faster, slower],
        source,
        write_policy="around" if how == "set_around" else "through",
    )
    source.items.update({key: "old" for key in KEYS})
    assert [cache.get(key) for key in KEYS] == ["old", "old"]
    assert sorted(stale([redis_server, second_redis], namespace)) == sorted(KEYS * 2)
    source.items.update({key: "new" for key in KEYS})  # changed behind the chain's back
    slower.stop = stop()
    with pytest.raises(stop):
        SYNC_STOPS[how](cache)
    assert slower.stop is None  # the stop was raised
    dropped = KEYS[:1] if how in ("invalidate", "set_around", "decorated_invalidate") else KEYS
    # Read through the chain: what each tier owes is paid before its read.
    assert [cache.get(key) for key in dropped] == ["new"] * len(dropped)
    cache.close()


ASYNC_STOPS: dict[str, Callable[[AsyncTieredCache], Any]] = {
    "invalidate": lambda cache: cache.invalidate(KEYS[0]),
    "invalidate_many": lambda cache: cache.invalidate_many(KEYS),
    "invalidate_prefix": lambda cache: cache.invalidate_prefix("p:"),
    "clear": lambda cache: cache.clear(),
}


@pytest.mark.anyio
@pytest.mark.parametrize("how", sorted(ASYNC_STOPS))
@pytest.mark.parametrize("stop", ["interrupt", "cancelled_twice"])
async def test_an_async_stop_in_the_first_shared_delete_leaves_no_old_copy_in_the_second(
    redis_server: RedisServer, second_redis: RedisServer, namespace: str, how: str, stop: str
) -> None:
    source = AsyncDictSource()
    faster = AsyncRedisTier(
        make_async_client(redis_server.url, timeout=2.0), name="faster", namespace=namespace
    )
    slower = AsyncStoppedTier(
        make_async_client(second_redis.url, timeout=2.0), name="slower", namespace=namespace
    )
    cache = AsyncTieredCache([MemoryTier(), faster, slower], source)
    source.inner.items.update({key: "old" for key in KEYS})
    assert [await cache.get(key) for key in KEYS] == ["old", "old"]
    assert sorted(stale([redis_server, second_redis], namespace)) == sorted(KEYS * 2)
    source.inner.items.update({key: "new" for key in KEYS})
    if stop == "interrupt":
        slower.stop = Interrupted()
        with pytest.raises(Interrupted):
            await ASYNC_STOPS[how](cache)
    else:
        # Two sweeps (a server's shutdown, then asyncio.run's end): the first stops the
        # write, the second the invalidation that finishes it (WriteTasks).
        slower.cancels = 2
        with pytest.raises(asyncio.CancelledError):  # the write's task, seen by its caller
            await ASYNC_STOPS[how](cache)
        assert slower.cancels == 0
    dropped = KEYS[:1] if how == "invalidate" else KEYS
    assert [await cache.get(key) for key in dropped] == ["new"] * len(dropped)
    await cache.aclose()
