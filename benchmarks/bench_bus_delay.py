"""How long after ``set()`` returns another process's memory stops serving the old value.

Two chains (memory + Redis + the Redis invalidation bus) on a private redis-server: ``a``
writes a key that ``b`` holds in memory; the delay is the time from ``a.set`` returning to
``b``'s memory tier no longer holding the key. The peer, measured in the same run on the same
server, is raw redis-py pub/sub: PUBLISH to a subscriber thread receiving it. Writes of the two
alternate in blocks of ten, so that load from other work falls on both alike; min, median
(p50), p99 and max of each are printed, and the ratio of the medians (a minimum is a write
whose message had arrived before the first look: near zero for both, no ratio).

Run: ``.venv/bin/python benchmarks/bench_bus_delay.py [--writes 200]``
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import redis
from timing import run_line

from tiered_cache import TieredCache
from tiered_cache.testing.servers import RedisServer

#: Writes of one contender before the other's turn.
BLOCK = 10


def chain(url: str) -> TieredCache:
    cache = TieredCache.from_config(
        namespace="bench-bus",
        tiers=[{"kind": "memory", "admission": "always"}, {"kind": "redis", "url": url}],
        bus={"kind": "redis"},
    )
    assert cache._bus_link is not None
    cache._bus_link.bus.wait_subscribed(10)  # type: ignore[attr-defined]
    return cache


class BusWrites:
    """Ours: ``a.set`` of a key ``b`` holds, until ``b``'s memory drops it."""

    def __init__(self, url: str) -> None:
        self.a, self.b = chain(url), chain(url)
        self.memory = self.b.tiers[0]
        self.count = 0

    def delay(self) -> float:
        key = f"k{self.count % 10}"
        self.count += 1
        self.b.get(key, lambda: "old")
        assert key in self.memory  # type: ignore[operator]
        self.a.set(key, f"v{self.count}")
        returned = time.perf_counter()
        while key in self.memory:  # type: ignore[operator]
            time.sleep(0)  # let the bus thread run (both chains share this process's GIL)
        return time.perf_counter() - returned

    def close(self) -> None:
        self.a.close()
        self.b.close()


class RawPubSub:
    """The peer: PUBLISH, until a subscriber thread has the message."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.subscribe("bench-raw")
        self.pubsub.get_message(timeout=1)
        self.received = threading.Event()
        self.listener = threading.Thread(target=self._listen)
        self.listener.start()

    def _listen(self) -> None:
        while True:
            message = self.pubsub.get_message(timeout=1)
            if message is not None and message["data"] == b"stop":
                return
            if message is not None:
                self.received.set()

    def delay(self) -> float:
        self.received.clear()
        self.client.publish("bench-raw", b"x")
        returned = time.perf_counter()
        while not self.received.is_set():
            time.sleep(0)  # polled like the chain's side, for a fair comparison
        return time.perf_counter() - returned

    def close(self) -> None:
        self.client.publish("bench-raw", b"stop")
        self.listener.join()
        self.pubsub.close()
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200, help="writes of each contender")
    args = parser.parse_args()
    print(run_line())
    with RedisServer() as server:
        ours, peer = BusWrites(server.url), RawPubSub(server.url)
        delays: dict[str, list[float]] = {"tiered-cache bus": [], "raw redis-py pub/sub": []}
        contenders: list[tuple[str, Callable[[], float]]] = [
            ("tiered-cache bus", ours.delay),
            ("raw redis-py pub/sub", peer.delay),
        ]
        for block in range(0, args.writes, BLOCK):
            order = contenders if (block // BLOCK) % 2 == 0 else contenders[::-1]
            for name, delay in order:
                delays[name].extend(delay() for _ in range(min(BLOCK, args.writes - block)))
        ours.close()
        peer.close()

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e3

    print(
        f"{args.writes} writes each, alternating in blocks of {BLOCK}; delay from the write "
        "returning to the other side having it"
    )
    print(f"{'':<24}{'min ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, values in delays.items():
        print(
            f"{name:<24}{min(values) * 1e3:>9.3f}{pct(values, 0.5):>9.3f}"
            f"{pct(values, 0.99):>9.3f}{max(values) * 1e3:>9.3f}"
        )
    mine, theirs = delays["tiered-cache bus"], delays["raw redis-py pub/sub"]
    print(f"ratio p50 tiered/raw: {statistics.median(mine) / statistics.median(theirs):.2f}")


if __name__ == "__main__":
    main()
