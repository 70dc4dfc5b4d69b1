"""``AsyncTweetRepository``: the tweet repository for asyncio code, on an ``AsyncTieredCache``.

The same table, keys, items and write rules as :class:`~examples.tweets.repository.TweetRepository`
(the classic, sync example; see its docstring), with coroutines: reads go through the async
chain (memory, then Redis on ``redis.asyncio``, then the DynamoDB source on aiobotocore), and
nothing blocks the event loop: the read's loader is the chain's own
:class:`~tiered_cache_dynamodb.AsyncDynamoDBSource`, and the writes that need more than the
source offers (a conditional ``PutItem``, a ``DeleteItem`` that returns the old item) are sent
on that source's aiobotocore client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from tiered_cache_dynamodb import AsyncDynamoDBSource

from tiered_cache import MISSING, AsyncTieredCache

from .embedded import KEY_TEMPLATE, TABLE
from .repository import (
    TTL,
    Item,
    TweetNotFound,
    cache_key,
    check_text,
    checked_ids,
    key_of,
    new_item,
    put_new,
)


class AsyncTweetRepository:
    """Create, read (through ``cache``), update and delete tweets in ``table``; arguments as
    :class:`~examples.tweets.repository.TweetRepository`'s, with an async chain whose source
    is the tweet table's :class:`~tiered_cache_dynamodb.AsyncDynamoDBSource` (typed items
    under ``tweet:{tweet_id}``, as :func:`~examples.tweets.embedded.environment` sets it up)
    and ``client`` that source's aiobotocore client."""

    def __init__(
        self,
        cache: AsyncTieredCache,
        client: Any,
        *,
        table: str = TABLE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        source = cache.source
        if not isinstance(source, AsyncDynamoDBSource):
            raise TypeError(
                "the async tweet repository reads through an AsyncDynamoDBSource "
                "(pip install 'tiered-cache-dynamodb[async]')"
            )
        self.cache = cache
        self.table = table
        self._client = client
        self._clock = clock

        @cache.cached(key=KEY_TEMPLATE, ttl=TTL)
        async def read(tweet_id: str) -> Item | None:
            # The loader: runs only when no tier holds the tweet (once per key at a time,
            # however many requests miss it together), on the event loop.
            item = await source.load(cache_key(tweet_id))
            return None if item is MISSING else dict(item)

        self._read = read

    async def create(self, text: str) -> Item:
        """Store a new tweet; return its item (nothing is cached: see the classic one)."""
        item = new_item(text, self._clock())
        await self._client.put_item(**put_new(self.table, item))
        return item

    async def get(self, tweet_id: str) -> Item | None:
        """The tweet's item, or ``None``; from the fastest tier that has it."""
        result: Item | None = await self._read(tweet_id)
        return result

    async def get_many(self, tweet_ids: Iterable[str]) -> dict[str, Item | None]:
        """Items by id (``None`` for unknown ids): each tier asked once, then one BatchGetItem."""
        ids = checked_ids(tweet_ids)
        found = await self.cache.get_many([cache_key(tweet_id) for tweet_id in ids], ttl=TTL)
        return {tweet_id: found[cache_key(tweet_id)] for tweet_id in ids}

    async def update(self, tweet_id: str, text: str) -> Item:
        """Replace the text through the write path; ``TweetNotFound`` for an unknown id."""
        text = check_text(text)
        current = await self.get(tweet_id)
        if current is None:
            raise TweetNotFound(tweet_id)
        item = {**current, "text": {"S": text}}
        await self.cache.set(cache_key(tweet_id), item, ttl=TTL)
        return item

    async def delete(self, tweet_id: str) -> None:
        """Delete the tweet from the table and every tier; ``TweetNotFound`` if there is none."""
        response = await self._client.delete_item(
            TableName=self.table, Key=key_of(tweet_id), ReturnValues="ALL_OLD"
        )
        # Invalidate even when nothing was deleted: a tier may hold a copy the table lost.
        await self.cache.invalidate(cache_key(tweet_id))
        if "Attributes" not in response:
            raise TweetNotFound(tweet_id)
