"""Stale reads while a reader's bus is cut and restored fast, again and again, under load.

A private ``redis-server``; the reader's bus goes through a :class:`FaultProxy`, cut
``--cut`` seconds then restored ``--up`` seconds, ``--cuts`` times. The reader is an
:class:`AsyncTieredCache` (``--face asyncio``: ``--readers`` coroutines reading without a
pause) or a :class:`TieredCache` (``--face threads``: ``--readers`` threads, ``--pause``
between reads), memory first (admission always, 10 minutes), the loader reading the
truth. A writer chain (its bus straight to Redis) bumps one of ``--keys`` keys every
``--write-every`` seconds (through the cuts too) and invalidates it: its announcement is
lost to the reader while the reader's bus is cut.

Counted: a read is stale when it returned a version older than one whose invalidation had
been published more than ``--grace`` seconds before the read began (the bus's delivery
and a cut's detection take some time; a copy that outlived a missed invalidation would
be served until its key's next write, ``--keys * --write-every`` seconds later, well past
the grace). Also the cuts the reader's chain counted (``bus_disconnects``)
and its bus state just before each cut: a cut made while the listener is still
reconnecting from the previous one (its backoff) is no new outage.

Stale after "connected": the reader's bus state is sampled every millisecond; from each
moment it is seen to turn "connected" again until the next cut, a read must not return a
version older than one published ``--connected-grace`` before that moment (an outage's copy
kept past the drop, or a "connected" shown before it; a bound of memory is no excuse then).
``--writers`` writer chains (each its own bus, another process of the fleet) share the keys
between them.

Prints one JSON line and exits 1 if a stale read was counted.

Run: ``.venv/bin/python tools/bus_flap_stale.py [--face asyncio|threads] [--cuts 21]``
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.servers import FaultProxy, RedisServer


class Truth:
    """The source: each key's version, and when each version's invalidation was published."""

    def __init__(self, keys: list[str]) -> None:
        self.version = dict.fromkeys(keys, 0)
        self.published: dict[str, list[float]] = {key: [] for key in keys}

    def newest_before(self, key: str, moment: float) -> int:
        """The newest version of ``key`` whose invalidation was published before ``moment``."""
        return bisect.bisect_left(self.published[key], moment)


def reader_settings(namespace: str, url: str, bound: float) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "ttl": "10m",
        "tiers": [{"kind": "memory", "admission": "always", "ttl": "10m"}],
        "bus": {"kind": "redis", "url": url, "max_stale_when_disconnected": bound},
    }


class Reads:
    """Every read: when it began, its key, the version it returned."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.seen: list[tuple[float, str, int]] = []

    def stale(self, truth: Truth, grace: float) -> Counter[str]:
        counts: Counter[str] = Counter()
        for began, key, value in self.seen:
            if truth.newest_before(key, began - grace) > value:
                counts["past_grace"] += 1
            elif truth.newest_before(key, began) > value:
                counts["within_grace"] += 1
        return counts


def asyncio_reader(
    args: argparse.Namespace, settings: dict[str, Any], truth: Truth, reads: Reads
) -> tuple[threading.Thread, Callable[[], Any]]:
    """A thread running a loop of ``--readers`` coroutines on an :class:`AsyncTieredCache`,
    and what returns the chain once it is built."""
    keys = list(truth.version)
    built: list[AsyncTieredCache] = []
    ready = threading.Event()

    async def load_of(key: str) -> int:
        return truth.version[key]

    async def reader(cache: AsyncTieredCache, n: int) -> None:
        for turn in itertools.count(n):
            if reads.stop.is_set():
                return
            key = keys[turn % len(keys)]
            began = time.monotonic()
            value = await cache.get(key, partial(load_of, key))
            reads.seen.append((began, key, value))
            if turn % 1000 == 0:
                await asyncio.sleep(0)  # lets the loop's other tasks run now and then

    async def main() -> None:
        cache = AsyncTieredCache.from_config(**settings)
        built.append(cache)
        await cache.get(keys[0], lambda: load_of(keys[0]))  # starts the bus
        ready.set()
        await asyncio.gather(*(reader(cache, n) for n in range(args.readers)))
        await cache.aclose()

    def chain() -> AsyncTieredCache:
        ready.wait(30)
        return built[0]

    return threading.Thread(target=lambda: asyncio.run(main())), chain


def threads_reader(
    args: argparse.Namespace, cache: TieredCache, truth: Truth, reads: Reads
) -> list[threading.Thread]:
    """``--readers`` threads reading ``cache``, ``--pause`` between two reads."""
    keys = list(truth.version)

    def reader(n: int) -> None:
        for turn in itertools.count(n):
            if reads.stop.is_set():
                return
            key = keys[turn % len(keys)]
            began = time.monotonic()
            value = cache.get(key, partial(truth.version.__getitem__, key))
            reads.seen.append((began, key, value))
            if args.pause:
                time.sleep(args.pause)

    return [threading.Thread(target=reader, args=(n,)) for n in range(args.readers)]


def writer_thread(
    writer: TieredCache, keys: list[str], truth: Truth, stop: threading.Event, every: float
) -> Any:
    def write() -> None:
        for key in itertools.cycle(keys):
            if stop.wait(every):
                return
            truth.version[key] += 1
            writer.invalidate(key)
            truth.published[key].append(time.monotonic())

    return threading.Thread(target=write)


class States:
    """The reader's bus state, sampled every millisecond: the moments it was seen to turn
    "connected", and the moments of the cuts."""

    def __init__(self) -> None:
        self.connected_at: list[float] = []
        self.cuts: list[float] = []
        self.stop = threading.Event()

    def sample(self, link: Any) -> None:
        was = link.state
        while not self.stop.wait(0.001):
            now = link.state
            if now == "connected" and was != "connected":
                self.connected_at.append(time.monotonic())
            was = now

    def stale_after_connected(self, reads: Reads, truth: Truth, grace: float) -> int:
        """Reads begun after the bus was seen back, before the next cut, older than a
        version published ``grace`` before it came back."""
        stale = 0
        for began, key, value in reads.seen:
            back = bisect.bisect_right(self.connected_at, began) - 1
            if back < 0:
                continue
            since = self.connected_at[back]
            cut = bisect.bisect_right(self.cuts, since)
            if cut < len(self.cuts) and self.cuts[cut] <= began:
                continue  # cut again since: a cut not noticed yet is no "connected"
            if truth.newest_before(key, since - grace) > value:
                stale += 1
        return stale


def cut_again_and_again(
    args: argparse.Namespace, proxy: FaultProxy, cache: Any, seen: States
) -> tuple[Counter[str], int]:
    """The bus's state before each cut, and the outages the chain counted meanwhile."""
    deadline = time.monotonic() + 10
    while cache.stats()["bus"] != "connected" and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(args.warm)
    before = cache.stats()["bus_disconnects"]
    states: Counter[str] = Counter()
    for _ in range(args.cuts):
        states[cache.stats()["bus"]] += 1
        seen.cuts.append(time.monotonic())
        proxy.cut()
        time.sleep(args.cut)
        proxy.restore()
        time.sleep(args.up)
    time.sleep(args.after)
    return states, cache.stats()["bus_disconnects"] - before


def run(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisServer().start()
    proxy = FaultProxy(server.host, server.port)
    namespace = f"flap-{os.getpid()}"
    truth = Truth([f"k{n}" for n in range(args.keys)])
    reads = Reads()
    settings = reader_settings(namespace, proxy.url(), args.bound)
    writers = [
        TieredCache.from_config(
            namespace=namespace,
            tiers=[{"kind": "memory"}],
            bus={"kind": "redis", "url": server.url},
        )
        for _ in range(args.writers)
    ]
    keys = list(truth.version)
    threaded: TieredCache | None = None
    if args.face == "asyncio":
        thread, chain = asyncio_reader(args, settings, truth, reads)
        readers = [thread]
    else:
        threaded = TieredCache.from_config(**settings)
        readers = threads_reader(args, threaded, truth, reads)
        chain = lambda: threaded  # noqa: E731
    writing = [
        writer_thread(writer, keys[n :: args.writers], truth, reads.stop, args.write_every)
        for n, writer in enumerate(writers)
    ]
    seen = States()
    sampler: threading.Thread | None = None
    try:
        for thread in readers:
            thread.start()
        for thread in writing:
            thread.start()
        reader = chain()
        sampler = threading.Thread(target=seen.sample, args=(reader._bus_link,))
        sampler.start()
        states, noticed = cut_again_and_again(args, proxy, reader, seen)
    finally:
        reads.stop.set()
        seen.stop.set()
        for thread in [*readers, *writing, *([sampler] if sampler else [])]:
            if thread.ident is not None:
                thread.join(60)
        if threaded is not None:
            threaded.close()
        for writer in writers:
            writer.close()
        proxy.close()
        server.close()
    stale = reads.stale(truth, args.grace)
    return {
        "face": args.face,
        "readers": args.readers,
        "pause": args.pause,
        "bound": args.bound,
        "cuts": args.cuts,
        "cut_s": args.cut,
        "up_s": args.up,
        "bus_before_each_cut": dict(states),
        "bus_disconnects_during_cuts": noticed,
        "writes": sum(truth.version.values()),
        "reads": len(reads.seen),
        "stale_reads_past_grace": stale["past_grace"],
        "stale_reads_within_grace": stale["within_grace"],
        "writers": args.writers,
        "seen_back": len(seen.connected_at),
        "stale_after_connected": seen.stale_after_connected(reads, truth, args.connected_grace),
        "connected_grace_s": args.connected_grace,
        "grace_s": args.grace,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--face", choices=["asyncio", "threads"], default="asyncio")
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.0, help="threads: s between reads")
    parser.add_argument("--bound", type=float, default=0.0, help="max_stale_when_disconnected")
    parser.add_argument("--keys", type=int, default=16)
    parser.add_argument("--writers", type=int, default=1, help="writer chains sharing the keys")
    parser.add_argument("--write-every", type=float, default=0.05)
    parser.add_argument("--cuts", type=int, default=21)
    parser.add_argument("--cut", type=float, default=0.35)
    parser.add_argument("--up", type=float, default=0.35)
    parser.add_argument("--warm", type=float, default=1.0)
    parser.add_argument("--after", type=float, default=3.0)
    parser.add_argument("--grace", type=float, default=0.25)
    parser.add_argument("--connected-grace", type=float, default=0.25)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the cuts' warnings are expected; counts are below
    result = run(args)
    print(json.dumps(result))
    return 1 if result["stale_reads_past_grace"] or result["stale_after_connected"] else 0


if __name__ == "__main__":
    sys.exit(main())
