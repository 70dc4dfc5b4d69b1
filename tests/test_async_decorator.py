"""The decorator on ``async def`` functions and methods, and the functions it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, RecursiveLoad, TieredCache
from tiered_cache.testing import FakeClock

pytestmark = pytest.mark.anyio


def memory_chain(clock: FakeClock) -> AsyncTieredCache:
    return AsyncTieredCache([MemoryTier(max_entries=100, ttl=60, clock=clock)], clock=clock)


async def test_async_def_first_call_loads_second_is_served_from_memory(clock: FakeClock) -> None:
    cache = memory_chain(clock)
    calls: list[str] = []

    @cache.cached(key="tweet:{tweet_id}", ttl="1h")
    async def get_tweet(tweet_id: str) -> dict[str, str]:
        calls.append(tweet_id)
        await asyncio.sleep(0)
        return {"id": tweet_id}

    assert await get_tweet("42") == {"id": "42"}
    assert await get_tweet("42") == {"id": "42"}
    assert await get_tweet("42") == {"id": "42"}
    assert calls == ["42"]
    stats = cache.stats()
    assert stats["tiers"][0]["hits"] == 2
    assert stats["loads"] == 1
    await cache.aclose()


async def test_async_methods_of_a_repository_class_and_their_invalidate(clock: FakeClock) -> None:
    cache = memory_chain(clock)

    class TweetRepository:
        def __init__(self) -> None:
            self.reads = 0
            self.text = "first"

        @cache.cached(key="tweet:{tweet_id}")
        async def get(self, tweet_id: str) -> str:
            self.reads += 1
            return f"{tweet_id}:{self.text}"

    repo = TweetRepository()
    assert await repo.get("1") == "1:first"
    assert await repo.get(tweet_id="1") == "1:first"
    assert repo.reads == 1
    repo.text = "second"
    await repo.get.invalidate(tweet_id="1")
    assert await repo.get("1") == "1:second"
    assert repo.reads == 2
    assert TweetRepository.get.key_for(tweet_id="1") == "tweet:1"
    await cache.aclose()


async def test_async_cached_written_above_classmethod_or_staticmethod(clock: FakeClock) -> None:
    cache = memory_chain(clock)
    loads: list[str] = []

    class Repository:
        @cache.cached(key="c:{tweet_id}")
        @classmethod
        async def by_class(cls, tweet_id: str) -> str:
            loads.append(f"{cls.__name__}:{tweet_id}")
            return f"c{tweet_id}"

        @cache.cached(key="s:{tweet_id}")
        @staticmethod
        async def alone(tweet_id: str) -> str:
            loads.append(f"static:{tweet_id}")
            return f"s{tweet_id}"

    assert await Repository.by_class("1") == "c1"
    assert await Repository().by_class("1") == "c1"
    assert await Repository().alone("2") == "s2"
    assert await Repository.alone("2") == "s2"
    assert loads == ["Repository:1", "static:2"]
    await Repository.by_class.invalidate(tweet_id="1")
    assert await Repository.by_class("1") == "c1"
    assert loads == ["Repository:1", "static:2", "Repository:1"]
    await cache.aclose()


async def test_an_async_loader_that_fails_is_not_cached(clock: FakeClock) -> None:
    cache = memory_chain(clock)
    attempts = 0

    @cache.cached(key="k:{x}")
    async def flaky(x: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("source down")
        return x * 2

    with pytest.raises(RuntimeError, match="source down"):
        await flaky(3)
    assert await flaky(3) == 6
    assert await flaky(3) == 6
    assert attempts == 2
    await cache.aclose()


def test_a_sync_chain_refuses_an_async_def_at_decoration_time(clock: FakeClock) -> None:
    # Before: nothing was raised, and the coroutine object itself was cached, so the second
    # call failed with "cannot reuse already awaited coroutine".
    cache = TieredCache([MemoryTier(max_entries=10, clock=clock)], clock=clock)

    async def get_tweet(tweet_id: str) -> str:
        return tweet_id

    with pytest.raises(TypeError, match="AsyncTieredCache"):
        cache.cached(key="tweet:{tweet_id}")(get_tweet)


def test_an_async_chain_refuses_a_plain_function(clock: FakeClock) -> None:
    cache = memory_chain(clock)

    def get_tweet(tweet_id: str) -> str:
        return tweet_id

    with pytest.raises(TypeError, match="not an async def"):
        cache.cached(key="tweet:{tweet_id}")(get_tweet)  # type: ignore[arg-type]


@pytest.mark.parametrize("chain", ["sync", "async"])
def test_generator_functions_are_refused_with_a_clear_message(clock: FakeClock, chain: str) -> None:
    memory = MemoryTier(max_entries=10, clock=clock)
    cache: Any = (
        TieredCache([memory], clock=clock)
        if chain == "sync"
        else AsyncTieredCache([memory], clock=clock)
    )

    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    async def stream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    with pytest.raises(TypeError, match=r"it is a generator function.*return a list"):
        cache.cached(key="n:{n}")(numbers)
    with pytest.raises(TypeError, match=r"it is an async generator function.*return a list"):
        cache.cached(key="n:{n}")(stream)


async def test_an_argument_whose_text_is_its_memory_address_is_refused(clock: FakeClock) -> None:
    cache = memory_chain(clock)
    loads: list[object] = []

    class Request:  # the default repr: <...Request object at 0x7f...>
        pass

    @cache.cached(key="profile:{req}")
    async def profile(req: Request) -> str:
        loads.append(req)
        return "value"

    for _ in range(20):
        with pytest.raises(TypeError, match=r"req.*memory address"):
            await profile(Request())
    assert loads == []
    assert cache.stats()["tiers"][0]["misses"] == 0  # no tier was asked
    await cache.aclose()


async def test_an_async_function_that_awaits_its_own_key_while_loading_it_raises(
    clock: FakeClock,
) -> None:
    """The coroutine joined its own flight and awaited its own future: the task never ended."""
    cache = memory_chain(clock)
    calls: list[int] = []

    @cache.cached(key="rec:{x}")
    async def rec(x: int) -> str:
        calls.append(x)
        return await rec(x)

    with pytest.raises(RecursiveLoad, match="rec:1"):
        await rec(1)
    assert calls == [1]

    async def load() -> str:
        return "loaded"

    assert await cache.get("rec:1", load) == "loaded"  # nothing was left in flight
    await cache.aclose()


@pytest.mark.parametrize("made", ["generator", "iterator", "coroutine"])
async def test_an_awaited_result_that_can_be_used_only_once_is_refused_not_cached(
    clock: FakeClock, made: str
) -> None:
    """An async def returning a generator or an iterator (or a coroutine it forgot to await):
    its awaited result was cached, and the next call got it used up (an empty list)."""
    cache = memory_chain(clock)

    async def inner(x: int) -> int:
        return x

    calls: list[int] = []

    @cache.cached(key="once:{x}")
    async def one_use(x: int) -> Any:
        calls.append(x)
        if made == "generator":
            return (i for i in range(x))
        if made == "iterator":
            return iter([x])
        return inner(x)

    for _ in range(2):
        with pytest.raises(TypeError, match="can be used only once"):
            await one_use(1)
    assert calls == [1, 1]  # nothing was cached
    await cache.aclose()
