"""A storm of impatient callers over Redis leases, a source that hangs some loads, invalidations
among them, and the close in the middle of it: ``aclose()`` returns, no lease is left in
Redis, and no value older than an invalidation is filled (the loads left running by cancelled
callers fill under their caller's fence mark and lease, which the invalidation voids).

Each caller of 200 reads one of 8 keys and is cancelled after a random delay, or gives up
under ``asyncio.wait_for``; the source answers most loads after a random delay with the
key's version as the load began, never answers some (a cancellation ends those) and ignores
its cancellation in some (until the end of the test, past the close). A writer bumps a key's
version in the source and invalidates it through the chain meanwhile."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from typing import Any

import pytest
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier

from tiered_cache import AsyncTieredCache, ChainClosedError, LoadTimeout, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING

from .leases_held import leases_in

pytestmark = pytest.mark.anyio

KEYS = [f"k{n}" for n in range(8)]
#: A bound on waits that must end, so that a regression fails instead of hanging.
GUARD = 30.0


class Source:
    """Versions by key; what became of each load counted."""

    def __init__(self, rng: random.Random, *, stubborn: float = 0.04) -> None:
        self.rng = rng
        self.stubborn = stubborn  # the share of loads that ignore their cancellation
        self.versions: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.freed = asyncio.Event()  # ends the loads that ignore their cancellation

    def loader(self, key: str) -> Any:
        async def load() -> list[Any]:
            version = self.versions[key]  # read as the load begins
            self.counts["loads_begun"] += 1
            fate = self.rng.random()
            if fate < 0.08:  # never answers; a cancellation ends it
                self.counts["loads_hung"] += 1
                await asyncio.Event().wait()
            if fate < 0.08 + self.stubborn:  # never answers, and ignores its cancellation
                self.counts["loads_stubborn"] += 1
                while not self.freed.is_set():
                    try:
                        await self.freed.wait()
                    except asyncio.CancelledError:
                        self.counts["cancellations_ignored"] += 1
            else:
                await asyncio.sleep(self.rng.uniform(0.0, 0.08))
            self.counts["loads_answered"] += 1
            return [key, version]

        return load


async def a_caller(
    cache: AsyncTieredCache,
    source: Source,
    written: dict[str, int],
    rng: random.Random,
    start_within: float = 0.3,
) -> str:
    """One impatient read, begun within ``start_within`` seconds: what became of it."""
    await asyncio.sleep(rng.uniform(0.0, start_within))
    key = rng.choice(KEYS)
    floor = written[key]
    call = cache.get(key, source.loader(key))
    try:
        if rng.random() < 0.7:
            request = asyncio.ensure_future(call)
            await asyncio.sleep(rng.uniform(0.0, 0.06))
            request.cancel()
            value = await request
        else:
            value = await asyncio.wait_for(call, rng.uniform(0.0, 0.06))
    except (asyncio.CancelledError, TimeoutError, LoadTimeout):
        return "gave_up"
    except ChainClosedError:
        return "closed"
    return "served_older" if value[1] < floor else "served"


async def a_writer(cache: AsyncTieredCache, source: Source, written: dict[str, int]) -> int:
    """Invalidations every few milliseconds until the close; how many returned."""
    rng = random.Random(7)
    made = 0
    while True:
        await asyncio.sleep(rng.uniform(0.0, 0.01))
        key = rng.choice(KEYS)
        source.versions[key] += 1
        version = source.versions[key]
        try:
            await cache.invalidate(key)
        except ChainClosedError:
            return made
        written[key] = version
        made += 1


@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_impatient_callers_then_a_close_leave_no_lease_and_fill_nothing_older(
    redis_server: RedisServer,
    namespace: str,
    seed: int,
    timed: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Untimed loads (the default's misses: begun again for a cancelled caller), or timed
    ones (``hard_timeout``: each in a task of its own from the start)."""
    rng = random.Random(seed)
    source = Source(rng)
    written: dict[str, int] = collections.defaultdict(int)
    protection = Protection.never_stale(
        lease="auto",
        lease_ttl=60.0,  # a lease left behind stays for the checks below
        lease_wait=0.05,
        lease_poll=0.005,
        max_abandoned_loads=64,
        close_wait=0.2,
        hard_timeout=0.03 if timed else None,
    )
    redis_tier = AsyncRedisTier(aioredis.Redis.from_url(redis_server.url), namespace=namespace)
    cache = AsyncTieredCache(
        [MemoryTier(max_entries=100, ttl=60), redis_tier],
        namespace=namespace,
        protection=protection,
    )
    writer = asyncio.create_task(a_writer(cache, source, written))
    callers = [asyncio.create_task(a_caller(cache, source, written, rng)) for _ in range(200)]
    # The storm's length: a caller whose own load ignores its cancellation is still waiting.
    await asyncio.wait(callers, timeout=1.0)
    left = cache.stats()["abandoned_loads"]
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        closing = asyncio.create_task(cache.aclose())
        await asyncio.wait({closing}, timeout=GUARD)
        closed = closing.done()
        leases_at_close = leases_in(redis_server, namespace)
        source.freed.set()  # the loads that ignored their cancellation end now
        await asyncio.wait({closing, writer, *callers}, timeout=GUARD)
    counts = collections.Counter(caller.result() if caller.done() else "hung" for caller in callers)
    # What Redis holds for each key is no older than its last invalidation.
    reader = AsyncRedisTier(aioredis.Redis.from_url(redis_server.url), namespace=namespace)
    try:
        entries = {key: await reader.get(key) for key in KEYS}
    finally:
        await reader.aclose()
    older = [k for k, e in entries.items() if e is not MISSING and e.value[1] < written[k]]
    stats = cache.stats()
    print(
        f"seed {seed} {'timed' if timed else 'untimed'}:",
        {
            **dict(counts),
            **dict(source.counts),
            "invalidations": await writer if writer.done() else -1,
            "left_loads": left,
            "close_returned": closed,
            "close_loads_left_running": stats.get("close_loads_left_running"),
            "leases_at_close": len(leases_at_close),
            "leases_after": len(leases_in(redis_server, namespace)),
            "filled_older": len(older),
        },
    )
    assert closed  # aclose returned with loads still running
    assert leases_at_close == []
    assert leases_in(redis_server, namespace) == []
    assert counts["served_older"] == 0
    assert older == []
    assert stats["close_loads_left_running"] <= source.counts["loads_stubborn"]
    assert [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()] == []
