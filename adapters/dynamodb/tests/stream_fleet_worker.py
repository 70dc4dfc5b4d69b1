"""Run as a separate process by the stream fleet test:

    python stream_fleet_worker.py REDIS_URL ENDPOINT TABLE NAMESPACE KEY SECONDS

reads KEY in a loop through a chain of its own (memory, Redis, the bus, the DynamoDB table on
moto) for SECONDS and prints one JSON line per change of the value it sees: [wall time, v].
"""

from __future__ import annotations

import json
import sys
import time

import redis

from tiered_cache import TieredCache


def main(argv: list[str]) -> None:
    redis_url, endpoint, table, namespace, key = argv[:5]
    seconds = float(argv[5])
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "admission": "always", "ttl": "10m"},
            {"kind": "redis", "url": redis_url, "timeout": "1s"},
        ],
        ttl="10m",
        source={
            "kind": "dynamodb",
            "table": table,
            "key": "id",
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        },
    )
    assert cache._bus_link is not None
    cache._bus_link.bus.wait_subscribed(10)  # type: ignore[attr-defined]
    counter = redis.Redis.from_url(redis_url)
    counter.incr(f"{namespace}:ready")
    seen = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        item = cache.get(key)
        value = None if item is None else int(item["v"])
        if value != seen:
            print(json.dumps([time.time(), value]), flush=True)
            seen = value
        time.sleep(0.002)
    counter.close()
    cache.close()


if __name__ == "__main__":
    main(sys.argv[1:])
