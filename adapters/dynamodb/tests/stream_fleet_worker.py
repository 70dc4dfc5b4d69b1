"""Run as a separate process by the stream fleet test:

    python stream_fleet_worker.py REDIS_URL ENDPOINT TABLE NAMESPACE KEY SECONDS

reads KEY in a loop through a chain of its own (memory, Redis, the bus, the DynamoDB table on
moto) for SECONDS and prints one JSON line per change of the value it sees: [wall time, v].
It counts itself ready (``NAMESPACE:ready``) once its first read is done: the test writes
after that, when every reader holds the first value in memory.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.fleet import print_changes


def main(argv: list[str]) -> None:
    redis_url, endpoint, table, namespace, key = argv[:5]
    seconds = float(argv[5])
    settings = bus_chain_settings(
        redis_url,
        namespace,
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
    cache = subscribed_chain(settings)

    def read() -> int | None:
        item = cache.get(key)
        return None if item is None else int(item["v"])

    seen = read()
    print(json.dumps([time.time(), seen]), flush=True)
    counter = redis.Redis.from_url(redis_url)
    counter.incr(f"{namespace}:ready")  # the first value is in this process's memory
    print_changes(read, seen, seconds, pause=0.002)
    counter.close()
    cache.close()


if __name__ == "__main__":
    main(sys.argv[1:])
