"""Type-checked by ``make check`` (``mypy tests/typing``), never imported by pytest.

Each ``assert_type`` fails the check if the decorator's types drift; each ``type: ignore[...]``
marks a call mypy must refuse (strict mode reports an ignore that is no longer needed).
"""

from __future__ import annotations

from typing import assert_type

from tiered_cache import CachedFunction, MemoryTier, TieredCache

cache = TieredCache([MemoryTier(max_entries=10)])


@cache.cached(key="tweet:{tweet_id}", ttl="1h")
def get_tweet(tweet_id: str) -> dict[str, str] | None:
    return {"tweet_id": tweet_id}


assert_type(get_tweet("42"), dict[str, str] | None)
assert_type(get_tweet.key_for(tweet_id="42"), str)
assert_type(get_tweet.invalidate(tweet_id="42"), None)
assert_type(get_tweet.__wrapped__("42"), dict[str, str] | None)
get_tweet(42)  # type: ignore[arg-type]
get_tweet("42", "43")  # type: ignore[call-arg]
get_tweet.forget(tweet_id="42")  # type: ignore[attr-defined]
annotated: CachedFunction[[str], dict[str, str] | None] = get_tweet


class TweetRepository:
    @cache.cached(key="tweet:{tweet_id}")
    def get(self, tweet_id: str) -> dict[str, str] | None:
        return {"tweet_id": tweet_id}


repo = TweetRepository()
assert_type(repo.get("42"), dict[str, str] | None)
assert_type(repo.get.key_for(tweet_id="42"), str)
assert_type(repo.get.invalidate(tweet_id="42"), None)
assert_type(TweetRepository.get.key_for(tweet_id="42"), str)
assert_type(TweetRepository.get(repo, "42"), dict[str, str] | None)
TweetRepository.get.invalidate(tweet_id="42")
