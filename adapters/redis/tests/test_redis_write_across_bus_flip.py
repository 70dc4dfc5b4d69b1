"""A write made while this process's bus drops and comes back (a forked child's first
subscription, a reconnect) is still the value in Redis afterwards.

The bus coming back clears this process's memory through the fence (it may have missed
messages about its own copies): a gap, which says nothing of Redis. The write held the key's
Redis lease, so nothing there could have overtaken it. The fence once counted the gap as an
invalidation of every key since any mark: the write's fill was refused, and the write then
invalidated its key in Redis and in every process. Seen in a forked child (gunicorn
``--preload``): its first ``set`` lost its value from Redis in 20 of 20 forks, while the
child's bus subscribed.

The other tests here hold the rule's other side: a gap still keeps out of memory what may be
stale there (a copy from Redis read before it, a leased write's value after its leased fill,
a leased fill Redis did not confirm).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, RedisTier
from tiered_cache_redis.async_tier import AsyncRedisClient
from tiered_cache_redis.client import RedisClient

from tiered_cache import MISSING, AsyncTieredCache, Entry, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.buses import CuttableBus
from tiered_cache.testing.servers import RedisCluster, RedisServer
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MissingType


def on_redis(server: RedisServer, namespace: str) -> RedisTier:
    return RedisTier(redis.Redis.from_url(server.url), namespace=namespace)


def chain(
    tier: RedisTier, source: DictSource, bus: CuttableBus, memory: MemoryTier | None = None
) -> TieredCache:
    """Memory over ``tier``, on ``bus``: one process."""
    return TieredCache(
        [memory or MemoryTier(), tier], source, bus=bus, protection=Protection(soft_timeout=None)
    )


class FlipsTheBus(DictSource):
    """A table whose write takes as long as this process's bus needs to drop and return."""

    def __init__(self, bus: CuttableBus) -> None:
        super().__init__()
        self.bus = bus

    def store(self, key: str, value: Any) -> None:
        super().store(key, value)
        self.bus.cut()
        self.bus.restore()


def test_a_write_while_the_bus_flips_stays_in_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    bus = CuttableBus()
    source = FlipsTheBus(bus)
    writer = chain(on_redis(redis_server, namespace), source, bus)
    writer.set("k", "new")
    reader = on_redis(redis_server, namespace)
    entry = reader.get("k")
    assert entry and entry.value == "new"  # failed: MISSING (the write invalidated it)
    assert writer.get("k") == "new"
    assert source.loads == []
    reader.close()
    writer.close()


def test_a_write_of_several_keys_while_the_bus_flips_stays_in_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    """``set_many`` takes the keys' leases in one round trip and fills them in one: the same
    gap must not undo them either."""
    bus = CuttableBus()
    source = FlipsTheBus(bus)
    writer = chain(on_redis(redis_server, namespace), source, bus)
    writer.set_many({"a": "new a", "b": "new b"})
    reader = on_redis(redis_server, namespace)
    assert {key: value(reader.get(key)) for key in ("a", "b")} == {"a": "new a", "b": "new b"}
    assert writer.get_many(["a", "b"]) == {"a": "new a", "b": "new b"}
    assert source.loads == []
    reader.close()
    writer.close()


def value(entry: Entry | MissingType) -> Any:
    return MISSING if entry is MISSING else entry.value


class GapsAfter(RedisTier):
    """A Redis tier that, once given ``meanwhile``, runs it after one of its calls (which the
    subclass names) while this process's bus is down, what is published then being lost,
    and brings the bus back: a gap that hides another process's write."""

    def __init__(self, client: redis.Redis, namespace: str, bus: CuttableBus) -> None:
        super().__init__(client, namespace=namespace)
        self.bus = bus
        self.meanwhile: Callable[[], None] | None = None

    def gap(self) -> None:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            self.bus.cut()
            self.bus.failing = True
            meanwhile()
            self.bus.failing = False
            self.bus.restore()


class GapAfterTheLeasedWrite(GapsAfter):
    """The gap comes right after the leased fill landed, before the chain writes memory."""

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        kept = super().fill_with_lease(key, entry, token)
        self.gap()
        return kept

    def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> set[str]:
        kept = super().fill_with_leases(entries)
        self.gap()
        return kept


def test_a_gap_after_a_writes_leased_fill_keeps_it_out_of_memory_but_in_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    """The lease orders the write in Redis up to its leased fill, not after: a message
    missed after it may be of a later write (here another process's, straight after), so
    the gap keeps the write out of this process's memory (where nothing would ever drop it)
    but not out of Redis, and the write is not undone (it would delete the later value)."""
    bus = CuttableBus()
    source = DictSource()
    memory = MemoryTier()
    tier = GapAfterTheLeasedWrite(redis.Redis.from_url(redis_server.url), namespace, bus)
    writer = chain(tier, source, bus, memory)
    other = chain(on_redis(redis_server, namespace), source, bus)
    tier.meanwhile = lambda: other.set("k", "later")
    writer.set("k", "new")
    reader = on_redis(redis_server, namespace)
    assert value(reader.get("k")) == "later"  # failed: MISSING (the write undid the later one)
    assert "k" not in memory
    assert writer.get("k") == "later"
    assert writer.stats()["fills_refused"] == 1
    assert source.loads == []
    reader.close()
    writer.close()
    other.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FlipsAtTheLease(AsyncRedisTier):
    """An asyncio Redis tier whose lease for a write takes as long as this process's bus
    needs to drop and return (a chain without a source writes nothing else meanwhile)."""

    def __init__(self, client: aioredis.Redis, namespace: str, bus: CuttableBus) -> None:
        super().__init__(client, namespace=namespace)
        self.bus = bus

    async def steal_lease(self, key: str, ttl: float) -> str:
        token = await super().steal_lease(key, ttl)
        self.bus.cut()
        self.bus.restore()
        return token


@pytest.mark.anyio
async def test_an_async_write_while_the_bus_flips_stays_in_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    """The asyncio chain's write goes through the same fence's fill (as steps); without a
    source, the gap here (during the lease) is all the write waits for."""
    bus = CuttableBus()
    tier = FlipsAtTheLease(aioredis.Redis.from_url(redis_server.url), namespace, bus)
    writer = AsyncTieredCache([MemoryTier(), tier], bus=bus)
    await writer.set("k", "new")
    reader = on_redis(redis_server, namespace)
    assert value(reader.get("k")) == "new"  # failed: MISSING (a sourceless chain lost it)
    assert await writer.get("k") == "new"
    reader.close()
    await writer.aclose()


class ReadThenGap(GapsAfter):
    """The gap comes right after a read, before the chain copies what it read into memory."""

    def get(self, key: str) -> Entry | MissingType:
        entry = super().get(key)
        self.gap()
        return entry


def test_a_copy_from_redis_read_before_a_gap_is_kept_out_of_memory(
    redis_server: RedisServer, namespace: str
) -> None:
    """No lease orders a copy up from Redis: a gap after its read may have hidden a later
    write's message, so the copy is refused (it would stay in memory for its ttl)."""
    bus = CuttableBus()
    source = DictSource({"k": "old"})
    memory = MemoryTier()
    tier = ReadThenGap(redis.Redis.from_url(redis_server.url), namespace, bus)
    reader = chain(tier, source, bus, memory)
    other = chain(on_redis(redis_server, namespace), source, bus)
    assert other.get("k") == "old"  # in Redis now
    tier.meanwhile = lambda: other.set("k", "later")
    assert reader.get("k") == "old"  # served: it was current when read
    assert "k" not in memory
    assert reader.stats()["fills_refused"] == 1
    assert reader.get("k") == "later"
    reader.close()
    other.close()


class FillFailsAfterAGap(RedisTier):
    """A Redis tier that answers the lease look and then fails the fill under the lease."""

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        raise redis.ConnectionError("Redis went away")

    def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> set[str]:
        raise redis.ConnectionError("Redis went away")


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_a_leased_load_whose_fill_fails_across_a_gap_keeps_out_of_memory(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """A leased fill that Redis did not confirm (it failed) is ordered by nothing: a gap
    during its load refuses it as it refuses any fill (without the gap its values go into
    memory: test_redis_lease_give_back)."""
    bus = CuttableBus()
    memory = MemoryTier()
    cache = TieredCache(
        [memory, FillFailsAfterAGap(redis.Redis.from_url(redis_server.url), namespace=namespace)],
        bus=bus,
        protection=Protection(soft_timeout=None),
    )

    def read_during_an_outage(keys: Sequence[str]) -> dict[str, str]:
        bus.cut()
        bus.restore()
        return dict.fromkeys(keys, "read")

    if how == "get":
        assert cache.get("a", lambda: read_during_an_outage(["a"])["a"]) == "read"
    else:
        assert cache.get_many(["a"], read_during_an_outage) == {"a": "read"}
    assert "a" not in memory
    assert cache.stats()["fills_refused"] == 1
    cache.close()


class FlipsAtTheWrite(RedisTier):
    """A Redis tier whose write takes as long as this process's bus needs to drop and return
    (a chain without a source and without leases waits for nothing else meanwhile)."""

    def __init__(self, client: RedisClient, namespace: str, bus: CuttableBus) -> None:
        super().__init__(client, namespace=namespace)
        self.bus = bus

    def set(self, key: str, entry: Entry) -> None:
        super().set(key, entry)
        self.bus.cut()
        self.bus.restore()

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        super().set_many(entries)
        self.bus.cut()
        self.bus.restore()


class AsyncFlipsAtTheWrite(AsyncRedisTier):
    """:class:`FlipsAtTheWrite` for the asyncio chain."""

    def __init__(self, client: AsyncRedisClient, namespace: str, bus: CuttableBus) -> None:
        super().__init__(client, namespace=namespace)
        self.bus = bus

    async def set(self, key: str, entry: Entry) -> None:
        await super().set(key, entry)
        self.bus.cut()
        self.bus.restore()

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        await super().set_many(entries)
        self.bus.cut()
        self.bus.restore()


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_sourceless_write_without_leases_while_the_bus_flips_stays_in_redis(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """Without a source the write's value is the only copy, and Redis orders it by its own
    write: a gap (this process's bus coming back) keeps it out of memory, not out of Redis.
    Refused everywhere, the value was lost: Django's backend (leases off, no source) lost the
    first ``cache.set`` of every process, made while its bus subscribed."""
    bus = CuttableBus()
    memory = MemoryTier()
    tier = FlipsAtTheWrite(redis.Redis.from_url(redis_server.url), namespace, bus)
    writer = TieredCache([memory, tier], bus=bus, protection=Protection(lease="off"))
    if how == "set":
        writer.set("k", "new")
    else:
        writer.set_many({"k": "new"})
    reader = on_redis(redis_server, namespace)
    assert value(reader.get("k")) == "new"  # failed: MISSING (the write was undone)
    assert "k" not in memory
    assert writer.lookup_many(["k"])["k"].value == "new"
    assert writer.stats()["fills_refused"] == 1
    reader.close()
    writer.close()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["set", "set_many"])
async def test_an_async_sourceless_write_without_leases_while_the_bus_flips_stays_in_redis(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    bus = CuttableBus()
    memory = MemoryTier()
    tier = AsyncFlipsAtTheWrite(aioredis.Redis.from_url(redis_server.url), namespace, bus)
    writer = AsyncTieredCache([memory, tier], bus=bus, protection=Protection(lease="off"))
    if how == "set":
        await writer.set("k", "new")
    else:
        await writer.set_many({"k": "new"})
    reader = on_redis(redis_server, namespace)
    assert value(reader.get("k")) == "new"  # failed: MISSING (the write was undone)
    assert "k" not in memory
    assert (await writer.lookup_many(["k"]))["k"].value == "new"
    reader.close()
    await writer.aclose()


def test_a_write_with_a_source_and_without_leases_across_a_gap_is_still_dropped(
    redis_server: RedisServer, namespace: str
) -> None:
    """With a source the gap may hide another process's write whose order at the source
    cannot be told: no tier keeps either value (the next read loads the source's)."""
    bus = CuttableBus()
    source = DictSource()
    tier = FlipsAtTheWrite(redis.Redis.from_url(redis_server.url), namespace, bus)
    writer = TieredCache([MemoryTier(), tier], source, bus=bus, protection=Protection(lease="off"))
    writer.set("k", "new")
    reader = on_redis(redis_server, namespace)
    assert value(reader.get("k")) is MISSING
    assert writer.get("k") == "new"
    assert source.loads == ["k"]
    reader.close()
    writer.close()


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_sourceless_write_of_a_key_without_a_lease_while_the_bus_flips_stays_in_redis(
    redis_cluster: RedisCluster, namespace: str, how: str
) -> None:
    """A chain that leases, on a cluster: a key with braces of its own has no lease there
    (RedisTier.can_lease) and is written as on a chain without leases, so without a source
    its value is the only copy, ordered by its own write, as in the tests above. The fence
    once judged it so only on a chain without a leasing tier: the gap refused it in every
    tier and the write was lost."""
    bus = CuttableBus()
    memory = MemoryTier()
    client = redis.RedisCluster.from_url(redis_cluster.redis_url)
    tier = FlipsAtTheWrite(client, namespace, bus)
    assert not tier.can_lease("{user}:1")
    writer = TieredCache([memory, tier], bus=bus, protection=Protection(lease="auto"))
    if how == "set":
        writer.set("{user}:1", "new")
    else:
        writer.set_many({"{user}:1": "new", "plain": "also"})
    reader = RedisTier(redis.RedisCluster.from_url(redis_cluster.redis_url), namespace=namespace)
    assert value(reader.get("{user}:1")) == "new"  # failed: MISSING (the write was undone)
    assert "{user}:1" not in memory
    if how == "set_many":
        assert value(reader.get("plain")) == "also"
    reader.close()
    writer.close()


@pytest.mark.anyio
async def test_an_async_sourceless_write_of_a_key_without_a_lease_while_the_bus_flips_stays(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    bus = CuttableBus()
    memory = MemoryTier()
    client = aioredis.RedisCluster.from_url(redis_cluster.redis_url)
    tier = AsyncFlipsAtTheWrite(client, namespace, bus)
    writer = AsyncTieredCache([memory, tier], bus=bus, protection=Protection(lease="auto"))
    await writer.set_many({"{user}:1": "new", "plain": "also"})
    reader = RedisTier(redis.RedisCluster.from_url(redis_cluster.redis_url), namespace=namespace)
    assert value(reader.get("{user}:1")) == "new"  # failed: MISSING (the write was undone)
    assert value(reader.get("plain")) == "also"
    assert "{user}:1" not in memory
    reader.close()
    await writer.aclose()
