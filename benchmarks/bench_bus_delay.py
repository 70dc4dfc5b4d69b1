"""How long after ``set()`` returns another process's memory stops serving the old value.

Two chains (memory + Redis + the Redis invalidation bus) on a private redis-server: ``a``
writes a key that ``b`` holds in memory; the delay is the time from ``a.set`` returning to
``b``'s memory tier no longer holding the key. The peer, measured in the same run on the same
server, is raw redis-py pub/sub: PUBLISH to a subscriber thread receiving it.

Run: ``.venv/bin/python benchmarks/bench_bus_delay.py [--writes 200]``
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import redis

from tiered_cache import TieredCache
from tiered_cache.testing.servers import RedisServer


def chain(url: str) -> TieredCache:
    cache = TieredCache.from_config(
        namespace="bench-bus",
        tiers=[{"kind": "memory", "admission": "always"}, {"kind": "redis", "url": url}],
        bus={"kind": "redis"},
    )
    assert cache._bus_link is not None
    cache._bus_link.bus.wait_subscribed(10)  # type: ignore[attr-defined]
    return cache


def bus_delays(url: str, writes: int) -> list[float]:
    a, b = chain(url), chain(url)
    memory = b.tiers[0]
    delays = []
    for i in range(writes):
        key = f"k{i % 10}"
        b.get(key, lambda: "old")
        assert key in memory  # type: ignore[operator]
        a.set(key, f"v{i}")
        returned = time.perf_counter()
        while key in memory:  # type: ignore[operator]
            time.sleep(0)  # let the bus thread run (both chains share this process's GIL)
        delays.append(time.perf_counter() - returned)
    a.close()
    b.close()
    return delays


def raw_pubsub_delays(url: str, writes: int) -> list[float]:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe("bench-raw")
    pubsub.get_message(timeout=1)
    received = threading.Event()

    def listen() -> None:
        while True:
            message = pubsub.get_message(timeout=1)
            if message is not None and message["data"] == b"stop":
                return
            if message is not None:
                received.set()

    listener = threading.Thread(target=listen)
    listener.start()
    delays = []
    for _ in range(writes):
        received.clear()
        client.publish("bench-raw", b"x")
        returned = time.perf_counter()
        while not received.is_set():
            time.sleep(0)  # polled like the chain's side, for a fair comparison
        delays.append(time.perf_counter() - returned)
    client.publish("bench-raw", b"stop")
    listener.join()
    pubsub.close()
    client.close()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    with RedisServer() as server:
        ours = bus_delays(server.url, args.writes)
        peer = raw_pubsub_delays(server.url, args.writes)

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e3

    print(f"{args.writes} writes; delay from set() returning to the other chain dropping the key")
    print(f"{'':<28}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, values in [("tiered-cache bus", ours), ("raw redis-py pub/sub", peer)]:
        print(
            f"{name:<28}{pct(values, 0.5):>9.3f}{pct(values, 0.99):>9.3f}{max(values) * 1e3:>9.3f}"
        )
    print(f"ratio p50 tiered/raw: {statistics.median(ours) / statistics.median(peer):.2f}")


if __name__ == "__main__":
    main()
