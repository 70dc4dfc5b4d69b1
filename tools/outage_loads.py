"""Loads per key, and loads of one key at once, while a private Redis is stopped and killed.

Both faces at once in one process: a :class:`TieredCache` read by ``--threads`` threads and an
:class:`AsyncTieredCache` read by ``--coroutines`` coroutines (``get`` and ``get_many``, with
the Redis bus), on ``--keys`` keys, memory of ``--memory`` entries. The loaders count, per face
and key, the loads, the loads that began while another of the same key ran (overlaps: single-
flight promises none in a process), and the most at once. Timeline: warm, ``SIGSTOP`` the
server, ``SIGKILL`` it, down, restarted empty on its port, then reads again.

Prints one JSON line per face (calls, errors by type, wrong values, loads, most loads of one
key, overlaps, most at once) and exits 1 if a face saw an overlap, an error or a wrong value.

Run: ``.venv/bin/python tools/outage_loads.py [--memory 10] [--rounds 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.overlaps import LoadCounts, async_readers, print_rounds, sync_reader
from tiered_cache.testing.servers import RedisServer

#: How long a load takes (uniform), in seconds.
DELAY = (0.0, 0.004)


def settings(url: str, memory: int) -> dict[str, Any]:
    return {
        "namespace": f"outage-{os.getpid()}",
        "ttl": "10m",
        "tiers": [
            {"kind": "memory", "max_entries": memory, "admission": "always", "ttl": "10m"},
            {"kind": "redis", "url": url, "timeout": "100ms"},
        ],
        "protection": {"lease_wait": "500ms"},
        "bus": {"kind": "redis"},
    }


def one_round(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    server = RedisServer().start()
    try:
        url = server.url
        keys = [f"k{n}" for n in range(args.keys)]
        sync_counts, async_counts = LoadCounts(), LoadCounts()
        stop = threading.Event()
        cache = TieredCache.from_config(**settings(url, args.memory))
        acache: AsyncTieredCache | None = None

        def async_face() -> None:
            nonlocal acache

            async def main() -> None:
                nonlocal acache
                acache = AsyncTieredCache.from_config(**settings(url, args.memory))
                await async_readers(
                    acache, keys, async_counts, stop, n=args.coroutines, delay=DELAY
                )
                await acache.aclose()

            asyncio.run(main())

        threads = [
            threading.Thread(target=sync_reader, args=(cache, keys, sync_counts, stop, DELAY))
            for _ in range(args.threads)
        ]
        threads.append(threading.Thread(target=async_face))
        for thread in threads:
            thread.start()
        time.sleep(args.warm)
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        time.sleep(args.stopped)
        server.kill()
        time.sleep(args.down)
        server.start()
        time.sleep(args.after)
        stop.set()
        for thread in threads:
            thread.join(60)
        cache.close()
        return sync_counts.report("sync"), async_counts.report("asyncio")
    finally:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", type=int, default=10, help="memory tier entries")
    parser.add_argument("--keys", type=int, default=30)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--coroutines", type=int, default=20)
    parser.add_argument("--warm", type=float, default=1.5)
    parser.add_argument("--stopped", type=float, default=2.0, help="SIGSTOP, s")
    parser.add_argument("--down", type=float, default=1.0, help="killed, s")
    parser.add_argument("--after", type=float, default=4.0, help="after the restart, s")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the outage's warnings are expected; counts are below
    return print_rounds(args.rounds, lambda: one_round(args))


if __name__ == "__main__":
    sys.exit(main())
