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
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.servers import RedisServer


class Counts:
    """One face's loads: per key, and how many of one key ran at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loads: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.overlaps: Counter[str] = Counter()
        self.most = 0
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.wrong = 0

    def begin(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self.loads[key] += 1
                if self.running[key]:
                    self.overlaps[key] += 1
                self.running[key] += 1
                self.most = max(self.most, self.running[key])

    def end(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self.running[key] -= 1

    def served(self, values: dict[str, Any]) -> None:
        with self._lock:
            self.calls += 1
            self.wrong += sum(1 for key, value in values.items() if value != f"v:{key}")

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.calls += 1
            self.errors[type(exc).__name__] += 1

    def report(self, face: str) -> dict[str, Any]:
        return {
            "face": face,
            "calls": self.calls,
            "errors": dict(self.errors),
            "wrong": self.wrong,
            "loads": sum(self.loads.values()),
            "most_loads_of_a_key": max(self.loads.values(), default=0),
            "overlaps": sum(self.overlaps.values()),
            "most_at_once": self.most,
        }


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


def pick(rng: random.Random, keys: list[str]) -> str | list[str]:
    """A request: one key (a ``get``, 70 %) or three (a ``get_many``)."""
    return rng.choice(keys) if rng.random() < 0.7 else rng.sample(keys, 3)


def sync_reader(cache: TieredCache, keys: list[str], counts: Counts, stop: threading.Event) -> None:
    rng = random.Random()

    def load(wanted: Sequence[str]) -> dict[str, str]:
        counts.begin(wanted)
        try:
            time.sleep(rng.uniform(0, 0.004))
            return {key: f"v:{key}" for key in wanted}
        finally:
            counts.end(wanted)

    while not stop.is_set():
        wanted = pick(rng, keys)
        try:
            if isinstance(wanted, str):
                counts.served({wanted: cache.get(wanted, lambda k=wanted: load([k])[k])})
            else:
                counts.served(cache.get_many(wanted, load))
        except Exception as exc:
            counts.failed(exc)


async def async_readers(
    cache: AsyncTieredCache, keys: list[str], counts: Counts, stop: threading.Event, n: int
) -> None:
    async def reader() -> None:
        rng = random.Random()

        async def load(wanted: Sequence[str]) -> dict[str, str]:
            counts.begin(wanted)
            try:
                await asyncio.sleep(rng.uniform(0, 0.004))
                return {key: f"v:{key}" for key in wanted}
            finally:
                counts.end(wanted)

        async def load_one(key: str) -> str:
            return (await load([key]))[key]

        while not stop.is_set():
            wanted = pick(rng, keys)
            try:
                if isinstance(wanted, str):
                    value = await cache.get(wanted, lambda k=wanted: load_one(k))
                    counts.served({wanted: value})
                else:
                    counts.served(await cache.get_many(wanted, load))
            except Exception as exc:
                counts.failed(exc)
            await asyncio.sleep(0)

    await asyncio.gather(*(reader() for _ in range(n)))


def one_round(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    server = RedisServer().start()
    try:
        url = server.url
        keys = [f"k{n}" for n in range(args.keys)]
        sync_counts, async_counts = Counts(), Counts()
        stop = threading.Event()
        cache = TieredCache.from_config(**settings(url, args.memory))
        acache: AsyncTieredCache | None = None

        def async_face() -> None:
            nonlocal acache

            async def main() -> None:
                nonlocal acache
                acache = AsyncTieredCache.from_config(**settings(url, args.memory))
                await async_readers(acache, keys, async_counts, stop, args.coroutines)
                await acache.aclose()

            asyncio.run(main())

        threads = [
            threading.Thread(target=sync_reader, args=(cache, keys, sync_counts, stop))
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
    bad = False
    for _ in range(args.rounds):
        for report in one_round(args):
            print(json.dumps(report), flush=True)
            bad = bad or bool(report["overlaps"] or report["errors"] or report["wrong"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
