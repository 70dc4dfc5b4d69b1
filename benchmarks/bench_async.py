"""The asyncio chain against its peers, in one process and one event loop.

Prints, each as a ratio to a peer measured in the same run (contenders interleaved; min and
median of the repeats):

- async L1 hit (``await cache.get`` served by the memory tier) vs cashews' in-memory ``get``
  (target <= 0.5x), and vs cashews' ``client_side`` L1-over-Redis hit; the same hit of a chain
  with the Redis bus is a row of its own (the bus adds nothing to a hit: docs/async.md);
- async L2 hit (``await cache.get`` served by the Redis tier on ``redis.asyncio``) vs a raw
  ``redis.asyncio`` ``GET`` + ``json.loads`` (target <= 1.2x), and vs cashews' Redis ``get``;
- 1,000 concurrent coroutines missing one key: how many loads (must be 1);
- event-loop lag while 100 coroutines miss a slow source (a probe sleeping 1 ms in a loop;
  max lag <= 5 ms): once with an async source, once with a blocking sync source (which the
  chain runs in threads).

It starts its own ``redis-server`` (never the machine's 6379). cashews is a benchmark-only
dependency (benchmarks/requirements.txt); without it the cashews rows are skipped.

Run: ``.venv/bin/python benchmarks/bench_async.py``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisBus, AsyncRedisTier
from timing import run_line

from tiered_cache import AsyncTieredCache, BlockingTierWarning, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING, MissingType

KEYS = [f"tweet:{i}" for i in range(500)]
TWEET = {"tweet_id": "42", "text": "hello " * 20, "likes": 7}
REPEAT = 15
PASSES = 4

Contender = Callable[[str], Awaitable[Any]]


async def timed(contender: Contender) -> float:
    """Nanoseconds per call over PASSES passes over KEYS."""
    started = time.perf_counter()
    for _ in range(PASSES):
        for key in KEYS:
            await contender(key)
    return (time.perf_counter() - started) / (PASSES * len(KEYS)) * 1e9


async def race(contenders: dict[str, Contender]) -> dict[str, list[float]]:
    """Each contender's ns/call per repeat, the contenders interleaved in every repeat."""
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(REPEAT):
        for name, contender in contenders.items():
            runs[name].append(await timed(contender))
    return runs


def report(title: str, runs: dict[str, list[float]], peers: Sequence[str]) -> None:
    """One table: the first contender against each peer (min and median)."""
    ours, *_ = runs
    print(f"\n{title} (ns/call; best and median of {REPEAT} interleaved runs)")
    print(f"{'contender':44} {'min':>8} {'median':>8}")
    for name, values in runs.items():
        print(f"{name:44} {min(values):8.0f} {statistics.median(values):8.0f}")
    for peer in peers:
        if peer in runs:
            best = min(runs[ours]) / min(runs[peer])
            median = statistics.median(runs[ours]) / statistics.median(runs[peer])
            print(f"ratio {ours} / {peer}: {best:.2f} (min), {median:.2f} (median)")


async def cashews_caches(url: str) -> tuple[Any, Any, Any] | None:
    """cashews in memory, on Redis, and client_side (L1 over Redis); None if not installed."""
    try:
        from cashews import Cache
    except ImportError:
        print("cashews is not installed (pip install -r benchmarks/requirements.txt): skipped")
        return None
    memory, remote, client_side = Cache(), Cache(), Cache()
    memory.setup("mem://?size=10000")
    remote.setup(url)
    client_side.setup(url, client_side=True)
    for cache in (memory, remote, client_side):
        for key in KEYS:
            await cache.set(key, TWEET, expire=300)
    return memory, remote, client_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    asyncio.run(measure())


async def measure() -> None:
    """Every row, in one event loop, after the run line."""
    print(run_line())
    with RedisServer() as server:
        url = server.url
        l1 = AsyncTieredCache(
            [
                MemoryTier(max_entries=10_000, ttl=300),
                AsyncRedisTier(aioredis.Redis.from_url(url), namespace="bench-l1"),
            ],
            namespace="bench-l1",
        )
        l2 = AsyncTieredCache(
            [AsyncRedisTier(aioredis.Redis.from_url(url), namespace="bench-l2")],
            namespace="bench-l2",
        )
        bus = AsyncRedisBus(
            lambda: aioredis.Redis.from_url(url),
            "bench-bus:invalidations",
            listen_with=lambda: redis.Redis.from_url(url),
        )
        with_bus = AsyncTieredCache(
            [
                MemoryTier(max_entries=10_000, ttl=300),
                AsyncRedisTier(aioredis.Redis.from_url(url), namespace="bench-bus"),
            ],
            namespace="bench-bus",
            bus=bus,
        )
        # Subscribed first: memory filled before the bus is heard is not trusted.
        assert await bus.wait_subscribed(10)
        raw = aioredis.Redis.from_url(url)
        for key in KEYS:
            await with_bus.set(key, TWEET)
            await l1.set(key, TWEET)
            await l2.set(key, TWEET)
            await raw.set(f"raw:{key}", json.dumps(TWEET))

        async def raw_get(key: str) -> Any:
            return json.loads(await raw.get(f"raw:{key}"))

        cashews = await cashews_caches(url)
        l1_contenders: dict[str, Contender] = {
            "tiered-cache async L1 hit": l1.get,
            "tiered-cache async L1 hit, Redis bus": with_bus.get,
        }
        l2_contenders: dict[str, Contender] = {
            "tiered-cache async L2 hit (redis.asyncio)": l2.get,
            "raw redis.asyncio GET + json.loads": raw_get,
        }
        if cashews is not None:
            memory, remote, client_side = cashews
            l1_contenders["cashews mem:// get"] = memory.get
            l1_contenders["cashews client_side (L1 over Redis) get"] = client_side.get
            l2_contenders["cashews redis:// get"] = remote.get
        report(
            "L1 hit",
            await race(l1_contenders),
            ["cashews mem:// get", "cashews client_side (L1 over Redis) get"],
        )
        report(
            "L2 hit",
            await race(l2_contenders),
            ["raw redis.asyncio GET + json.loads", "cashews redis:// get"],
        )
        print(f"\n1,000 concurrent misses of one key: {await stampede(url)} load(s) (must be 1)")
        # The idle row is the probe alone for as long: the machine's own scheduling noise.
        for kind in ("idle", "async", "sync (in threads)"):
            lag = await loop_lag(kind)
            what = (
                "no misses (baseline)" if kind == "idle" else f"100 misses of a slow {kind} source"
            )
            print(f"event-loop lag, {what}: max {lag * 1000:.2f} ms")
        assert with_bus.stats()["bus"] == "connected"  # its hits were memory's all along
        await with_bus.aclose()
        await l1.aclose()
        await l2.aclose()
        await raw.aclose()
        if cashews is not None:
            for cache in cashews:
                await cache.close()


async def stampede(url: str) -> int:
    """Loads made by 1,000 coroutines missing one key at once (memory + Redis, leases on)."""
    cache = AsyncTieredCache(
        [
            MemoryTier(max_entries=100),
            AsyncRedisTier(aioredis.Redis.from_url(url), namespace="bench-stampede"),
        ],
        namespace="bench-stampede",
    )
    loads = 0

    async def load() -> dict[str, Any]:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return TWEET

    await cache.clear()
    await asyncio.gather(*(cache.get("hot", load) for _ in range(1000)))
    await cache.aclose()
    return loads


class SlowSource:
    """A source that takes 50 ms a read: awaited (async) or blocking (sync)."""

    name = "slow"

    def load(self, key: str) -> Any | MissingType:
        time.sleep(0.05)
        return MISSING

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        time.sleep(0.05)
        return {}

    def store(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def remove(self, key: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class AsyncSlowSource:
    name = "slow-async"

    async def load(self, key: str) -> Any | MissingType:
        await asyncio.sleep(0.05)
        return MISSING

    async def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {}

    async def store(self, key: str, value: Any) -> None:
        raise NotImplementedError

    async def remove(self, key: str) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


async def loop_lag(kind: str) -> float:
    """The worst lateness of a probe sleeping 1 ms in a loop while 100 coroutines miss 100
    keys of a slow source."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlockingTierWarning)
        source = SlowSource() if kind.startswith("sync") else AsyncSlowSource()
        cache = AsyncTieredCache(
            [MemoryTier(max_entries=1000)], source, protection=Protection.never_stale()
        )
    worst = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - started - 0.001)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    if kind == "idle":
        await asyncio.sleep(0.05)  # as long as the async misses take
    else:
        await asyncio.gather(*(cache.get(f"slow:{i}") for i in range(100)))
    done.set()
    await prober
    await cache.aclose()
    return worst


if __name__ == "__main__":
    main()
