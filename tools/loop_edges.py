"""Two edges of the asyncio chain's event loops, counted (docs/testing.md and docs/async.md).

``loop-end``: a chain of memory -> Redis (a private ``redis-server``) reads 40 keys, the
source changes them, the service leaves 40 ``invalidate`` tasks it never awaits (each given
one turn of the loop) and its ``asyncio.run`` ends. Prints how many keys Redis still holds
with the old value, and the errors of the Redis tier in the next loop.

``two-loops``: one such chain (30 keys, memory of 2 entries) used from two threads at once,
each running its own loop: 210 calls each, a fifth of them a source write and an
``invalidate``, the rest a ``get``. Prints the calls, what they raised, the errors of the
Redis tier, and the keys whose Redis copy is older than the source at the end.

Run: ``.venv/bin/python tools/loop_edges.py loop-end|two-loops [RUNS]``
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import threading
from collections import Counter

import redis
from tiered_cache_redis import AsyncRedisTier, make_async_client

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource


def chain(
    url: str, namespace: str, source: AsyncDictSource, memory: int
) -> tuple[AsyncTieredCache, AsyncRedisTier]:
    tier = AsyncRedisTier(make_async_client(url, timeout=2.0), namespace=namespace)
    cache = AsyncTieredCache([MemoryTier(max_entries=memory), tier], source, namespace=namespace)
    return cache, tier


def older_in_redis(url: str, tier: AsyncRedisTier, source: AsyncDictSource) -> int:
    """The keys whose Redis copy differs from the source's value."""
    client = redis.Redis.from_url(url)
    try:
        older = 0
        for key, value in source.inner.items.items():
            data = client.get(tier.redis_key(key))
            if isinstance(data, bytes) and tier._stored.decode(key, data, 0.0).value != value:
                older += 1
        return older
    finally:
        client.close()


def loop_end(url: str, run: int) -> str:
    keys = [f"k{i}" for i in range(40)]
    source = AsyncDictSource({key: f"old {key}" for key in keys})
    cache, tier = chain(url, f"loop-end-{run}", source, 100)

    async def warm() -> None:
        for key in keys:
            await cache.get(key)

    async def service() -> None:
        for key in keys:
            source.inner.write(key, "new")
        left = [asyncio.create_task(cache.invalidate(key)) for key in keys]
        await asyncio.sleep(0)
        assert left  # never awaited

    async def next_loop() -> None:
        for key in keys:
            await cache.get(key)

    asyncio.run(warm())
    asyncio.run(service())
    older = older_in_redis(url, tier, source)
    asyncio.run(next_loop())
    errors = cache.stats()["tiers"][1]["errors"]
    asyncio.run(cache.aclose())
    return f"old in Redis {older} of {len(keys)}; errors of the tier in the next loop {errors}"


def two_loops(url: str, run: int) -> str:
    keys = [f"k{i}" for i in range(30)]
    source = AsyncDictSource(dict.fromkeys(keys, 0))
    cache, tier = chain(url, f"two-loops-{run}", source, 2)
    raised: Counter[str] = Counter()
    calls = [0]
    lock = threading.Lock()

    async def job(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(210):
            key = rng.choice(keys)
            try:
                if rng.random() < 0.2:
                    source.inner.write(key, source.inner.items[key] + 1)
                    await cache.invalidate(key)
                else:
                    await cache.get(key)
            except Exception as exc:
                with lock:
                    raised[type(exc).__name__] += 1
            with lock:
                calls[0] += 1
            await asyncio.sleep(0)

    threads = [threading.Thread(target=asyncio.run, args=(job(seed),)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = cache.stats()["tiers"][1]["errors"]
    older = older_in_redis(url, tier, source)
    asyncio.run(cache.aclose())
    return f"calls {calls[0]}; raised {dict(raised)}; errors of the tier {errors}; older {older}"


def main() -> None:
    logging.disable(logging.WARNING)  # the tier's failures are counted, not printed
    scenario = {"loop-end": loop_end, "two-loops": two_loops}[sys.argv[1]]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with RedisServer() as server:
        for run in range(runs):
            print(f"run {run}: {scenario(server.url, run)}")


if __name__ == "__main__":
    main()
