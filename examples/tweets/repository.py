"""``TweetRepository``: tweets in a DynamoDB table, read through a tiered cache.

Items are kept in DynamoDB's typed form (``{'tweet_id': {'S': '...'}, 'text': {'S': '...'},
'created': {'S': '...'}}``), the same form the chain's DynamoDB source exchanges with
``typed_items = true``, so a tweet looks the same whichever tier or call returned it.

**The decorator, per instance.** ``@cache.cached(...)`` needs the cache when the function is
decorated, and here the cache is created per repository (each test, the demo and the HTTP app
build their own chain). So the repository decorates a closure in ``__init__``: ``self._read`` is
the cached function, its body (the loader, run only when no tier has the tweet) is a plain
``GetItem``. Decorating a method at class level would instead tie the class to one module-level
cache. The cache key ``tweet:{tweet_id}`` is also the source's ``key_template``, so
:meth:`get_many` (the chain's ``BatchGetItem``) and the write path use the very same keys.

**Writes.**

- :meth:`create` writes with a direct ``PutItem`` and caches nothing: a new uuid4 id cannot be in
  any tier (nobody could have read it, so not even a cached "not found"), and writing it through
  would spend a Redis write and a memory slot on a tweet that may never be read. Its first read
  fills the tiers.
- :meth:`update` goes through the write path, ``cache.set``: ``PutItem`` first, then every tier,
  so the next read anywhere in this process sees the new text without a ``GetItem`` (an
  eventually consistent read right after the write could still return the old item). If the
  ``PutItem`` fails, no tier changes.
- :meth:`delete` removes the item (``DeleteItem``), then invalidates the key in every tier.

Last writer wins: an update racing a delete can put the tweet back, as it would without a cache.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tiered_cache import TieredCache

from .embedded import HASH_KEY, KEY_TEMPLATE, TABLE

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: A tweet in DynamoDB's typed form: attribute name -> ``{"S": "..."}``.
Item = dict[str, Any]

MAX_LENGTH = 280
#: Most ids :meth:`TweetRepository.get_many` takes (one ``BatchGetItem`` reads 100 keys).
MAX_BATCH = 100
TTL = "1h"


class TweetNotFound(LookupError):
    """No tweet has this id."""

    def __init__(self, tweet_id: str) -> None:
        super().__init__(f"no tweet with id {tweet_id!r}")
        self.tweet_id = tweet_id


def check_text(text: str) -> str:
    """``text`` if it is a valid tweet, else ``ValueError`` saying what is wrong."""
    if not text.strip():
        raise ValueError("the text of a tweet must not be empty")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"a tweet has at most {MAX_LENGTH} characters, this one has {len(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON can carry half of a UTF-16 pair ("\\ud83d"); DynamoDB and the cache's codec
        # cannot store it, so it is the client's error (422), not a failure of ours (502).
        raise ValueError(
            f"the text holds a lone surrogate at position {exc.start} (half of a UTF-16 "
            "pair), which is not valid Unicode text"
        ) from None
    return text


def cache_key(tweet_id: str) -> str:
    """The cache key of a tweet: ``tweet:<id>``."""
    return KEY_TEMPLATE.format(tweet_id=tweet_id)


def plain(item: Mapping[str, Any]) -> dict[str, str]:
    """A typed item as plain strings: ``{'text': {'S': 'hi'}}`` -> ``{'text': 'hi'}``."""
    return {name: str(next(iter(value.values()))) for name, value in item.items()}


class TweetRepository:
    """Create, read (through ``cache``), update and delete tweets in ``table``.

    Args:
        cache: a chain whose source is this table (kind ``dynamodb``, ``typed_items = true``,
            ``key_template = "tweet:{tweet_id}"``); see :mod:`examples.tweets.embedded`.
        client: the DynamoDB client for direct requests; by default the source's own, so that
            one client (and one throttling hook in the demo) sees every request.
        clock: the time stamped into ``created`` (tests pin it).
    """

    def __init__(
        self,
        cache: TieredCache,
        client: DynamoDBClient | None = None,
        *,
        table: str = TABLE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cache = cache
        self.table = table
        self._client: DynamoDBClient = client or cache.source.client  # type: ignore[union-attr]
        self._clock = clock

        @cache.cached(key=KEY_TEMPLATE, ttl=TTL)
        def read(tweet_id: str) -> Item | None:
            # The loader: runs only when no tier holds the tweet. None is cached briefly too.
            response = self._client.get_item(TableName=self.table, Key=_key(tweet_id))
            item = response.get("Item")
            return dict(item) if item is not None else None

        self._read = read

    def create(self, text: str) -> Item:
        """Store a new tweet with a uuid4 id and the current UTC time; return its item."""
        item = new_item(text, self._clock())
        self._client.put_item(**put_new(self.table, item))
        return item

    def get(self, tweet_id: str) -> Item | None:
        """The tweet's item, or ``None``; from the fastest tier that has it."""
        result: Item | None = self._read(tweet_id)
        return result

    def get_many(self, tweet_ids: Iterable[str]) -> dict[str, Item | None]:
        """Items by id (``None`` for unknown ids): each tier asked once, then one BatchGetItem."""
        ids = checked_ids(tweet_ids)
        found = self.cache.get_many([cache_key(tweet_id) for tweet_id in ids], ttl=TTL)
        return {tweet_id: found[cache_key(tweet_id)] for tweet_id in ids}

    def update(self, tweet_id: str, text: str) -> Item:
        """Replace the text (``created`` is kept); ``TweetNotFound`` for an unknown id."""
        text = check_text(text)
        current = self.get(tweet_id)
        if current is None:
            raise TweetNotFound(tweet_id)
        item = {**current, "text": {"S": text}}
        self.cache.set(cache_key(tweet_id), item, ttl=TTL)
        return item

    def delete(self, tweet_id: str) -> None:
        """Delete the tweet from the table and every tier; ``TweetNotFound`` if there is none."""
        response = self._client.delete_item(
            TableName=self.table, Key=_key(tweet_id), ReturnValues="ALL_OLD"
        )
        # Invalidate even when nothing was deleted: a tier may hold a copy the table lost.
        self.cache.invalidate(cache_key(tweet_id))
        if "Attributes" not in response:
            raise TweetNotFound(tweet_id)


def _key(tweet_id: str) -> dict[str, Any]:
    return {HASH_KEY: {"S": tweet_id}}


def key_of(tweet_id: str) -> dict[str, Any]:
    """The DynamoDB key of a tweet."""
    return _key(tweet_id)


def new_item(text: str, now: datetime) -> Item:
    """A new tweet's item: a uuid4 id, the checked text, ``created`` at ``now``."""
    return {
        HASH_KEY: {"S": str(uuid.uuid4())},
        "text": {"S": check_text(text)},
        "created": {"S": now.isoformat(timespec="milliseconds")},
    }


def put_new(table: str, item: Item) -> dict[str, Any]:
    """The ``PutItem`` arguments that store a new tweet. ``attribute_not_exists``: a uuid4
    collision would otherwise overwrite another tweet."""
    return {
        "TableName": table,
        "Item": item,
        "ConditionExpression": "attribute_not_exists(#id)",
        "ExpressionAttributeNames": {"#id": HASH_KEY},
    }


def checked_ids(tweet_ids: Iterable[str]) -> list[str]:
    """The distinct ids of a batch; ``ValueError`` past :data:`MAX_BATCH`."""
    ids = list(dict.fromkeys(tweet_ids))
    if len(ids) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} ids at a time, got {len(ids)}")
    return ids
