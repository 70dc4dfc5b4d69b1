"""Keys that are not a ``str`` are refused with the cache's TypeError on every read path:
the compiled plain-hit reader, the general L1 lookup, and the miss -- also when the key cannot
be hashed, or hashes and compares like a stored key."""

from __future__ import annotations

from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.bus import LocalBus
from tiered_cache.testing import FakeClock

SHAPES = ["alone", "bus", "copying"]


def build(shape: str, clock: FakeClock) -> TieredCache:
    """``alone``: one memory tier (the compiled plain-hit reader, the fast miss); ``bus``: the
    reader and the general miss; ``copying``: no reader (copy_on_read), the fast miss."""
    tier = MemoryTier(
        name="l1", max_entries=100, ttl=60, clock=clock, copy_on_read=shape == "copying"
    )
    return TieredCache([tier], clock=clock, bus=LocalBus() if shape == "bus" else None)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("key", [1, b"k", ("k",), None, 1.5])
def test_a_key_that_is_not_a_str_raises_type_error(shape: str, key: Any, clock: FakeClock) -> None:
    cache = build(shape, clock)
    cache.set("k", "v")
    with pytest.raises(TypeError, match="cache keys are str"):
        cache.get(key, lambda: "x")
    with pytest.raises(TypeError, match="cache keys are str"):
        cache.get(key)
    assert cache.stats()["loads"] == 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("key", [["k"], {"k": 1}, {"k"}])
def test_an_unhashable_key_raises_the_caches_type_error(
    shape: str, key: Any, clock: FakeClock
) -> None:
    cache = build(shape, clock)
    with pytest.raises(TypeError, match="cache keys are str"):
        cache.get(key, lambda: "x")


class LookAlike:
    """Not a str, but hashes and compares like the key ``"k"``."""

    def __hash__(self) -> int:
        return hash("k")

    def __eq__(self, other: object) -> bool:
        return other == "k"


@pytest.mark.parametrize("shape", SHAPES)
def test_a_look_alike_key_is_refused_even_on_a_hit(shape: str, clock: FakeClock) -> None:
    cache = build(shape, clock)
    cache.set("k", "v")
    assert cache.get("k") == "v"
    with pytest.raises(TypeError, match="cache keys are str"):
        cache.get(LookAlike())  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("key", [["k"], LookAlike(), 1])
async def test_the_async_chain_refuses_them_too(key: Any, clock: FakeClock) -> None:
    tier = MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock)
    async with AsyncTieredCache([tier], clock=clock) as cache:
        await cache.set("k", "v")
        assert await cache.get("k") == "v"

        async def loader() -> str:
            return "x"

        with pytest.raises(TypeError, match="cache keys are str"):
            await cache.get(key, loader)
