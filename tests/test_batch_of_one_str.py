"""A batch's keys given as one ``str`` (a key where a list of keys belongs) are refused with
``TypeError`` before anything is read, loaded or invalidated, on both faces. Iterated, the
text's characters were the keys: ``get_many("tweet:42")`` loaded the keys ``t``, ``w``,
``e``..., and ``invalidate_many("tweet:42")`` invalidated them and left ``tweet:42`` served
(a stale copy a write's caller believed gone)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.testing.clock import FakeClock

KEY = "tweet:42"
#: The message: the text's type and length, never the text.
REFUSED = r"not one (str|bytes) \(of length 8\)"


def memory(clock: FakeClock) -> MemoryTier:
    return MemoryTier(name="memory", max_entries=100, ttl=60, clock=clock)


def batch_calls(cache: Any, text: Any, loader: Any) -> list[Callable[[], Any]]:
    """Each call of a batch, given ``text`` as its keys (an asyncio chain's: coroutines)."""
    return [
        lambda: cache.get_many(text, loader),
        lambda: cache.lookup_many(text),
        lambda: cache.invalidate_many(text),
    ]


@pytest.mark.parametrize("text", [KEY, KEY.encode()], ids=["str", "bytes"])
def test_a_threaded_batch_of_one_str_is_refused_before_anything_is_done(text: Any) -> None:
    clock = FakeClock()
    cache = TieredCache([memory(clock)], clock=clock)
    cache.set(KEY, "v1")
    loaded: list[list[str]] = []
    for call in batch_calls(cache, text, loaded.append):
        with pytest.raises(TypeError, match=REFUSED) as refused:
            call()
        assert "tweet" not in str(refused.value)  # the text is not shown
    assert loaded == []
    assert cache.get(KEY) == "v1"  # nothing was invalidated either
    assert cache.stats()["tiers"][0]["entries"] == 1


@pytest.mark.parametrize("text", [KEY, KEY.encode()], ids=["str", "bytes"])
def test_an_asyncio_batch_of_one_str_is_refused_before_anything_is_done(text: Any) -> None:
    async def main() -> None:
        clock = FakeClock()
        cache = AsyncTieredCache([memory(clock)], clock=clock)
        await cache.set(KEY, "v1")
        loaded: list[list[str]] = []

        async def load_many(keys: list[str]) -> dict[str, Any]:
            loaded.append(keys)
            return {}

        for call in batch_calls(cache, text, load_many):
            with pytest.raises(TypeError, match=REFUSED):
                await call()
        assert loaded == []
        assert await cache.get(KEY) == "v1"
        await cache.aclose()

    asyncio.run(main())
