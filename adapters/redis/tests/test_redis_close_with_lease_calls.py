"""``close()`` / ``aclose()`` while a lease call waits for Redis: no lease stays behind.

A chain closing gives back the leases its loads and writes hold, then closes its tiers. A
lease call still waiting for Redis's answer as it closes was in neither: its answer came back
after the give-back, to a load whose fill and give-back then found the tier closed, or (Redis
stalled past the tier's timeout) the call ran when Redis woke, under a token the closed tier
had dropped. Either way the lease held until ``lease_ttl``, and every process reading the key
waited ``lease_wait`` for a holder that was gone.

Real parts only: a private ``redis-server`` per test, stopped with ``SIGSTOP`` the moment a
lease call goes out (:class:`StopsAtLease`); it runs again within the tier's timeout (Redis
slow: the call answers as the chain closes) or after the chain closed (Redis stalled).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, RedisTier
from tiered_cache_redis.client import client_options

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource
from tiered_cache.tier import Entry, MissingType

#: Leases that outlast the test: one left behind stays to be seen.
LEASES = Protection.never_stale(lease_ttl=30.0, lease_wait=30.0)
#: How long Redis stays stopped when it is slow: well within the tier's timeout of 5 s.
SLOW = 0.3


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own: it is stopped and woken."""
    with RedisServer() as private:
        yield private


def leases_in(server: RedisServer) -> list[bytes]:
    """The lease keys in Redis, read on a new connection: Redis answers it after whatever its
    older connections had sent it (it reads those first as it wakes)."""
    client = redis.Redis.from_url(server.url)
    try:
        return sorted(key for key in client.keys("*") if key.endswith(b":lease"))
    finally:
        client.close()


def wake(server: RedisServer) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGCONT)


class Stopper:
    """Stops ``server`` (SIGSTOP) at the next lease call once :attr:`armed` (once):
    :attr:`asking` is set then, the call on its way to a Redis that does not read it. With
    ``wake_after``, a timer wakes Redis that many seconds later (Redis slow); else the test
    does (Redis stalled). ``timeout``: the tier's."""

    def __init__(self, server: RedisServer, wake_after: float | None, timeout: float) -> None:
        self.server = server
        self.wake_after = wake_after
        self.timeout = timeout
        self.armed = False
        self.asking = threading.Event()
        self.timer: threading.Timer | None = None

    def stop(self) -> None:
        if not self.armed:
            return
        self.armed = False
        assert self.server.pid is not None
        os.kill(self.server.pid, signal.SIGSTOP)
        if self.wake_after is not None:
            self.timer = threading.Timer(self.wake_after, wake, (self.server,))
            self.timer.start()
        self.asking.set()

    def end(self) -> None:
        """Redis runs again, whatever happened."""
        if self.timer is not None:
            self.timer.join(10)
        wake(self.server)


@pytest.fixture(params=["slow", "stalled"])
def stopper(request: pytest.FixtureRequest, server: RedisServer) -> Stopper:
    """A :class:`Stopper` for ``server``: Redis woken within the tier's timeout (``"slow"``),
    or by the test once the chain closed (``"stalled"``)."""
    if request.param == "slow":
        return Stopper(server, wake_after=SLOW, timeout=5.0)
    return Stopper(server, wake_after=None, timeout=0.1)


#: What a read (``how``) of a close's test is served: a lease call that waited for Redis
#: still ends with the value loaded.
SERVED = {"get": "v", "get_many": {"k": "v", "j": "v"}}


class StopsAtLease(RedisTier):
    """A Redis tier whose next lease call (a read's acquire, a write's steal) finds Redis
    stopped (:class:`Stopper`)."""

    def __init__(self, stopper: Stopper, timeout: float) -> None:
        client = redis.Redis.from_url(stopper.server.url, **client_options(timeout=timeout))
        super().__init__(client, namespace="n", owns_client=True)
        self.stopper = stopper

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        self.stopper.stop()
        return super().acquire_lease(key, ttl)

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        self.stopper.stop()
        return super().acquire_leases(keys, ttl)


def read(cache: TieredCache, how: str) -> object:
    if how == "get":
        return cache.get("k", lambda: "v")
    return cache.get_many(["k", "j"], lambda keys: dict.fromkeys(keys, "v"))


@pytest.mark.parametrize("how", SERVED)
def test_close_while_a_lease_call_waits_for_redis_leaves_no_lease(
    server: RedisServer, stopper: Stopper, how: str
) -> None:
    """A miss's lease call waits for Redis as ``close()`` runs. Slow (Redis answers within
    the tier's timeout, as the chain closes): the answer came back after close's give-back,
    and the lease held until lease_ttl. Stalled (past the timeout, the chain closed before
    Redis woke): the call ran when Redis woke, under a token the closed tier dropped. Seen
    failing before the fix: a lease left in each case (docs/testing.md). The closing tier
    now waits for its calls on the wire, then gives back the leases it took and did not see
    used or given back, before its pool closes (on a connection that needs no answer)."""
    tier = StopsAtLease(stopper, stopper.timeout)
    cache = TieredCache([MemoryTier(), tier], namespace="n", protection=LEASES)
    assert cache.get("warm", lambda: "up") == "up"  # connections in the pool, scripts loaded
    stopper.armed = True
    ended: list[object] = []
    reader = threading.Thread(target=lambda: ended.append(read(cache, how)))
    reader.start()
    try:
        assert stopper.asking.wait(10)
        cache.close()
    finally:
        stopper.end()
        reader.join(30)
    assert not reader.is_alive()
    assert ended == [SERVED[how]]
    assert leases_in(server) == []  # else they stay until lease_ttl
    assert leases_in(server) == []  # and nothing sent before it takes one after


class AsyncStopsAtLease(AsyncRedisTier):
    """:class:`StopsAtLease` for the asyncio tier."""

    def __init__(self, stopper: Stopper, timeout: float) -> None:
        options = client_options(timeout=timeout)
        options.pop("retry")  # the sync client's Retry
        client = aioredis.Redis.from_url(stopper.server.url, **options)
        super().__init__(client, namespace="n", owns_client=True)
        self.stopper = stopper

    async def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        self.stopper.stop()
        return await super().acquire_lease(key, ttl)

    async def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        self.stopper.stop()
        return await super().acquire_leases(keys, ttl)


async def warm() -> str:
    return "up"


async def aread(cache: AsyncTieredCache, how: str) -> object:
    async def one() -> str:
        return "v"

    async def many(keys: Sequence[str]) -> dict[str, str]:
        return dict.fromkeys(keys, "v")

    if how == "get":
        return await cache.get("k", one)
    return await cache.get_many(["k", "j"], many)


@pytest.mark.anyio
@pytest.mark.parametrize("how", SERVED)
async def test_aclose_while_a_lease_call_waits_for_redis_leaves_no_lease(
    server: RedisServer, stopper: Stopper, how: str
) -> None:
    """:func:`test_close_while_a_lease_call_waits_for_redis_leaves_no_lease` for the
    asyncio chain: ``aclose()`` while a coroutine's lease call waits for Redis."""
    tier = AsyncStopsAtLease(stopper, stopper.timeout)
    cache = AsyncTieredCache([MemoryTier(), tier], namespace="n", protection=LEASES)
    assert await cache.get("warm", warm) == "up"  # connections in the pool, scripts loaded
    stopper.armed = True
    reader = asyncio.ensure_future(aread(cache, how))
    try:
        await async_until(stopper.asking.is_set, "the reader at its lease call")
        await cache.aclose()
    finally:
        stopper.end()
        ended = await asyncio.wait_for(reader, 30)
    assert ended == SERVED[how]
    assert leases_in(server) == []  # else they stay until lease_ttl
    assert leases_in(server) == []


class HeldStores(AsyncDictSource):
    """An asyncio source whose ``store`` waits for ``go`` (once ``inside`` is set): a write
    held between its lease and its fill (it takes the lease before it writes the source)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.go = asyncio.Event(), asyncio.Event()

    async def store(self, key: str, value: Any) -> None:
        self.inside.set()
        await self.go.wait()
        await super().store(key, value)


class AsyncHeldGiveBack(AsyncRedisTier):
    """An asyncio Redis tier whose next give-back waits for ``go`` once it went out:
    ``aclose()`` held between its give-back and the closing of its tiers."""

    def __init__(self, url: str) -> None:
        super().__init__(aioredis.Redis.from_url(url), namespace="n", owns_client=True)
        self.armed = True
        self.inside, self.go = asyncio.Event(), asyncio.Event()

    async def release_lease(self, key: str, token: str) -> None:
        await super().release_lease(key, token)
        await self._hold()

    async def release_leases(self, tokens: Any) -> None:
        await super().release_leases(tokens)
        await self._hold()

    async def _hold(self) -> None:
        if self.armed:
            self.armed = False
            self.inside.set()
            await self.go.wait()


@pytest.mark.anyio
async def test_a_write_begun_as_aclose_gives_leases_back_takes_none(server: RedisServer) -> None:
    """``aclose()`` waited for the writes in flight, then gave back the loads' leases, and
    only then closed the chain's paths: a write begun in between stole a lease that nothing
    gave back (its fill then found the tier closed), held until lease_ttl. Seen failing
    before the fix (one lease left, aclose held at its give-back while a ``set`` began).
    Such a write is refused now (ChainClosedError): aclose closes the paths first, as close
    does."""
    tier = AsyncHeldGiveBack(server.url)
    store = HeldStores()
    cache = AsyncTieredCache([MemoryTier(), tier], store, namespace="n", protection=LEASES)
    loading, release = asyncio.Event(), asyncio.Event()

    async def load() -> str:
        loading.set()
        await release.wait()
        return "v"

    reader = asyncio.ensure_future(cache.get("held", load))  # a lease for aclose to give back
    writer: asyncio.Future[None] | None = None
    await asyncio.wait_for(loading.wait(), 10)
    closer = asyncio.ensure_future(cache.aclose())
    try:
        await asyncio.wait_for(tier.inside.wait(), 10)
        writer = asyncio.ensure_future(cache.set("j", "w"))
        await async_until(  # it ends (refused) or is held in its store, its lease taken
            lambda: writer.done() or store.inside.is_set(), "the write ended or in its store"
        )
    finally:
        tier.go.set()
        await asyncio.wait_for(closer, 10)
        store.go.set()
        release.set()
        ended = [reader] if writer is None else [reader, writer]
        await asyncio.wait_for(asyncio.gather(*ended, return_exceptions=True), 10)
    assert leases_in(server) == []  # else j's stays until lease_ttl
    assert writer is not None and type(writer.exception()).__name__ == "ChainClosedError"
