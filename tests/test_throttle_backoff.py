"""A throttled key's rest seen through the chain, threads and asyncio, on a fake clock:
what reaches the loader while keys rest (the rule itself: tests/test_throttle_rest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from tiered_cache import (
    AsyncTieredCache,
    MemoryTier,
    PartialBatchError,
    SourceResting,
    SourceThrottled,
    TieredCache,
)
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock


class Table:
    """A batch loader that records the keys of each call and throttles while ``throttling``."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.throttling = True

    def answer(self, keys: Sequence[str]) -> dict[str, Any]:
        self.calls.append(list(keys))
        if self.throttling:
            raise SourceThrottled("ProvisionedThroughputExceededException")
        return {key: key.upper() for key in keys}

    def __call__(self, keys: Sequence[str]) -> dict[str, Any]:
        return self.answer(keys)

    async def coroutine(self, keys: Sequence[str]) -> dict[str, Any]:
        return self.answer(keys)


def tiers(clock: FakeClock) -> list[MemoryTier]:
    return [MemoryTier(max_entries=100, ttl=60, clock=clock)]


def test_a_get_many_whose_keys_all_rest_calls_no_loader(clock: FakeClock) -> None:
    """Every key of the batch rests: each is answered SourceResting and the loader is not
    called (on 8ff69d3 it was called with no keys: a request, or an SQL ``IN ()``)."""
    table = Table()
    cache = TieredCache(tiers(clock), clock=clock, protection=Protection(lease="off"))
    with pytest.raises(PartialBatchError):
        cache.get_many(["a", "b"], table)
    with pytest.raises(PartialBatchError) as caught:
        cache.get_many(["a", "b"], table)
    assert all(isinstance(e, SourceResting) for e in caught.value.errors.values())
    assert table.calls == [["a", "b"]]


@pytest.mark.anyio
async def test_an_async_get_many_whose_keys_all_rest_calls_no_loader(clock: FakeClock) -> None:
    table = Table()
    cache = AsyncTieredCache(tiers(clock), clock=clock, protection=Protection(lease="off"))
    for _ in range(2):
        with pytest.raises(PartialBatchError):
            await cache.get_many(["a", "b"], table.coroutine)
    assert table.calls == [["a", "b"]]
    await cache.aclose()
