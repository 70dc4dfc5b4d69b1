"""Loads of one key at once while background refreshes run beside misses, on a private Redis.

Single-flight promises one load of a key at a time in a process (docs/consistency.md). A
background refresh (stale-while-revalidate, or an early XFetch refresh) is a load too: this rig
counts whether a miss of a key ever loads it while its refresh runs.

Both faces at once in one process: a :class:`TieredCache` read by ``--threads`` threads and an
:class:`AsyncTieredCache` read by ``--coroutines`` coroutines (``get`` 70 %, 3-key
``get_many``), memory then Redis with the Redis bus, on ``--keys`` keys whose entries go stale
after ``--ttl`` seconds (served stale up to ``max_stale``, early refresh on). An invalidator
thread drops a random key every ``--every`` seconds (through the threaded chain: the bus
carries it to the other), so that a key being refreshed is missed. The loaders sleep 2-10 ms
and count, per face and key, the loads, the loads that began while another of the same key
ran (overlaps), and the most at once.

Prints one JSON line per face and round (calls, errors by type, wrong values, loads,
refreshes, overlaps, most at once) and exits 1 if a face saw an overlap, an error or a wrong
value.

Run: ``.venv/bin/python tools/refresh_overlaps.py [--rounds 1] [--seconds 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import threading
import time
from typing import Any

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.overlaps import LoadCounts, async_readers, print_rounds, sync_reader
from tiered_cache.testing.servers import RedisServer

#: How long a load takes (uniform), in seconds.
DELAY = (0.002, 0.01)


def settings(url: str, memory: int, ttl: float) -> dict[str, Any]:
    return {
        "namespace": f"refresh-{os.getpid()}",
        "ttl": f"{int(ttl * 1000)}ms",
        "tiers": [
            {"kind": "memory", "max_entries": memory, "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "500ms"},
        ],
        "protection": {"lease": "off", "max_stale": "5s", "early_refresh_beta": 2.0},
        "bus": {"kind": "redis"},
    }


def invalidator(cache: TieredCache, keys: list[str], every: float, stop: threading.Event) -> None:
    rng = random.Random()
    while not stop.wait(every):
        cache.invalidate(rng.choice(keys))


def one_round(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    with RedisServer() as server:
        url = server.url
        keys = [f"k{n}" for n in range(args.keys)]
        sync_counts, async_counts = LoadCounts(), LoadCounts()
        stop = threading.Event()
        cache = TieredCache.from_config(**settings(url, args.memory, args.ttl))
        async_stats: dict[str, Any] = {}

        def async_face() -> None:
            async def main() -> None:
                acache = AsyncTieredCache.from_config(**settings(url, args.memory, args.ttl))
                await async_readers(
                    acache, keys, async_counts, stop, n=args.coroutines, delay=DELAY
                )
                await acache.wait_background(10)
                async_stats.update(acache.stats())
                await acache.aclose()

            asyncio.run(main())

        threads = [
            threading.Thread(target=sync_reader, args=(cache, keys, sync_counts, stop, DELAY))
            for _ in range(args.threads)
        ]
        threads.append(threading.Thread(target=async_face))
        threads.append(threading.Thread(target=invalidator, args=(cache, keys, args.every, stop)))
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join(60)
        cache.wait_background(10)
        sync_stats = cache.stats()
        cache.close()
        return (
            {**sync_counts.report("sync"), "refreshes": sync_stats["refreshes"]},
            {**async_counts.report("asyncio"), "refreshes": async_stats["refreshes"]},
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", type=int, default=20, help="memory tier entries")
    parser.add_argument("--keys", type=int, default=30)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--coroutines", type=int, default=20)
    parser.add_argument("--ttl", type=float, default=0.2, help="freshness, s")
    parser.add_argument("--every", type=float, default=0.005, help="one invalidation per, s")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    return print_rounds(args.rounds, lambda: one_round(args))


if __name__ == "__main__":
    sys.exit(main())
