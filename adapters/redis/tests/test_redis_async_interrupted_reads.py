"""An asyncio read interrupted between sending its command and reading the reply must not
leave that reply on a connection another read will use (the sync tier's
test_redis_interrupted_reads, for :class:`~tiered_cache_redis.async_wire.AsyncWireReader`).

``redis.asyncio`` disconnects a connection whose send or read is itself cancelled or fails.
An exception that lands after the send returned and before the read began is seen by
neither: a signal handler's (Celery's soft time limit, an ``alarm``-based timeout, a
``KeyboardInterrupt`` raised into a loop run by ``run_until_complete``). The reader parked
that connection with the reply still waiting on it, and the next read on it got the previous
key's value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tiered_cache_redis import AsyncRedisTier, make_async_client
from tiered_cache_redis.async_coalesce import CoalescedReads
from tiered_cache_redis.async_wire import AsyncWireReader

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.testing import FakeClock
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING, Entry, MissingType


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SoftTimeLimit(Exception):
    """What a signal handler raises into the code it interrupts."""


def interrupt_after_the_next_send(conn: Any, error: BaseException) -> None:
    """The next command on ``conn`` is sent whole, then ``error`` is raised (the instant a
    signal handler's exception lands between the send and the read)."""
    send = conn.send_packed_command

    async def sent_then_interrupted(*args: Any, **kwargs: Any) -> None:
        conn.send_packed_command = send
        await send(*args, **kwargs)
        raise error

    conn.send_packed_command = sent_then_interrupted


@pytest.fixture
async def tier(redis_server: RedisServer, namespace: str) -> AsyncIterator[AsyncRedisTier]:
    tier = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    await tier.set_many({key: Entry(key.upper(), 0.0) for key in ("a", "b", "c")})
    yield tier
    await tier.clear()
    await tier.aclose()


async def parked(tier: AsyncRedisTier) -> Any:
    """The connection the tier's next read takes (after a read parked one)."""
    assert await tier.get("a") is not MISSING
    reads = tier._reads
    assert isinstance(reads, CoalescedReads)
    wire = reads._reads
    assert isinstance(wire, AsyncWireReader)
    return wire._parked[-1]


def value(entry: Entry | MissingType) -> Any:
    return MISSING if entry is MISSING else entry.value


@pytest.mark.anyio
@pytest.mark.parametrize("error", [SoftTimeLimit("soft limit"), KeyboardInterrupt()])
async def test_an_interrupted_read_leaves_no_reply_for_the_next_read(
    tier: AsyncRedisTier, error: BaseException
) -> None:
    interrupt_after_the_next_send(await parked(tier), error)
    with pytest.raises(type(error)):
        await tier.get("a")
    assert [value(await tier.get(key)) for key in ("b", "c", "a")] == ["B", "C", "A"]
    many = await tier.get_many(["c", "a", "b"])
    assert {key: entry.value for key, entry in many.items()} == {"c": "C", "a": "A", "b": "B"}
    assert [value(await tier.get(key)) for key in ("a", "b")] == ["A", "B"]


def memory_over_redis(url: str, namespace: str) -> tuple[AsyncTieredCache, AsyncRedisTier]:
    """An async chain memory -> Redis (at ``url``), on a fake clock."""
    clock = FakeClock()
    redis_tier = AsyncRedisTier(
        make_async_client(url, timeout=2.0), namespace=namespace, clock=clock
    )
    memory = MemoryTier(max_entries=100, clock=clock)
    return AsyncTieredCache([memory, redis_tier], ttl=60, clock=clock), redis_tier


@pytest.mark.anyio
async def test_an_async_chain_serves_no_other_keys_value_after_an_interrupted_read(
    redis_server: RedisServer, namespace: str
) -> None:
    """Through the chain: the interrupted read counts as a Redis failure and the loader
    answers it; every read after it gets its own key's value, in memory too."""
    values = {"a": "A", "b": "B", "c": "C"}
    cache, redis_tier = memory_over_redis(redis_server.url, namespace)

    def loader(key: str) -> Any:
        async def load() -> str:
            return values[key]

        return load

    try:
        for key in values:
            await cache.get(key, loader(key))  # loaded, and filled into Redis
        cache.tiers[0].clear()  # type: ignore[union-attr]  # memory empty: Redis next
        interrupt_after_the_next_send(await parked(redis_tier), SoftTimeLimit("soft limit"))
        assert await cache.get("a", loader("a")) == "A"  # Redis skipped, the loader answered
        assert cache.stats()["tiers"][1]["errors"] == 1
        assert [await cache.get(key, loader(key)) for key in ("b", "c", "a")] == ["B", "C", "A"]
        cache.tiers[0].clear()  # type: ignore[union-attr]
        assert [await cache.get(key, loader("nobody")) for key in ("c", "b")] == ["C", "B"]
    finally:
        await cache.clear()
        await cache.aclose()
