"""Run as a separate process by the multi-process coherence test:

    python coherence_worker.py URL NAMESPACE KEY SECONDS

reads KEY in a loop through a chain of its own (memory + Redis + the invalidation bus) for
SECONDS, and prints one JSON line per change of the value it sees: [wall time, value]. It
counts itself ready (``NAMESPACE:ready``) once its first read is done: the test writes after
that, when every reader holds the old value in memory. The "source" is a Redis hash the test
writes, standing for the table.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.fleet import print_changes


def main(url: str, namespace: str, key: str, seconds: float) -> None:
    table = redis.Redis.from_url(url, decode_responses=True)
    cache = subscribed_chain(bus_chain_settings(url, namespace))

    def read() -> object:
        return cache.get(key, lambda: table.hget(f"{namespace}:table", key))

    seen = read()
    print(json.dumps([time.time(), seen]), flush=True)
    table.incr(f"{namespace}:ready")  # the old value is in this process's memory
    print_changes(read, seen, seconds, pause=0.001)
    print(json.dumps(["stats", cache.stats()["bus_received"]]), flush=True)
    cache.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
