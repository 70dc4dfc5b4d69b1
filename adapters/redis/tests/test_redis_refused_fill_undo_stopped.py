"""A refused fill whose undo is stopped part-way leaves no refused value in memory.

A fill the fence refuses after its write (an invalidation came while it was written: "no fill
after an invalidation") is undone: the copies it wrote are deleted, the shared tiers' first
and memory's last (:meth:`Fence._undo`, through :func:`~tiered_cache.deletes.deleting`). A
stop in the shared tier's delete -- Ctrl-C's ``KeyboardInterrupt``, a signal-raised time limit,
an asyncio cancellation -- left that delete owed by the shared tier, but the memory tier's
"owed" delete was no delete at all: the refused value stayed in this process's memory and was
served by its next read until the memory ``ttl``. Seen failing on both faces:
``assert cache.get("k") == "new"`` (``'old' == 'new'``).

Real parts: the session's redis-server. Fault injectors: the invalidation (a concurrent
writer's, from its own thread or task) lands as the fill is written, and the stop is raised
at the undo's Redis delete, as a signal handler (or a task's canceller) raises it there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence

import pytest
import redis
from tiered_cache_redis import AsyncRedisTier, RedisTier, make_async_client

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.buses import CuttableBus
from tiered_cache.testing.interrupts import Interrupted
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource, DictSource
from tiered_cache.tier import Entry


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class InvalidatedAsFilled(MemoryTier):
    """Runs ``meanwhile`` once, as the next fill of this tier is about to land."""

    meanwhile: Callable[[], None] | None = None

    def _landing(self) -> None:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()

    def set(self, key: str, entry: Entry) -> None:
        self._landing()
        super().set(key, entry)

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self._landing()
        super().set_many(entries)


class StoppedDelete(RedisTier):
    """Raises ``stop`` (once) in place of its next delete."""

    stop: BaseException | None = None

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        super().set_many(entries)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()

    meanwhile: Callable[[], None] | None = None

    def delete_many(self, keys: Sequence[str]) -> None:
        stop, self.stop = self.stop, None
        if stop is not None:
            raise stop
        super().delete_many(keys)


@pytest.mark.parametrize("stop", [Interrupted(), KeyboardInterrupt(), SystemExit(1)])
@pytest.mark.parametrize("lease", ["auto", "off"])
def test_a_threaded_refused_fill_stopped_in_its_undo_leaves_memory_empty(
    redis_server: RedisServer, namespace: str, lease: str, stop: BaseException
) -> None:
    source = DictSource({"k": "old", "j": "j"})
    memory = InvalidatedAsFilled()
    shared = StoppedDelete(redis.Redis.from_url(redis_server.url), namespace=namespace)
    cache = TieredCache([memory, shared], source, protection=Protection(lease=lease))

    def concurrent_write() -> None:
        source.items["k"] = "new"
        writer = threading.Thread(target=cache.invalidate, args=("k",))
        writer.start()
        writer.join()
        shared.stop = stop  # the undo's delete of the refused copy in Redis

    # Leased, the fill's last step before its second check is memory's write; without a
    # lease, a batch goes as steps (a one-key fill's plain calls undo in the same order).
    if lease == "auto":
        memory.meanwhile = concurrent_write
    else:
        shared.meanwhile = concurrent_write
    with pytest.raises(type(stop)):
        if lease == "auto":
            cache.get("k")
        else:
            cache.get_many(["k", "j"])
    assert cache.stats()["fills_refused"] >= 1
    assert cache.get("k") == "new"
    cache.close()


class InvalidatedAsWritten(AsyncRedisTier):
    """Awaits ``meanwhile`` once, after its next write; its next delete after that is
    cancelled as it is made (its task cancelled, as a caller's ``wait_for`` does)."""

    meanwhile: Callable[[], Awaitable[object]] | None = None
    cancel_delete = False

    async def _written(self) -> None:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            await meanwhile()
            self.cancel_delete = True

    async def set(self, key: str, entry: Entry) -> None:
        await super().set(key, entry)
        await self._written()

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        await super().set_many(entries)
        await self._written()

    async def delete_many(self, keys: Sequence[str]) -> None:
        if self.cancel_delete:
            self.cancel_delete = False
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)  # the cancellation lands as the delete is awaited
        await super().delete_many(keys)


@pytest.mark.anyio
async def test_an_asyncio_refused_fill_cancelled_in_its_undo_leaves_memory_empty(
    redis_server: RedisServer, namespace: str
) -> None:
    source = AsyncDictSource({"k": "old"})
    shared = InvalidatedAsWritten(
        make_async_client(redis_server.url, timeout=2.0), namespace=namespace
    )
    cache = AsyncTieredCache([MemoryTier(), shared], source, protection=Protection(lease="off"))

    async def concurrent_write() -> None:
        source.inner.items["k"] = "new"
        await asyncio.create_task(cache.invalidate("k"))

    shared.meanwhile = concurrent_write
    reader = asyncio.create_task(cache.get("k"))
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert cache.stats()["fills_refused"] >= 1
    assert await cache.get("k") == "new"
    await cache.aclose()


@pytest.mark.parametrize("stop", [Interrupted(), KeyboardInterrupt(), SystemExit(1)])
def test_a_refused_fill_stopped_in_its_undo_drops_what_a_gap_keeps_out_of_memory(
    redis_server: RedisServer, namespace: str, stop: BaseException
) -> None:
    """Two leased keys filled: as memory is written, one is invalidated (no tier may keep
    it) and a gap hides another process's write of the other (its leased write stands in
    Redis, but memory may not keep it). The undo stopped in Redis's delete of the first left
    the second, the gap's, in memory: this process served its value, older than Redis's,
    until memory's ``ttl``."""
    source = DictSource({"a": "a", "b": "old"})
    bus = CuttableBus()
    memory = InvalidatedAsFilled()
    shared = StoppedDelete(redis.Redis.from_url(redis_server.url), namespace=namespace)
    cache = TieredCache([memory, shared], source, bus=bus)
    other = TieredCache(
        [MemoryTier(), RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)],
        source,
        bus=bus,
    )

    def meanwhile() -> None:
        bus.cut()
        bus.failing = True
        other.set("b", "later")  # its message lost: a gap, once the bus is back
        bus.failing = False
        bus.restore()
        writer = threading.Thread(target=cache.invalidate, args=("a",))
        writer.start()
        writer.join()
        shared.stop = stop  # the undo's delete of "a" in Redis

    memory.meanwhile = meanwhile
    with pytest.raises(type(stop)):
        cache.get_many(["a", "b"])
    assert cache.stats()["fills_refused"] >= 2
    assert cache.get("b") == "later"
    assert cache.get("a") == "a"
    cache.close()
    other.close()
