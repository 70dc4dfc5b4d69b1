"""A read-through chain and the decorator, showing which tier served each read.

Run with ``make demo``.
"""

from __future__ import annotations

import time

from tiered_cache import TieredCache
from tiered_cache.memory import MemoryTier

SOURCE_READS: list[str] = []


def slow_source(tweet_id: str) -> dict[str, str]:
    """Stands in for a DynamoDB GetItem: slow, and counted."""
    SOURCE_READS.append(tweet_id)
    time.sleep(0.02)
    return {"tweet_id": tweet_id, "text": f"tweet number {tweet_id}"}


def served_by(cache: TieredCache, before: dict[str, object]) -> str:
    """Which tier answered the last read, from the change in the cache's counters."""
    after = cache.stats()
    for old, new in zip(before["tiers"], after["tiers"], strict=True):  # type: ignore[call-overload]
        if new["hits"] > old["hits"]:
            return f"tier {new['name']!r}"
    return "the source"


def main() -> None:
    cache = TieredCache(
        [MemoryTier(name="L1 memory", max_entries=100, ttl=60)], namespace="quickstart", ttl=300
    )

    class TweetRepository:
        @cache.cached(key="tweet:{tweet_id}", ttl="1h")
        def get(self, tweet_id: str) -> dict[str, str]:
            return slow_source(tweet_id)

    repo = TweetRepository()
    for tweet_id in ["1", "1", "2", "1"]:
        before = cache.stats()
        item = repo.get(tweet_id)
        print(f"get({tweet_id!r}) -> {item}  served by {served_by(cache, before)}")
    TweetRepository.get.invalidate(tweet_id="1")  # type: ignore[attr-defined]
    before = cache.stats()
    repo.get("1")
    print(f"after invalidate, get('1') served by {served_by(cache, before)}")
    print(f"source reads: {len(SOURCE_READS)} for 5 gets")
    cache.close()


if __name__ == "__main__":
    main()
