"""The asyncio Redis tier: the conformance cases on one server and on a cluster, and the async
chain over it (single-flight in a loop, across chains through the leases, the shared format)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from tiered_cache_redis import AsyncRedisTier, RedisTier

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.async_breaker import AsyncCircuitBreakerTier, guard_async
from tiered_cache.async_tier import AsyncTier
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.async_conformance import AsyncTierConformance
from tiered_cache.testing.interrupts import Interrupted
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisCluster, RedisServer
from tiered_cache.tier import MISSING, Entry

from .leases_held import leases_in
from .one_cold_key import four_processes_read_one_cold_key

# A lease wait long enough that a second chain always waits for the first one's load.
LEASED = Protection.never_stale(lease="auto", lease_wait=10.0, lease_poll=0.005)
# A lease that stays 30 s unless its holder gives it back.
PATIENT = Protection.never_stale(lease="auto", lease_ttl=30.0, lease_wait=0.2, lease_poll=0.01)


class TestAsyncRedisTierConformance(AsyncTierConformance):
    @pytest.fixture
    def async_tier(
        self, redis_server: RedisServer, clock: FakeClock, namespace: str
    ) -> AsyncRedisTier:
        return AsyncRedisTier(
            aioredis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock
        )


class TestAsyncRedisClusterConformance(AsyncTierConformance):
    @pytest.fixture
    def async_tier(
        self, redis_cluster: RedisCluster, clock: FakeClock, namespace: str
    ) -> AsyncRedisTier:
        client = AsyncRedisCluster.from_url(redis_cluster.redis_url)
        return AsyncRedisTier(client, namespace=namespace, clock=clock)


class TestAsyncRedisTierBehindItsBreakerConformance(AsyncTierConformance):
    """The wrapper from_config puts around an async tier keeps every verb (leases included)."""

    @pytest.fixture
    def async_tier(self, redis_server: RedisServer, clock: FakeClock, namespace: str) -> AsyncTier:
        tier = AsyncRedisTier(
            aioredis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock
        )
        return guard_async(tier, clock=clock)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chain(url: str, namespace: str, **options: object) -> AsyncTieredCache:
    return AsyncTieredCache(
        [
            MemoryTier(max_entries=1000, ttl=60),
            AsyncRedisTier(aioredis.Redis.from_url(url), namespace=namespace),
        ],
        namespace=namespace,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_a_thousand_misses_in_one_loop_load_once_and_fill_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    gate = asyncio.Event()
    loads = 0

    async def load() -> dict[str, str]:
        nonlocal loads
        loads += 1
        await gate.wait()
        return {"tweet_id": "42"}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tier or source runs in a thread
        cache = chain(redis_server.url, namespace, protection=LEASED)
    readers = [asyncio.create_task(cache.get("tweet:42", load)) for _ in range(1000)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await asyncio.gather(*readers) == [{"tweet_id": "42"}] * 1000
    assert loads == 1
    # Written in the sync tier's format: a sync service reads what this one filled.
    sync_tier = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    entry = sync_tier.get("tweet:42")
    assert entry is not MISSING and entry.value == {"tweet_id": "42"}
    sync_tier.close()
    await cache.aclose()


@pytest.mark.anyio
async def test_two_chains_share_one_load_through_the_redis_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    # Two chains have two flight tables, as two processes do: only the lease keeps the
    # second from loading too.
    first, second = (chain(redis_server.url, namespace, protection=LEASED) for _ in range(2))
    gate = asyncio.Event()
    loads: list[str] = []

    async def load(name: str) -> str:
        loads.append(name)
        await gate.wait()
        return "value"

    one = asyncio.create_task(first.get("k", lambda: load("first")))
    await async_until(lambda: loads == ["first"], "the first chain holds the lease and loads")
    two = asyncio.create_task(second.get("k", lambda: load("second")))
    # the second looks, finds the lease held, and waits (counted as it starts waiting)
    await async_until(lambda: second.stats()["lease_waits"] == 1, "the second waits")
    gate.set()
    assert await asyncio.gather(one, two) == ["value", "value"]
    assert loads == ["first"]
    assert second.stats()["lease_waits"] == 1
    await first.aclose()
    await second.aclose()


@pytest.mark.anyio
async def test_a_load_overtaken_by_another_processes_write_fills_nothing(
    redis_server: RedisServer, namespace: str
) -> None:
    """The asyncio loader fills under its Redis lease: a write from another process while it
    loads takes the lease, so the value it read before reaches no tier."""
    cache = chain(redis_server.url, namespace, protection=LEASED)
    # The other process: a sync chain with no source over the same Redis.
    other = TieredCache(
        [MemoryTier(), RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)]
    )

    async def load() -> str:
        other.set("k", "new")  # written while this load is in flight
        return "old"

    assert await cache.get("k", load) == "old"  # its caller is served what it read
    memory, shared = cache.tiers
    assert isinstance(memory, MemoryTier) and isinstance(shared, AsyncRedisTier)
    assert memory.get("k") is MISSING
    entry = await shared.get("k")
    assert entry is not MISSING and entry.value == "new"
    assert cache.stats()["lease_lost"] == 1
    assert await cache.get("k") == "new"
    other.close()
    await cache.aclose()


@pytest.mark.anyio
async def test_writes_and_invalidations_reach_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    cache = chain(redis_server.url, namespace, protection=LEASED)
    redis_tier = cache.tiers[1]
    assert isinstance(redis_tier, AsyncRedisTier)
    await cache.set("user:1:a", 1)
    await cache.set("user:1:b", 2)
    assert (await redis_tier.get("user:1:a")) is not MISSING
    await cache.invalidate_prefix("user:1:")
    assert await redis_tier.get_many(["user:1:a", "user:1:b"]) == {}

    async def load_many(keys: object) -> dict[str, int]:
        return {"a": 1, "b": 2}

    assert await cache.get_many(["a", "b"], load_many) == {"a": 1, "b": 2}
    assert set(await redis_tier.get_many(["a", "b"])) == {"a", "b"}
    await cache.clear()
    assert await redis_tier.get_many(["a", "b"]) == {}
    await cache.aclose()


@pytest.mark.anyio
async def test_from_config_builds_the_async_redis_tier_from_the_sync_settings(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    config = tmp_path / "tiered_cache.toml"
    config.write_text(
        f'[tiered_cache]\nnamespace = "{namespace}"\n\n'
        '[[tiered_cache.tiers]]\nkind = "memory"\nmax_entries = 100\n\n'
        f'[[tiered_cache.tiers]]\nkind = "redis"\nurl = "{redis_server.url}"\ntimeout = "1s"\n'
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = AsyncTieredCache.from_config(config)
    built = cache.tiers[1]
    assert isinstance(built, AsyncCircuitBreakerTier)
    assert isinstance(built.tier, AsyncRedisTier)

    async def load() -> str:
        return "v"

    assert await cache.get("k", load) == "v"
    stats = cache.stats()
    assert [tier["name"] for tier in stats["tiers"]] == ["memory", "redis"]
    assert stats["tiers"][1]["breaker"] == "closed"
    await cache.aclose()


@pytest.mark.anyio
async def test_the_tiers_of_an_async_cache_from_config_are_async_all_the_way(
    redis_server: RedisServer, namespace: str
) -> None:
    """Each async tier from_config built was wrapped in the sync breaker: ``await
    cache.tiers[1].set(...)`` failed (the coroutine inside was never awaited, nothing was
    written), while the chain, which unwraps the breaker, worked. The wrapper is now async
    (the same breaker, awaited) and still guards every verb."""
    cache = AsyncTieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "max_entries": 100},
            {
                "kind": "redis",
                "url": redis_server.url,
                "timeout": "2s",
                "breaker": {"failure_threshold": 2},
            },
        ],
    )
    tier = cache.tiers[1]
    entry = Entry("v", 1.0)
    await tier.set("k", entry)
    await tier.set_many({"a": Entry("a", 1.0), "b": Entry("b", 1.0)})
    written = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    assert written.get("k") == entry  # it reached Redis
    assert (await tier.get("k")) == entry
    assert set(await tier.get_many(["a", "b", "c"])) == {"a", "b"}
    await tier.delete_many(["a"])
    assert written.get_many(["a", "b"]).keys() == {"b"}
    await tier.clear()
    assert written.get("b") is MISSING
    written.close()
    await cache.aclose()


@pytest.mark.slow
def test_four_processes_of_a_hundred_coroutines_make_one_source_read(
    redis_server: RedisServer, namespace: str
) -> None:
    """4 processes x 100 coroutines missing one key: one load in the fleet (the coroutines of
    a process share a flight; the processes, the Redis lease)."""
    results, source_reads = four_processes_read_one_cold_key(
        "async_workers.py", redis_server.url, namespace, 100
    )
    assert [len(result) for result in results] == [100] * 4
    assert all(value == {"tweet_id": "tweet:1", "text": "viral"} for r in results for value in r)
    assert source_reads == 1


@pytest.mark.anyio
async def test_a_cancelled_request_has_its_load_begun_again_under_its_redis_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    """A request cancelled while it loads under the key's lease (its client went away) has
    its load begun again in a task, under the lease it took: the load fills Redis and gives
    the lease up, and the fleet reads its value instead of loading again. (Its load cancelled
    with it and the lease given back, the next impatient client loaded anew, and none
    ended.)"""
    first = chain(redis_server.url, namespace, protection=PATIENT)
    other = chain(redis_server.url, namespace, protection=PATIENT)  # another process
    started, gate = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await gate.wait()
        return "first's"

    async def load() -> str:
        return "other's"

    request = asyncio.create_task(first.get("k", slow))
    await started.wait()  # it holds the lease and is inside its load
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await async_until(lambda: calls == 2, "the load begun again")
    gate.set()
    assert await first.wait_background(5.0)
    assert await other.get("k", load) == "first's"
    assert other.stats()["loads"] == 0
    assert first.stats()["loads"] == 1 and first.stats()["abandoned_loads"] == 1
    assert leases_in(redis_server, namespace) == []
    await first.aclose()
    await other.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("key", [42, None, b"tweet:42"])
async def test_a_key_that_is_not_a_str_is_refused_before_any_tier_is_asked(
    redis_server: RedisServer, namespace: str, key: object
) -> None:
    """``get(tweet_id)`` with an int id, on either face: a TypeError for the caller, and no
    tier counts it as its failure -- ten of them opened the Redis tier's circuit breaker, and
    every other key of the process then went past Redis to the source."""
    settings = {
        "namespace": namespace,
        "tiers": [{"kind": "memory"}, {"kind": "redis", "url": redis_server.url, "timeout": "2s"}],
    }
    threaded = TieredCache.from_config(**settings)
    cache = AsyncTieredCache.from_config(**settings)

    async def load() -> str:
        return "v"

    for _ in range(10):
        with pytest.raises(TypeError, match="keys are str"):
            threaded.get(key, lambda: "v")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="keys are str"):
            await cache.get(key, load)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="keys are str"):
            await cache.get_many(["ok", key], lambda keys: load())  # type: ignore[list-item]
        with pytest.raises(TypeError, match="keys are str"):
            await cache.set(key, "v")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="keys are str"):
            await cache.invalidate(key)  # type: ignore[arg-type]
    for stats in (threaded.stats(), cache.stats()):
        assert [tier["errors"] for tier in stats["tiers"]] == [0, 0]
        assert stats["tiers"][1]["breaker"] == "closed"
        assert stats["loads"] == 0
    assert redis.Redis.from_url(redis_server.url).keys(f"{namespace}*") == []
    threaded.close()
    await cache.aclose()


async def a_burst(cache: AsyncTieredCache) -> tuple[int, dict[str, Any]]:
    """10,000 reads at once of keys ``k0``..``k1999`` (after one read that connects the chain,
    not counted): how many reached the source, and the stats (the cache closed)."""
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        return "from the source"

    assert await cache.get("warm-up", load) == "from the source"
    loads = 0
    await asyncio.gather(*(cache.get(f"k{index % 2000}", load) for index in range(10_000)))
    stats = cache.stats()
    await cache.aclose()
    return loads, stats


@pytest.mark.anyio
async def test_a_burst_of_readers_on_a_cold_process_reads_redis_not_the_source(
    redis_server: RedisServer, namespace: str
) -> None:
    """10,000 requests at once for 2,000 keys Redis holds (a service starting under traffic,
    or one whose memory was just cleared): Redis answers them; the source is not asked."""
    settings = {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "admission": "always"},
            # Not the default 50 ms: what is tested is where the reads go, not how fast a
            # loaded machine answers. (The 1,186 loads this test once saw at load 27 were not
            # timeouts: with 5 s it still read 1,024 from the source. The writer's set_many had
            # lost those keys, its first leases expiring before its fill; now it takes them in
            # one round trip, test_redis_write_batches.py.)
            {"kind": "redis", "url": redis_server.url, "timeout": "5s"},
        ],
    }
    writer = AsyncTieredCache.from_config(**settings)
    await writer.set_many({f"k{index}": index for index in range(2000)})
    await writer.aclose()
    loads, stats = await a_burst(AsyncTieredCache.from_config(**settings))
    assert stats["tiers"][1]["breaker"] == "closed"
    assert loads == 0


def one_connection_chain(url: str, namespace: str) -> tuple[AsyncTieredCache, aioredis.Redis]:
    """A chain whose Redis client has a pool of one connection, and that client."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=1, timeout=5)
    client = aioredis.Redis.from_pool(pool)
    cache = AsyncTieredCache(
        [MemoryTier(max_entries=100, ttl=60), AsyncRedisTier(client, namespace=namespace)],
        namespace=namespace,
        protection=PATIENT,
    )
    return cache, client


async def cancel_while_its_fill_waits(
    cache: AsyncTieredCache,
    client: aioredis.Redis,
    request: Callable[[Callable[[], Awaitable[None]]], Awaitable[object]],
) -> None:
    """Start ``request(occupy)``, whose load awaits ``occupy()``: that takes the pool's one
    connection for a second, so the fill after the load waits for it; cancel the request
    then (nothing of the fill sent yet), and wait until the chain is done with it."""
    loaded = asyncio.Event()
    blocker: asyncio.Task[object] | None = None

    async def occupy() -> None:
        nonlocal blocker
        blocker = asyncio.create_task(client.blpop(["nothing"], timeout=1))
        await asyncio.sleep(0.05)
        loaded.set()

    task = asyncio.ensure_future(request(occupy))
    await loaded.wait()
    await asyncio.sleep(0.05)  # its fill waits for the pool
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert blocker is not None
    await blocker
    assert await cache.wait_background(5.0)


@pytest.mark.anyio
async def test_a_batch_cancelled_before_its_fill_went_out_gives_its_leases_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """A ``get_many`` cancelled after its load, while its fill waits for a connection of a
    busy pool (nothing sent yet): the leases it holds are given back, so another process
    loads the keys at once instead of waiting for a holder that is gone."""
    first, client = one_connection_chain(redis_server.url, namespace)
    other = chain(redis_server.url, namespace, protection=PATIENT)  # another process

    def request(occupy: Callable[[], Awaitable[None]]) -> Awaitable[object]:
        async def load(keys: object) -> dict[str, str]:
            await occupy()
            return {"a": "A", "b": "B"}

        return first.get_many(["a", "b"], load)

    await cancel_while_its_fill_waits(first, client, request)

    async def load_again(keys: object) -> dict[str, str]:
        return {"a": "A", "b": "B"}

    assert await other.get_many(["a", "b"], load_again) == {"a": "A", "b": "B"}
    assert other.stats()["lease_waits"] == 0  # the leases were free: nobody waited
    await first.aclose()
    await other.aclose()


@pytest.mark.anyio
async def test_a_get_cancelled_before_its_fill_went_out_gives_its_lease_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """As for a batch: a ``get`` cancelled after its load, while its fill waits for a
    connection of a busy pool, gives its lease back."""
    first, client = one_connection_chain(redis_server.url, namespace)
    other = chain(redis_server.url, namespace, protection=PATIENT)  # another process

    def request(occupy: Callable[[], Awaitable[None]]) -> Awaitable[object]:
        async def load() -> str:
            await occupy()
            return "v"

        return first.get("k", load)

    await cancel_while_its_fill_waits(first, client, request)

    async def load_again() -> str:
        return "v"

    assert await other.get("k", load_again) == "v"
    assert other.stats()["lease_waits"] == 0  # the lease was free: nobody waited
    await first.aclose()
    await other.aclose()


@pytest.mark.anyio
async def test_a_burst_of_readers_of_keys_redis_lacks_loads_each_once_and_keeps_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    """10,000 requests at once for 2,000 keys no tier holds: each key is loaded once, and
    Redis, which is healthy, stays in use (its breaker closed) for the requests after them.

    The Redis timeout is 1 s, not the default 50 ms, and the chain has read once before the
    burst (its pool and its bus connected), so that a loaded test machine does not decide the
    outcome: a connect started inside the burst is timed against the whole saturated loop.
    Before the lease path gathered one loop tick's acquisitions (91f56e4) this burst still
    opened the breaker so (it took a 3 s timeout to pass)."""
    cache = AsyncTieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": redis_server.url, "timeout": "1s"},
        ],
    )
    loads, stats = await a_burst(cache)
    assert loads == 2000
    assert stats["tiers"][1]["breaker"] == "closed"


@pytest.mark.anyio
async def test_an_interrupted_load_gives_its_redis_lease_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """A load interrupted by a BaseException that is not a cancellation (KeyboardInterrupt
    raised into the loop, a task queue's time limit) gives the lease back too: the next
    reader in the fleet waited lease_wait for it."""
    first = chain(redis_server.url, namespace, protection=PATIENT)
    other = chain(redis_server.url, namespace, protection=PATIENT)  # another process

    async def interrupted() -> str:
        raise Interrupted

    async def load() -> str:
        return "v"

    with pytest.raises(Interrupted):
        await first.get("k", interrupted)
    assert await first.wait_background(5.0)
    assert await other.get("k", load) == "v"
    assert other.stats()["lease_waits"] == 0
    await first.aclose()
    await other.aclose()
