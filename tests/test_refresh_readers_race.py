"""Many readers of a few keys while background refreshes start, fail and land, the clock moves
the copies through stale and past ``max_stale``, and the keys are invalidated meanwhile.

Readers that find a refresh leading their key's flight read the tiers beside it
(:data:`~tiered_cache.singleflight.BESIDE`) and join it only when they find nothing to serve.
Whatever the interleaving: no two loads of a key at once, no read that began after an
invalidation of its key returned is served a value from before it, and no caller gets an error
but its own load's failure.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock

KEYS = ("a", "b")
READERS = 6
READS = 150
#: Stale copies served for 3 s after a TTL of 1 s; the clock moves up to 1.5 s a step.
PROTECTION = Protection(max_stale=3, lease="off", early_refresh_beta=0.0, soft_timeout=None)


class LoadFailed(Exception):
    """The source's own failure (a caller that loads may get it)."""


class Source:
    """Versions of each key: a write bumps one; a load reads the version it starts at, takes a
    moment and fails one time in five. Counts the loads of a key running at once."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.version = dict.fromkeys(KEYS, 0)
        self.running: Counter[str] = Counter()
        self.most = 0
        self.loads = 0

    def write(self, key: str) -> int:
        """A write of ``key``: its new version."""
        with self._lock:
            self.version[key] += 1
            return self.version[key]

    def begin(self, key: str) -> tuple[int, float, bool]:
        with self._lock:
            self.loads += 1
            self.running[key] += 1
            self.most = max(self.most, self.running[key])
            return self.version[key], self._rng.random() * 0.002, self._rng.random() < 0.2

    def end(self, key: str, version: int, fails: bool) -> int:
        with self._lock:
            self.running[key] -= 1
        if fails:
            raise LoadFailed(key)
        return version

    def loader(self, key: str) -> Callable[[], int]:
        def load() -> int:
            version, pause, fails = self.begin(key)
            time.sleep(pause)
            return self.end(key, version, fails)

        return load

    def async_loader(self, key: str) -> Callable[[], Awaitable[int]]:
        async def load() -> int:
            version, pause, fails = self.begin(key)
            await asyncio.sleep(pause)
            return self.end(key, version, fails)

        return load


def memory(clock: FakeClock) -> list[MemoryTier]:
    return [MemoryTier(name="l1", max_entries=10, ttl=60, clock=clock)]


class Race:
    """One round: the source, the clock, and what the readers saw. Each reader draws from a
    generator of its own what it does before a read: the clock moved (the copies go stale and
    past ``max_stale``: a step averages 0.45 s against a TTL of 1 s and 3 s of stale serving),
    a key written (its invalidation is the reader's to make), or neither."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.clock = FakeClock()
        self.source = Source(seed)
        self._lock = threading.Lock()
        #: Per key, the version every read begun from now on must be served at least: the
        #: newest write whose invalidation has returned.
        self.floors = dict.fromkeys(KEYS, 0)
        self.old: list[tuple[str, int, int]] = []
        self.errors: list[BaseException] = []

    def turns(self, reader: int) -> list[tuple[str | None, str]]:
        """``(key written before the read or None, key read)`` for each of a reader's reads."""
        rng = random.Random(self.seed * 100 + reader)
        return [
            (rng.choice(KEYS) if rng.random() < 0.05 else None, rng.choice(KEYS))
            for _ in range(READS)
        ]

    def step(self, reader: int, number: int) -> None:
        """The clock moved, or not, before read ``number`` of ``reader``."""
        rng = random.Random(hash((self.seed, reader, number)))
        if rng.random() < 0.15:
            self.clock.advance(rng.uniform(0.1, 0.8))

    def invalidated(self, key: str, version: int) -> None:
        with self._lock:
            self.floors[key] = max(self.floors[key], version)

    def served(self, key: str, floor: int, value: int) -> None:
        if value < floor:
            self.old.append((key, value, floor))

    def check(self, stats: Any) -> None:
        assert (self.errors, self.old, self.source.most) == ([], [], 1), f"seed {self.seed}"
        # The race was run: refreshes started and stale copies served beside them.
        assert stats["refreshes"] > 0 and stats["stale_served"] > 0, f"seed {self.seed}: {stats}"


def test_readers_beside_refreshes_invalidations_and_expiry() -> None:
    def race(seed: int) -> None:
        run = Race(seed)
        cache = TieredCache(memory(run.clock), clock=run.clock, ttl=1, protection=PROTECTION)

        def read(reader: int) -> None:
            for number, (written, key) in enumerate(run.turns(reader)):
                run.step(reader, number)
                if written is not None:
                    version = run.source.write(written)
                    cache.invalidate(written)
                    run.invalidated(written, version)
                floor = run.floors[key]
                try:
                    run.served(key, floor, cache.get(key, run.source.loader(key)))
                except LoadFailed:
                    pass
                except BaseException as exc:
                    run.errors.append(exc)
                    return

        readers = [threading.Thread(target=read, args=(n,)) for n in range(READERS)]
        try:
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join(60)
            cache.wait_background(10)
        finally:
            cache.close()
        run.check(cache.stats())

    for seed in range(3):
        race(seed)


def test_async_readers_beside_refreshes_invalidations_and_expiry() -> None:
    async def race(seed: int) -> None:
        run = Race(seed)
        cache = AsyncTieredCache(memory(run.clock), clock=run.clock, ttl=1, protection=PROTECTION)

        async def read(reader: int) -> None:
            for number, (written, key) in enumerate(run.turns(reader)):
                run.step(reader, number)
                if written is not None:
                    version = run.source.write(written)
                    await cache.invalidate(written)
                    run.invalidated(written, version)
                floor = run.floors[key]
                try:
                    run.served(key, floor, await cache.get(key, run.source.async_loader(key)))
                except LoadFailed:
                    pass
                except BaseException as exc:
                    run.errors.append(exc)
                    return
                await asyncio.sleep(0)

        try:
            await asyncio.wait_for(asyncio.gather(*(read(n) for n in range(READERS))), 60)
            await cache.wait_background(10)
        finally:
            await cache.aclose()
        run.check(cache.stats())

    for seed in range(3):
        asyncio.run(race(seed))
