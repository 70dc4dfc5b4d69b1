"""A fail-safe rest on an outage copy in memory is never written into Redis above it.

A chain whose memory tier comes after Redis (``[redis, memory]``), its bus down: memory keeps
what it is filled with for ``max_stale_when_disconnected`` (an outage copy: another process's
invalidation of the key reaches Redis and not this memory). Another process invalidates a key
there; past the copy's freshness, this process's next read misses Redis, finds the outage copy
in memory, stale, and its load fails: fail-safe serves the copy and rests the source on it
(``fail_safe_throttle``: the copy served as fresh for a while, so the failing source is not
asked by every read). Until 2026-12-08 the rest wrote it into tier 0, whatever tier it was
found in: into Redis, where every process read the old value the other process had deleted
(``Fence.copy_targets`` kept the copy-ups out of Redis, not the rest). The rest now goes
through the same home (``Fence.rest_targets``): here into memory itself, where the copy was,
within its own bound; the source still rests (one load for two reads).

Three ways to the rest, both faces: a ``get`` whose load fails (``stale_while_revalidate``
off), a ``get_many`` whose batch fails, a ``get`` whose background refresh fails. Leases off:
a leasing Redis takes no fill without its lease, and the rest carries none.

Seen failing first (on main, 293e1e9; all six cases; in ``kept_below``)::

    assert other.get("k", lambda: "new") == "new"
    AssertionError: assert 'old' == 'new'

Real parts: a private redis-server for the tier, another for the bus, killed (the bus down
for the chain, the tier up); the other process is a chain of the Redis tier alone. The
chain's clock is a fake one (to pass the copy's freshness without waiting).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.polling import async_until, eventually
from tiered_cache.testing.servers import RedisServer

from .test_redis_first_joined_bypass import settings as redis_first

#: The chain's freshness; the clock moves past it (the outage copy's bound is 60 s).
TTL = 10.0
WAYS = ["get", "get_many", "refresh"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Failing(Exception):
    """The source failing (a throttle, an outage)."""


def settings(tier_url: str, bus_url: str, namespace: str, way: str) -> dict[str, Any]:
    """Redis first, memory below it, the bus on a server of its own (outage copies kept 60 s);
    leases off; the stale copy served at once and refreshed only for ``"refresh"``."""
    return {
        **redis_first(tier_url, bus_url, namespace),
        "ttl": f"{TTL}s",
        "protection": {
            "lease": "off",
            "stale_while_revalidate": way == "refresh",
            "fail_safe_throttle": "5s",
            "soft_timeout": None,
            "early_refresh_beta": 0.0,
        },
    }


def redis_alone(url: str, namespace: str) -> TieredCache:
    return TieredCache.from_config(
        namespace=namespace, tiers=[{"kind": "redis", "url": url, "timeout": "2s"}], ttl="10m"
    )


class Source:
    """Counts its loads; serves ``value`` or fails."""

    def __init__(self) -> None:
        self.loads = 0
        self.value: str | None = "old"

    def one(self, key: str) -> str:
        self.loads += 1
        if self.value is None:
            raise Failing(key)
        return self.value

    def many(self, keys: Sequence[str]) -> dict[str, str]:
        return {key: self.one(key) for key in keys}

    async def aone(self, key: str) -> str:
        return self.one(key)

    async def amany(self, keys: Sequence[str]) -> dict[str, str]:
        return self.many(keys)


def read(cache: TieredCache, way: str, source: Source) -> Any:
    if way == "get_many":
        return cache.get_many(["k"], source.many)["k"]
    value = cache.get("k", lambda: source.one("k"))
    if way == "refresh":
        assert cache.wait_background(10)
    return value


async def aread(cache: AsyncTieredCache, way: str, source: Source) -> Any:
    if way == "get_many":
        return (await cache.get_many(["k"], source.amany))["k"]

    async def load() -> str:
        return await source.aone("k")

    value = await cache.get("k", load)
    if way == "refresh":
        assert await cache.wait_background(10)
    return value


def outage(cache: TieredCache | AsyncTieredCache, bus_server: RedisServer) -> Callable[[], bool]:
    """The bus's server killed: returns the check that the chain took the bus as down."""
    bus_server.kill()
    return lambda: cache.stats()["bus"] == "down"


def gone_stale(other: TieredCache, clock: FakeClock, source: Source) -> None:
    """Another process invalidates the key (unheard here: the bus is down), the clock passes
    memory's copy's freshness (within its bound), and the source fails."""
    other.invalidate("k")
    clock.advance(TTL + 1)
    source.value = None


def kept_below(
    cache: TieredCache | AsyncTieredCache, way: str, other: TieredCache, source: Source, again: Any
) -> None:
    """After the fail-safe read, ``again`` the next read's value: served by the rest, no
    load (two in all: the first read's and the failed one); Redis still misses the key."""
    assert cache.stats()["stale_served_on_error" if way != "refresh" else "refresh_failures"]
    assert (again, source.loads) == ("old", 2)
    assert other.get("k", lambda: "new") == "new"


@pytest.fixture
def clock() -> FakeClock:
    """The chain's clock, from now (Redis's own expiries are the wall clock's)."""
    return FakeClock(time.time())


@pytest.fixture
def other(redis_server: RedisServer, namespace: str) -> Iterator[TieredCache]:
    cache = redis_alone(redis_server.url, namespace)
    yield cache
    cache.close()


@pytest.fixture
def config(
    redis_server: RedisServer, bus_server: RedisServer, namespace: str, way: str
) -> dict[str, Any]:
    return settings(redis_server.url, bus_server.url, namespace, way)


@pytest.mark.parametrize("way", WAYS)
def test_a_rest_on_an_outage_copy_in_memory_stays_out_of_redis(
    config: dict[str, Any], bus_server: RedisServer, clock: FakeClock, other: TieredCache, way: str
) -> None:
    cache = TieredCache.from_config(**config, clock=clock)
    source = Source()
    try:
        assert eventually(lambda: cache.stats()["bus"] == "connected", 10)
        assert eventually(outage(cache, bus_server), 10)
        assert read(cache, way, source) == "old"  # loaded: in Redis, and memory's copy
        gone_stale(other, clock, source)
        assert read(cache, way, source) == "old"  # fail-safe: the stale copy served
        kept_below(cache, way, other, source, read(cache, way, source))
    finally:
        cache.close()


@pytest.mark.anyio
@pytest.mark.parametrize("way", WAYS)
async def test_asyncio_a_rest_on_an_outage_copy_in_memory_stays_out_of_redis(
    config: dict[str, Any], bus_server: RedisServer, clock: FakeClock, other: TieredCache, way: str
) -> None:
    cache = AsyncTieredCache.from_config(**config, clock=clock)
    source = Source()
    try:
        await cache.lookup_many(["warm"])  # listens on this loop (a read's first call)
        await async_until(lambda: cache.stats()["bus"] == "connected", "the bus subscribed")
        await async_until(outage(cache, bus_server), "the bus down")
        assert await aread(cache, way, source) == "old"
        gone_stale(other, clock, source)
        assert await aread(cache, way, source) == "old"
        kept_below(cache, way, other, source, await aread(cache, way, source))
    finally:
        await cache.aclose()
