"""Run as a separate process by the stalled-Redis write test:

    python set_worker.py CACHE_URL SOURCE_URL NAMESPACE NAME KEYS DELAY

builds a chain (memory + the Redis at CACHE_URL) whose source is a second Redis at SOURCE_URL
(standing for the table), says it is ready, waits until the test says go, sleeps DELAY seconds,
then writes ``NAME`` to keys k0..k<KEYS-1> with ``set`` from one thread per key, and prints
"done" as JSON.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from tiered_cache_redis import RedisTier

from tiered_cache import MISSING, MemoryTier, TieredCache
from tiered_cache.testing.fleet import ready_then_wait_for_go
from tiered_cache.tier import MissingType


class RedisTable:
    """A source on a Redis of its own: ``<namespace>:table:<key>`` holds the item."""

    name = "redis-table"

    def __init__(self, url: str, namespace: str) -> None:
        self._client = redis.Redis.from_url(url, decode_responses=True)
        self._prefix = f"{namespace}:table:"

    def load(self, key: str) -> Any | MissingType:
        value = self._client.get(self._prefix + key)
        return MISSING if value is None else value

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        return {key: self.load(key) for key in keys if self.load(key) is not MISSING}

    def store(self, key: str, value: Any) -> None:
        self._client.set(self._prefix + key, value)

    def remove(self, key: str) -> None:
        self._client.delete(self._prefix + key)

    def close(self) -> None:
        self._client.close()


def main(
    cache_url: str, source_url: str, namespace: str, *, name: str, keys: int, delay: float
) -> None:
    control = redis.Redis.from_url(source_url)
    cache = TieredCache(
        [
            MemoryTier(ttl=600),
            # A timeout far above the stall: the writes wait for Redis instead of failing.
            RedisTier(redis.Redis.from_url(cache_url, socket_timeout=20), namespace=namespace),
        ],
        RedisTable(source_url, namespace),
        ttl=600,
    )
    cache.tiers[1].get("warm-up")  # connect before Redis is stopped
    ready_then_wait_for_go(control, namespace)
    time.sleep(delay)
    writers = [
        threading.Thread(target=cache.set, args=(f"k{index}", name)) for index in range(keys)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    cache.close()
    control.close()
    print(json.dumps("done"))


if __name__ == "__main__":
    cache_url, source_url, namespace, name, keys, delay = sys.argv[1:7]
    main(cache_url, source_url, namespace, name=name, keys=int(keys), delay=float(delay))
