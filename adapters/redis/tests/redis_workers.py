"""Run as a separate process by the multi-process lease tests:

    python redis_workers.py URL NAMESPACE KEY THREADS
    python redis_workers.py URL NAMESPACE batch THREADS SEED

waits until the test sets ``<namespace>:go`` in Redis, then reads KEY from THREADS threads (or,
with ``batch``, a ``get_many`` of 30 of 60 cold keys per thread, chosen by SEED) through a
chain of its own, and prints the values it got as JSON.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from tiered_cache import TieredCache
from tiered_cache.testing.fleet import ready_then_wait_for_go


def fleet_chain(url: str, namespace: str) -> TieredCache:
    """A chain like every process of the fleet has (lease TTL far above the load time)."""
    return TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "max_entries": 100, "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "2s"},
        ],
        protection={"lease_ttl": "5s", "lease_wait": "10s", "lease_poll": "10ms"},
    )


def read_cold_key(url: str, namespace: str, key: str, threads: int) -> list[Any]:
    """``threads`` threads read ``key`` through a chain of this process; the loader counts its
    calls in Redis (the "source reads" of the whole fleet) and is slow, like DynamoDB."""
    counter = redis.Redis.from_url(url)

    def slow_source() -> dict[str, str]:
        counter.incr(f"{namespace}:source-reads")
        time.sleep(0.3)
        return {"tweet_id": key, "text": "viral"}

    cache = fleet_chain(url, namespace)

    def reader() -> Any:
        return cache.get(key, slow_source)

    return run_together(counter, namespace, cache, reader, threads)


def read_cold_batches(url: str, namespace: str, threads: int, seed: int) -> list[Any]:
    """``threads`` threads each read 30 of the same 60 cold keys with one ``get_many``; the
    batch loader counts each key it reads in Redis (a hash of key -> reads)."""
    counter = redis.Redis.from_url(url)

    def slow_batch_source(keys: Sequence[str]) -> dict[str, Any]:
        pipe = counter.pipeline()
        for key in keys:
            pipe.hincrby(f"{namespace}:reads", key, 1)
        pipe.execute()
        time.sleep(0.3)
        return {key: {"tweet_id": key} for key in keys}

    cache = fleet_chain(url, namespace)
    keys = [f"tweet:{index}" for index in range(60)]
    rng = random.Random(seed)
    wanted = [rng.sample(keys, 30) for _ in range(threads)]
    turn = iter(wanted)
    lock = threading.Lock()

    def reader() -> Any:
        with lock:
            mine = next(turn)
        return cache.get_many(mine, slow_batch_source)

    return run_together(counter, namespace, cache, reader, threads)


def run_together(
    counter: redis.Redis,
    namespace: str,
    cache: TieredCache,
    read: Callable[[], Any],
    threads: int,
) -> list[Any]:
    """Run ``read`` on ``threads`` threads once the test says go; the results, in any order."""
    results: list[Any] = []
    lock = threading.Lock()

    def reader() -> None:
        value = read()
        with lock:
            results.append(value)

    workers = [threading.Thread(target=reader) for _ in range(threads)]
    ready_then_wait_for_go(counter, namespace)  # every process starts reading at once
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cache.close()
    counter.close()
    return results


if __name__ == "__main__":
    url, namespace, key, threads = sys.argv[1:5]
    if key == "batch":
        print(json.dumps(read_cold_batches(url, namespace, int(threads), int(sys.argv[5]))))
    else:
        print(json.dumps(read_cold_key(url, namespace, key, int(threads))))
