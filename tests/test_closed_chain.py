"""A closed chain refuses every call with ChainClosedError, on both faces.

Before, use after ``close()`` was not defined: a memory-only chain went on serving (and
writing its source), a chain with Redis raised the Redis tier's bare ``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import tiered_cache
from tiered_cache import (
    AsyncTieredCache,
    ChainClosedError,
    MemoryTier,
    TieredCache,
    TieredCacheError,
)
from tiered_cache.bus import Invalidation, LocalBus
from tiered_cache.testing import FakeClock
from tiered_cache.testing.sources import AsyncDictSource, DictSource


def lone(clock: FakeClock, source: DictSource) -> TieredCache:
    """One in-process tier and no bus: ``get`` and ``set`` are the plain-call fast paths."""
    return TieredCache([MemoryTier(name="l1", max_entries=100, clock=clock)], clock=clock)


def two_tiers(clock: FakeClock, source: DictSource) -> TieredCache:
    return TieredCache(
        [
            MemoryTier(name="l1", max_entries=100, clock=clock),
            MemoryTier(name="l2", max_entries=100, clock=clock),
        ],
        source,
        clock=clock,
    )


def around(clock: FakeClock, source: DictSource) -> TieredCache:
    """Writes go to the source first, then invalidate: a closed chain must not write it."""
    return TieredCache(
        [MemoryTier(name="l1", max_entries=100, clock=clock)],
        source,
        clock=clock,
        write_policy="around",
    )


#: Every call of the chains' faces, as ``(method, arguments)``; ``LOAD`` stands for a loader
#: of one key, ``LOAD_MANY`` for a batch loader, each of the face's kind.
LOAD, LOAD_MANY = object(), object()
CALLS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "get a held key": ("get", ("held", LOAD)),
    "get a new key": ("get", ("new", LOAD)),
    "get_many": ("get_many", (["held", "new"], LOAD_MANY)),
    "lookup_many": ("lookup_many", (["held"],)),
    "set": ("set", ("held", "new value")),
    "set_many": ("set_many", ({"held": 1, "other": 2},)),
    "invalidate": ("invalidate", ("held",)),
    "invalidate_many": ("invalidate_many", (["held"],)),
    "invalidate_prefix": ("invalidate_prefix", ("he",)),
    "clear": ("clear", ()),
}


def call_of(
    cache: TieredCache | AsyncTieredCache, name: str, load: object, load_many: object
) -> Any:
    """The call ``name`` of :data:`CALLS` made on ``cache`` with these loaders."""
    method, arguments = CALLS[name]
    given = [load if a is LOAD else load_many if a is LOAD_MANY else a for a in arguments]
    return getattr(cache, method)(*given)


@pytest.mark.parametrize("build", [lone, two_tiers, around])
@pytest.mark.parametrize("call", list(CALLS))
def test_every_call_on_a_closed_chain_is_refused(
    clock: FakeClock, build: Callable[[FakeClock, DictSource], TieredCache], call: str
) -> None:
    source = DictSource({"held": "from the source"})
    cache = build(clock, source)
    cache.set("held", "cached")
    assert cache.get("held") == "cached"
    cache.close()
    held = [tier.get("held") for tier in cache.tiers]
    reads, writes = source.reads, dict(source.items)
    with pytest.raises(ChainClosedError, match="closed"):
        call_of(cache, call, lambda: "loaded", lambda keys: {})
    # Nothing reached a tier or the source, and nothing was counted as a tier failing.
    assert [tier.get("held") for tier in cache.tiers] == held
    assert (source.reads, source.items) == (reads, writes)
    assert [tier["errors"] for tier in cache.stats()["tiers"]] == [0] * len(cache.tiers)


def test_the_closed_error_is_the_librarys_and_close_stays_idempotent(clock: FakeClock) -> None:
    cache = two_tiers(clock, DictSource({}))
    cache.close()
    cache.close()
    with pytest.raises(ChainClosedError) as raised:
        cache.get("k")
    assert isinstance(raised.value, TieredCacheError)
    assert "ChainClosedError" in tiered_cache.__all__
    assert repr(cache) in str(raised.value)
    # Reporting still answers: a scrape of a closed chain must not fail.
    assert cache.stats()["namespace"] == "default"
    assert cache.hot_keys() == []


@pytest.mark.parametrize("build", [lone, two_tiers])
def test_a_decorated_function_of_a_closed_chain_is_refused(
    clock: FakeClock, build: Callable[[FakeClock, DictSource], TieredCache]
) -> None:
    cache = build(clock, DictSource({}))
    calls: list[str] = []

    @cache.cached(key="tweet:{tweet_id}")
    def get_tweet(tweet_id: str) -> str:
        calls.append(tweet_id)
        return f"tweet {tweet_id}"

    assert get_tweet("1") == "tweet 1"
    assert get_tweet("1") == "tweet 1"  # a plain hit (in C, where it is built)
    cache.close()
    for call in (
        lambda: get_tweet("1"),
        lambda: get_tweet(tweet_id="1"),
        lambda: get_tweet("2"),
        lambda: get_tweet.invalidate(tweet_id="1"),
    ):
        with pytest.raises(ChainClosedError):
            call()
    assert calls == ["1"]


async def _loaded() -> str:
    return "loaded"


async def _loaded_many(keys: list[str]) -> dict[str, Any]:
    return {}


@pytest.mark.anyio
@pytest.mark.parametrize("call", list(CALLS))
async def test_every_call_on_a_closed_async_chain_is_refused(clock: FakeClock, call: str) -> None:
    outer = AsyncDictSource({"held": "from the source"})
    source = outer.inner
    cache = AsyncTieredCache(
        [
            MemoryTier(name="l1", max_entries=100, clock=clock),
            MemoryTier(name="l2", max_entries=100, clock=clock),
        ],
        outer,
        clock=clock,
    )
    await cache.set("held", "cached")
    assert await cache.get("held") == "cached"
    assert not cache.closed
    await cache.aclose()
    await cache.aclose()
    assert cache.closed
    held = [tier.get("held") for tier in cache.tiers]  # memory tiers: plain calls
    reads, writes = source.reads, dict(source.items)
    with pytest.raises(ChainClosedError, match="closed"):
        await call_of(cache, call, _loaded, _loaded_many)
    assert [tier.get("held") for tier in cache.tiers] == held  # type: ignore[union-attr]
    assert (source.reads, source.items) == (reads, writes)
    assert [tier["errors"] for tier in cache.stats()["tiers"]] == [0, 0]


@pytest.mark.anyio
async def test_a_decorated_coroutine_of_a_closed_async_chain_is_refused(clock: FakeClock) -> None:
    cache = AsyncTieredCache([MemoryTier(name="l1", max_entries=100, clock=clock)], clock=clock)
    calls: list[str] = []

    @cache.cached(key="tweet:{tweet_id}")
    async def get_tweet(tweet_id: str) -> str:
        calls.append(tweet_id)
        return f"tweet {tweet_id}"

    assert await get_tweet("1") == "tweet 1"
    assert await get_tweet("1") == "tweet 1"
    await cache.aclose()
    with pytest.raises(ChainClosedError):
        await get_tweet("1")
    with pytest.raises(ChainClosedError):
        await get_tweet.invalidate(tweet_id="1")
    assert calls == ["1"]


def test_entering_a_closed_chain_is_refused_as_using_it_is(clock: FakeClock) -> None:
    """``with closed_cache:`` entered without a word, and the block's first call raised."""
    cache = two_tiers(clock, DictSource({}))
    with cache as entered:
        assert entered is cache
    assert cache.closed
    with pytest.raises(ChainClosedError) as used:
        cache.get("k")
    body: list[str] = []
    with pytest.raises(ChainClosedError) as raised, cache:
        body.append("ran")
    assert body == []
    assert str(raised.value) == str(used.value)


@pytest.mark.anyio
async def test_entering_a_closed_async_chain_is_refused_as_using_it_is(clock: FakeClock) -> None:
    cache = AsyncTieredCache([MemoryTier(name="l1", max_entries=100, clock=clock)], clock=clock)
    async with cache as entered:
        assert entered is cache
    assert cache.closed
    with pytest.raises(ChainClosedError) as used:
        await cache.get("k")
    body: list[str] = []
    with pytest.raises(ChainClosedError) as raised:
        async with cache:
            body.append("ran")
    assert body == []
    assert str(raised.value) == str(used.value)


class HeldOpenBus(LocalBus):
    """An in-process bus whose close keeps its listeners: what a listener still running
    after the close (one that read a message as the bus closed, or that the close stopped
    waiting for) would reach."""

    def close(self) -> None: ...


def test_a_closed_chain_hears_no_message(clock: FakeClock) -> None:
    """A message reaching the chain after its close changes nothing and is not counted.
    Seen failing: ``1 == 0`` (counted in ``bus_received``, and applied to the closed chain's
    fence)."""
    bus = HeldOpenBus()
    cache = TieredCache([MemoryTier(name="l1", max_entries=100, clock=clock)], clock=clock, bus=bus)
    cache.close()
    bus.publish(Invalidation("someone else", 1, ("k",)))
    assert cache.stats()["bus_received"] == 0
