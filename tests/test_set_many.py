"""``set_many`` on both chains: set's order of source, fence and tiers, for several keys."""

from __future__ import annotations

from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MISSING, Entry

STRICT = Protection.never_stale(lease="off")


def tiers(clock: FakeClock) -> list[MemoryTier]:
    return [
        MemoryTier(name="l1", max_entries=100, clock=clock),
        MemoryTier(name="l2", max_entries=100, clock=clock),
    ]


class FailingAt(DictSource):
    """A source whose ``store`` fails for one key (after storing the ones before it)."""

    def __init__(self, items: dict[str, Any], failing: str) -> None:
        super().__init__(items)
        self.failing = failing

    def store(self, key: str, value: Any) -> None:
        if key == self.failing:
            raise RuntimeError(f"cannot write {key}")
        super().store(key, value)


def values(tier: MemoryTier, keys: list[str]) -> list[Any]:
    return [entry.value if isinstance(entry := tier.get(key), Entry) else MISSING for key in keys]


def test_set_many_writes_the_source_then_every_tier(clock: FakeClock) -> None:
    source = DictSource({"a": 0})
    l1, l2 = tiers(clock)
    cache = TieredCache([l1, l2], source, clock=clock, protection=STRICT)
    assert cache.get("a") == 0
    cache.set_many({"a": 1, "b": 2})
    assert source.items == {"a": 1, "b": 2}
    assert values(l1, ["a", "b"]) == [1, 2] and values(l2, ["a", "b"]) == [1, 2]
    assert cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert source.loads == ["a"]


def test_a_source_failing_part_way_drops_the_keys_it_took(clock: FakeClock) -> None:
    source = FailingAt({"a": 0, "b": 0, "c": 0}, failing="b")
    l1, l2 = tiers(clock)
    cache = TieredCache([l1, l2], source, clock=clock, protection=STRICT)
    cache.get_many(["a", "b", "c"])
    with pytest.raises(RuntimeError, match="cannot write b"):
        cache.set_many({"a": 1, "b": 2, "c": 3})
    assert source.items == {"a": 1, "b": 0, "c": 0}
    # "a" changed at the source: no tier may serve its old value; "b" and "c" did not.
    assert values(l1, ["a", "b", "c"]) == [MISSING, 0, 0]
    assert values(l2, ["a", "b", "c"]) == [MISSING, 0, 0]
    assert cache.get("a") == 1


@pytest.mark.anyio
async def test_the_async_chain_has_the_same_set_many(clock: FakeClock) -> None:
    source = FailingAt({"a": 0, "b": 0}, failing="zz")
    l1, l2 = tiers(clock)
    with pytest.warns(match="source 'dict'"):
        cache = AsyncTieredCache([l1, l2], source, clock=clock, protection=STRICT)
    await cache.set_many({"a": 1, "b": 2})
    assert source.items == {"a": 1, "b": 2}
    assert values(l2, ["a", "b"]) == [1, 2]
    assert await cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert source.loads == []
    await cache.aclose()
