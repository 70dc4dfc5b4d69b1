"""Impatient callers of an asyncio chain's untimed loads: a cancellation storm, writes among it,
and a close in the middle of it.

The chain has the default protection (no ``hard_timeout``; no stale copy, so no soft one
either): memory only, or memory over a private Redis with leases (``--redis``). Its source
answers each load after a random 50-400 ms with the key's version as the load began (what a
read of a real table returns). ``--callers`` coroutines read ``--keys`` keys, each read under
``asyncio.wait_for`` with a random timeout of 10-500 ms, or cancelled by hand after a random
wait; a writer bumps a key's version in the source every 50 ms and then ``set``s it (or
``invalidate``s it) through the chain.

Checked, and printed as one JSON line per phase (exit 1 if a check failed):

- ``served_older``: a read returned a version older than one written (and its write
  returned) before the read began: a load that read before an invalidation filled, or was
  joined, after it;
- ``filled_older``: at the end, once every load left running has ended, a tier holds a
  version older than the last one written (the fence must refuse those fills);
- loads begun and ended, the most loads of one key at once, reads served, timed out and
  cancelled, errors by type;
- ``close``: ``aclose()`` in the middle of the storm: every caller ends (none hangs), no
  task is left pending on the loop, and nothing is said about tasks destroyed or
  exceptions never retrieved.

Run: ``.venv/bin/python tools/impatient_callers.py [--redis] [--seconds 5] [--seed 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import random
import sys
import time
from typing import Any

from tiered_cache import AsyncTieredCache, ChainClosedError, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING


class Source:
    """Versions by key; loads counted, and how many of one key run at once."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.versions: dict[str, int] = collections.defaultdict(int)
        self.begun = 0
        self.ended = 0
        self.running: collections.Counter[str] = collections.Counter()
        self.most_at_once = 0

    def loader(self, key: str) -> Any:
        async def load() -> list[Any]:
            version = self.versions[key]  # read as the load begins
            self.begun += 1
            self.running[key] += 1
            self.most_at_once = max(self.most_at_once, self.running[key])
            try:
                await asyncio.sleep(self.rng.uniform(0.05, 0.4))
            finally:
                self.running[key] -= 1
            self.ended += 1
            return [key, version]

        return load


def chain(url: str | None, namespace: str) -> tuple[AsyncTieredCache, list[Any]]:
    """The chain, and its tiers (each read on its own at the end)."""
    tiers: list[Any] = [MemoryTier(name="l1", max_entries=1000, ttl=600)]
    protection = Protection(lease="off")
    if url is not None:
        import redis.asyncio as aioredis
        from tiered_cache_redis import AsyncRedisTier

        tiers.append(AsyncRedisTier(aioredis.Redis.from_url(url), namespace=namespace))
        protection = Protection(lease="auto", lease_wait=1.0)
    return AsyncTieredCache(tiers, protection=protection), tiers


class Storm:
    def __init__(self, args: argparse.Namespace, cache: AsyncTieredCache, tiers: list[Any]) -> None:
        self.args = args
        self.cache = cache
        self.tiers = tiers
        self.rng = random.Random(args.seed)
        self.source = Source(self.rng)
        self.keys = [f"k{n}" for n in range(args.keys)]
        #: The version each key's last finished write gave it.
        self.written: dict[str, int] = collections.defaultdict(int)
        self.counts: collections.Counter[str] = collections.Counter()
        self.stop = asyncio.Event()

    async def reader(self) -> None:
        rng, cache = self.rng, self.cache
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            floor = self.written[key]
            call = cache.get(key, self.source.loader(key))
            try:
                if rng.random() < 0.3:  # cancelled by hand, as a client going away
                    task = asyncio.ensure_future(call)
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    task.cancel()
                    try:
                        value = await task
                    except asyncio.CancelledError:
                        self.counts["cancelled"] += 1
                        continue
                else:
                    value = await asyncio.wait_for(call, rng.uniform(0.01, 0.5))
            except TimeoutError:
                self.counts["timed_out"] += 1
                continue
            except Exception as exc:  # what a caller saw
                self.counts[f"error:{type(exc).__name__}"] += 1
                continue
            self.counts["served"] += 1
            if value[1] < floor:
                self.counts["served_older"] += 1

    async def writer(self) -> None:
        rng, cache = self.rng, self.cache
        while not self.stop.is_set():
            await asyncio.sleep(0.05)
            key = rng.choice(self.keys)
            version = self.source.versions[key] + 1
            self.source.versions[key] = version
            try:
                if rng.random() < 0.5:
                    await cache.set(key, [key, version])
                else:
                    await cache.invalidate(key)
            except ChainClosedError:
                self.counts["error:ChainClosedError"] += 1
                return
            self.written[key] = version
            self.counts["writes"] += 1

    async def run(self, seconds: float, close_at: float | None) -> dict[str, Any]:
        tasks = [asyncio.ensure_future(self.reader()) for _ in range(self.args.callers)]
        tasks.append(asyncio.ensure_future(self.writer()))
        if close_at is None:
            await asyncio.sleep(seconds)
            self.stop.set()
            await asyncio.gather(*tasks)
            ended = await self.cache.wait_background(10)
            self.counts["background_ended"] = int(ended)
            self.counts["filled_older"] = await self.filled_older()
        else:
            await asyncio.sleep(close_at)
            started = time.monotonic()
            await self.cache.aclose()
            self.counts["close_ms"] = round((time.monotonic() - started) * 1000)
            self.stop.set()
            _, pending = await asyncio.wait(tasks, timeout=10)
            self.counts["callers_hung"] = len(pending)
        source = self.source
        return {
            **dict(sorted(self.counts.items())),
            "loads_begun": source.begun,
            "loads_ended": source.ended,
            "most_loads_of_a_key_at_once": source.most_at_once,
        }

    async def filled_older(self) -> int:
        """Copies (a key in a tier) older than their key's last write."""
        older = 0
        for tier in self.tiers:
            for key in self.keys:
                entry = tier.get(key)
                if asyncio.iscoroutine(entry):
                    entry = await entry
                if entry is not MISSING and entry.value[1] < self.written[key]:
                    older += 1
        return older


async def phase(args: argparse.Namespace, url: str | None, close: bool) -> dict[str, Any]:
    said: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(
        lambda _, context: said.append(
            f"{context.get('message')} {context.get('task') or context.get('future') or ''} "
            f"{context.get('exception')!r}"
        )
    )
    cache, tiers = chain(url, f"impatient-{args.seed}-{int(close)}")
    storm = Storm(args, cache, tiers)
    result = await storm.run(args.seconds, args.seconds / 2 if close else None)
    if not close:
        await cache.aclose()
    await asyncio.sleep(0.5)  # the loads a close left to their callers end
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    result["tasks_left"] = len(left)
    result["said"] = said
    return {"phase": "close" if close else "storm", **result}


def failed(result: dict[str, Any]) -> bool:
    return bool(
        result.get("served_older")
        or result.get("filled_older")
        or result.get("callers_hung")
        or result["said"]
        or any(name.startswith("error:") and "ChainClosed" not in name for name in result)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", action="store_true", help="memory over a private Redis")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    server = RedisServer().start() if args.redis else None
    bad = False
    try:
        url = None if server is None else server.url
        for close in (False, True):
            result = asyncio.run(phase(args, url, close))
            print(json.dumps(result))
            bad = bad or failed(result)
    finally:
        if server is not None:
            server.stop()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
