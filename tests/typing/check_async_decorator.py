"""Type-checked by ``make check`` (``mypy tests/typing``): the decorator on an async chain."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import assert_type

from tiered_cache import AsyncCachedFunction, AsyncTieredCache, MemoryTier

cache = AsyncTieredCache([MemoryTier(max_entries=10)])


@cache.cached(key="tweet:{tweet_id}", ttl="1h")
async def get_tweet(tweet_id: str) -> dict[str, str] | None:
    return {"tweet_id": tweet_id}


async def use() -> None:
    assert_type(await get_tweet("42"), dict[str, str] | None)
    assert_type(get_tweet.key_for(tweet_id="42"), str)
    assert_type(get_tweet.invalidate(tweet_id="42"), Awaitable[None])
    get_tweet(42)  # type: ignore[arg-type]
    annotated: AsyncCachedFunction[[str], dict[str, str] | None] = get_tweet
    repo = TweetRepository()
    assert_type(await repo.get("42"), int)
    await repo.get.invalidate(tweet_id="42")
    del annotated


class TweetRepository:
    @cache.cached(key="tweet:{tweet_id}")
    async def get(self, tweet_id: str) -> int:
        return len(tweet_id)
