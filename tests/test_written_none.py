"""A ``None`` given to ``set``/``set_many`` with a ``ttl`` is kept for that ``ttl``.

``negative_ttl`` is how long a *source's* "not found" is kept; a write that says how long to
keep ``None`` (Django's backend stores ``None`` as any value, with its timeout) is kept that
long: a ``None`` set for a second stayed ``negative_ttl`` (30 s), one set for an hour went
after it. Without a ``ttl`` a written ``None`` keeps ``negative_ttl``, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.memory import MemoryTier
from tiered_cache.testing import FakeClock
from tiered_cache.tier import MISSING

#: The chain's negative_ttl, between the two ttls written.
NEGATIVE_TTL = 30.0


def alone(clock: FakeClock) -> TieredCache:
    """One in-process tier and no source: ``set`` goes through ``set_alone``."""
    return TieredCache(
        [MemoryTier(max_entries=100, clock=clock)], clock=clock, negative_ttl=NEGATIVE_TTL
    )


def two_tiers(clock: FakeClock) -> TieredCache:
    """Two tiers: ``set`` goes through the steps of the write path."""
    tiers = [MemoryTier(name=name, max_entries=100, clock=clock) for name in ("l1", "l2")]
    return TieredCache(tiers, clock=clock, negative_ttl=NEGATIVE_TTL)


def kept(cache: TieredCache, keys: list[str]) -> dict[str, bool]:
    found = cache.lookup_many(keys)
    return {key: found.get(key, MISSING) is not MISSING for key in keys}


@pytest.mark.parametrize("build", [alone, two_tiers], ids=["set_alone", "steps"])
def test_a_none_written_with_a_ttl_is_kept_for_that_ttl(
    build: Callable[[FakeClock], TieredCache],
) -> None:
    clock = FakeClock()
    with build(clock) as cache:
        cache.set("short", None, ttl=1)
        cache.set("long", None, ttl="1h")
        cache.set_many({"many": None}, ttl="1h")
        cache.set("plain", None)
        clock.advance(2)
        assert kept(cache, ["short", "long", "many", "plain"]) == {
            "short": False,
            "long": True,
            "many": True,
            "plain": True,
        }
        clock.advance(NEGATIVE_TTL)
        assert kept(cache, ["long", "many", "plain"]) == {
            "long": True,
            "many": True,
            "plain": False,
        }


def test_a_none_written_with_a_ttl_is_kept_for_that_ttl_on_the_asyncio_face() -> None:
    clock = FakeClock()

    async def run() -> dict[str, Any]:
        cache = AsyncTieredCache(
            [MemoryTier(max_entries=100, clock=clock)], clock=clock, negative_ttl=NEGATIVE_TTL
        )
        try:
            await cache.set("short", None, ttl=1)
            await cache.set("long", None, ttl="1h")
            await cache.set_many({"many": None}, ttl="1h")
            clock.advance(2 + NEGATIVE_TTL)
            found = await cache.lookup_many(["short", "long", "many"])
            return {
                key: found.get(key, MISSING) is not MISSING for key in ("short", "long", "many")
            }
        finally:
            await cache.aclose()

    assert asyncio.run(run()) == {"short": False, "long": True, "many": True}
