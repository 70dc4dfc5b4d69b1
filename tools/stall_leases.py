"""Leases left in Redis after it stalls under a chain's misses (docs/testing.md, the pass on
leases left behind).

Builds memory (5 entries) -> Redis (a private ``redis-server``, ``timeout`` 100 ms, the
default breaker) with ``lease_ttl`` 20 s; 8 threads read cold keys through loads of 30 ms;
Redis is stopped (``SIGSTOP``) for 1.5 s, then runs again; 5.5 s later (the breaker has
closed) the chain makes one more miss. Prints the leases in Redis right after the stall and
at the end, and how long another process takes to read the keys of the leases left
(``lease_wait`` 500 ms).

Run: ``.venv/bin/python tools/stall_leases.py [RUNS]``
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import redis

from tiered_cache import TieredCache
from tiered_cache.testing.servers import RedisServer


def chain(url: str, wait: str) -> TieredCache:
    return TieredCache.from_config(
        namespace="s",
        bus={"kind": "off"},
        tiers=[
            {"kind": "memory", "admission": "always", "max_entries": 5},
            {"kind": "redis", "url": url, "timeout": "100ms"},
        ],
        protection={
            "lease_ttl": "20s",
            "lease_wait": wait,
            "lease_poll": "20ms",
            "max_stale": "0s",
            "soft_timeout": None,
        },
    )


def leases(client: redis.Redis) -> list[str]:
    return sorted(key.decode() for key in client.keys("*s:*") if key.endswith(b":lease"))


def one_run(server: RedisServer) -> str:
    assert server.pid is not None
    client = redis.Redis.from_url(server.url)
    client.flushall()
    cache = chain(server.url, "3s")
    stop = threading.Event()

    def reader(n: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"k{n}-{i}"
            i += 1

            def load(key: str = key) -> str:
                time.sleep(0.03)
                return key

            assert cache.get(key, load) == key

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    os.kill(server.pid, signal.SIGSTOP)
    time.sleep(1.5)
    os.kill(server.pid, signal.SIGCONT)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    time.sleep(0.3)
    after_stall = len(leases(client))
    time.sleep(5.5)  # the breaker closes
    cache.get("one more", lambda: "miss")
    left = leases(client)
    other = chain(server.url, "500ms")
    started = time.monotonic()
    for name in left:
        other.get(name[1 : -len("}:lease")].split(":", 1)[1], lambda: "other")
    took = time.monotonic() - started
    cache.close()
    other.close()
    client.close()
    return (
        f"leases right after the stall: {after_stall}; left at the end: {len(left)}; "
        f"another process read their keys in {took:.2f} s"
    )


def main(runs: int) -> None:
    logging.disable(logging.WARNING)  # the tier's warnings during the stall
    with RedisServer() as server:
        for run in range(runs):
            print(f"run {run + 1}: {one_run(server)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
