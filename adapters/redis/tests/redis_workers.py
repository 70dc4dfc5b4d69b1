"""Run as a separate process by the multi-process lease test:

    python redis_workers.py URL NAMESPACE KEY THREADS

waits until the test sets ``<namespace>:go`` in Redis, reads KEY from THREADS threads through
a chain of its own, and prints the values it got as JSON.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import redis

from tiered_cache import TieredCache


def read_cold_key(url: str, namespace: str, key: str, threads: int) -> list[Any]:
    """``threads`` threads read ``key`` through a chain of this process; the loader counts its
    calls in Redis (the "source reads" of the whole fleet) and is slow, like DynamoDB."""
    counter = redis.Redis.from_url(url)

    def slow_source() -> dict[str, str]:
        counter.incr(f"{namespace}:source-reads")
        time.sleep(0.3)
        return {"tweet_id": key, "text": "viral"}

    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "max_entries": 100, "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "2s"},
        ],
        protection={"lease_ttl": "5s", "lease_wait": "10s", "lease_poll": "10ms"},
    )
    results: list[Any] = []
    lock = threading.Lock()

    def reader() -> None:
        value = cache.get(key, slow_source)
        with lock:
            results.append(value)

    workers = [threading.Thread(target=reader) for _ in range(threads)]
    counter.incr(f"{namespace}:ready")
    deadline = time.monotonic() + 60
    while not counter.exists(f"{namespace}:go"):  # every process starts reading at once
        if time.monotonic() > deadline:
            raise SystemExit("the test never said go")
        time.sleep(0.005)
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cache.close()
    counter.close()
    return results


if __name__ == "__main__":
    url, namespace, key, threads = sys.argv[1:5]
    print(json.dumps(read_cold_key(url, namespace, key, int(threads))))
