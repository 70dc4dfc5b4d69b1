"""Source loads while a payment of owed deletes that became "everything" is in flight.

While a tier's owed deletes are paid, every other call of the owing chain to that tier is
refused (``tiered_cache/owed.py``: it must not read a copy the payment has yet to delete), and
its reads go to the source. When the debt became "everything" (past its bound, or a
``clear()`` during the outage) the payment is the namespace's clear (SCAN + UNLINK), as long
as the namespace is large. This counts what that costs.

A private redis-server holds ``--keys`` entries of one namespace. A chain of memory
(``--memory`` entries) -> Redis (through a FaultProxy, its breaker on a ManualClock: open after
one failure, 5 s of cool-down) and a counting source (each load ``--latency`` s: a source over
the network, the GIL let go meanwhile): the link cut, the breaker opens, ``clear()`` is owed
("everything"); the link restored, ``--readers`` threads read random keys of the namespace;
the clock moved past the cool-down, the timer pays. Counted: reads, source loads and the
distinct keys loaded while the payment was in flight, before it (the breaker open) and in the
``--after`` seconds that follow. For comparison, the same readers around a ``clear()`` made
while Redis works (its SCAN + UNLINK on the caller's thread, no call refused: the readers read
Redis meanwhile). Prints one JSON line per case.

Run: ``.venv/bin/python tools/owed_clear_loads.py [--keys 100000] [--readers 8]``
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import uuid
from typing import Any

import redis
from tiered_cache_redis import RedisTier

from tiered_cache import Entry, MemoryTier, TieredCache
from tiered_cache.breaker import guard
from tiered_cache.clocks import ManualClock
from tiered_cache.protection import Protection
from tiered_cache.settings import BreakerSettings
from tiered_cache.testing.servers import FaultProxy, RedisServer
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MissingType

BREAKER = BreakerSettings(failure_threshold=1, cool_down=5.0)


class CountedSource(DictSource):
    """Every key's value; each load's time (monotonic) kept."""

    def __init__(self, latency: float) -> None:
        super().__init__({})
        self._latency = latency
        self.loads: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def load(self, key: str) -> Any | MissingType:
        with self._lock:
            self.loads.append((time.monotonic(), key))
        if self._latency:
            time.sleep(self._latency)  # a source over the network: the GIL let go meanwhile
        return f"value of {key}"

    def keys_within(self, start: float, end: float) -> int:
        """Distinct keys loaded in ``[start, end)``."""
        return len({key for at, key in self.loads if start <= at < end})


def fill(server: RedisServer, namespace: str, keys: list[str]) -> None:
    tier = RedisTier(redis.Redis.from_url(server.url), namespace=namespace)
    forever = float("inf")
    for start in range(0, len(keys), 1000):
        tier.set_many(
            {
                key: Entry(
                    f"value of {key}", loaded_at=0.0, soft_expiry=forever, hard_expiry=forever
                )
                for key in keys[start : start + 1000]
            }
        )
    tier.close()


class Readers:
    """``n`` threads reading random keys of ``keys`` through ``cache`` until stopped."""

    def __init__(self, cache: TieredCache, keys: list[str], n: int) -> None:
        self.reads: list[float] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._read, args=(cache, keys, random.Random(i)))
            for i in range(n)
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, cache: TieredCache, keys: list[str], rng: random.Random) -> None:
        reads = []
        while not self._stop.is_set():
            cache.get(rng.choice(keys))
            reads.append(time.monotonic())
        self.reads.extend(reads)  # one extend per thread, under the GIL

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def within(times: list[float], start: float, end: float) -> int:
    return sum(start <= t < end for t in times)


def loads_within(source: CountedSource, start: float, end: float) -> int:
    return within([at for at, _ in source.loads], start, end)


def case(server: RedisServer, args: argparse.Namespace, owed: bool) -> dict[str, Any]:
    namespace = f"owed-clear-{uuid.uuid4().hex[:8]}"
    keys = [f"k{i}" for i in range(args.keys)]
    fill(server, namespace, keys)
    clock = ManualClock()
    source = CountedSource(args.latency)
    with FaultProxy(server.host, server.port) as proxy:
        tier = RedisTier(redis.Redis.from_url(proxy.url(), socket_timeout=5.0), namespace=namespace)
        cache = TieredCache(
            [MemoryTier(max_entries=args.memory), guard(tier, BREAKER, clock=clock)],
            source,
            ttl=600,
            protection=Protection(soft_timeout=None),
        )
        if owed:
            proxy.cut()
            cache.get("x")  # fails: the breaker opens
            cache.clear()  # owed: everything
            assert cache.stats()["deletes_owed"] == 1
            proxy.restore()
        readers = Readers(cache, keys, args.readers)
        time.sleep(args.before)
        begun = time.monotonic()
        if owed:
            clock.advance(BREAKER.cool_down)  # the timer pays: the namespace's clear
            while cache.stats()["deletes_owed_payments"] < 1:
                time.sleep(0.001)
        else:
            cache.clear()
        ended = time.monotonic()
        time.sleep(args.after)
        readers.stop()
        cache.close()
    after = ended + args.after
    return {
        "case": "owed clear, paid by the timer" if owed else "clear while Redis works",
        "keys": args.keys,
        "readers": args.readers,
        "memory": args.memory,
        "latency": args.latency,
        "clear_s": round(ended - begun, 3),
        "reads_before": within(readers.reads, begun - args.before, begun),
        "loads_before": loads_within(source, begun - args.before, begun),
        "reads_during": within(readers.reads, begun, ended),
        "loads_during": loads_within(source, begun, ended),
        "keys_loaded_during": source.keys_within(begun, ended),
        "reads_after": within(readers.reads, ended, after),
        "loads_after": loads_within(source, ended, after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--before", type=float, default=0.5, help="reads before, seconds")
    parser.add_argument("--after", type=float, default=1.0, help="reads after, seconds")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.002, help="each load, seconds")
    parser.add_argument("--memory", type=int, default=10_000, help="the memory tier's entries")
    args = parser.parse_args()
    with RedisServer() as server:
        for _ in range(args.rounds):
            for owed in (True, False):
                print(json.dumps(case(server, args, owed)), flush=True)


if __name__ == "__main__":
    main()
