"""Run as a separate process by the multi-process test of the asyncio chain:

    python async_workers.py URL NAMESPACE KEY COROUTINES

builds an ``AsyncTieredCache`` (memory, Redis on ``redis.asyncio``) from the same settings as
the sync fleet's, says it is ready, waits until the test sets ``<namespace>:go``, then reads
KEY from COROUTINES coroutines at once, and prints the values they got as JSON. The loader
counts its calls in Redis (the fleet's source reads) and is slow, like DynamoDB.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import redis.asyncio as aioredis

from tiered_cache import AsyncTieredCache
from tiered_cache.testing.polling import async_until


async def main(url: str, namespace: str, key: str, coroutines: int) -> list[Any]:
    cache = AsyncTieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "max_entries": 100, "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "2s"},
        ],
        protection={"lease_ttl": "5s", "lease_wait": "10s", "lease_poll": "10ms"},
    )
    control = aioredis.Redis.from_url(url)

    async def slow_source() -> dict[str, str]:
        await control.incr(f"{namespace}:source-reads")
        await asyncio.sleep(0.3)
        return {"tweet_id": key, "text": "viral"}

    await control.incr(f"{namespace}:ready")
    await async_until(lambda: control.get(f"{namespace}:go"), "the test said go", within=60)
    values = await asyncio.gather(*(cache.get(key, slow_source) for _ in range(coroutines)))
    await cache.aclose()
    await control.aclose()
    return list(values)


if __name__ == "__main__":
    url, namespace, key, coroutines = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, namespace, key, int(coroutines)))))
