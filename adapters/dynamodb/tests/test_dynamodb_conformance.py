"""The shared source conformance suite, against moto's server over real HTTP, for the sync
source and, in async form, for the aiobotocore one.

Three configurations: plain items keyed by the cache key itself; a hash+range table behind
the template ``{user_id}#{tweet_id}``; and items in DynamoDB's typed form. Each async class
takes its configuration (table, keys, values) from the sync class it names, and its cases
from :class:`AsyncSourceConformance` (the same cases, run through the async source).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from tiered_cache_dynamodb import AsyncDynamoDBSource, DynamoDBSource, DynamoDBSourceSettings

from tiered_cache.testing.async_conformance import AsyncSourceConformance
from tiered_cache.testing.source_suite import SourceConformance


class DynamoDBConformance(SourceConformance):
    """A configuration: :meth:`source_fields` says its table and settings."""

    def source_fields(self, make_table: Callable[..., str]) -> dict[str, Any]:
        raise NotImplementedError

    @pytest.fixture
    def source(
        self, make_table: Callable[..., str], make_source: Callable[..., DynamoDBSource]
    ) -> Iterator[DynamoDBSource]:
        yield make_source(**self.source_fields(make_table))


class TestPlainItems(DynamoDBConformance):
    def source_fields(self, make_table: Callable[..., str]) -> dict[str, Any]:
        return {"table": make_table(key="id"), "key": "id"}

    def make_value(self, key: str) -> Any:
        return {"id": key, "text": f"tweet {key}", "likes": Decimal(7), "tags": ["a", "b"]}


class TestHashAndRangeKey(DynamoDBConformance):
    def source_fields(self, make_table: Callable[..., str]) -> dict[str, Any]:
        table = make_table(key="user_id", range_key="tweet_id")
        return {
            "table": table,
            "key": "user_id",
            "range_key": "tweet_id",
            "key_template": "{user_id}#{tweet_id}",
        }

    def make_key(self, name: str) -> str:
        # Two users, so batches mix partitions.
        return f"user-{len(name) % 2}#{name}"

    def make_value(self, key: str) -> Any:
        user_id, tweet_id = key.split("#", 1)
        return {"user_id": user_id, "tweet_id": tweet_id, "body": "hello"}


class TestTypedItems(DynamoDBConformance):
    def source_fields(self, make_table: Callable[..., str]) -> dict[str, Any]:
        table = make_table(key="tweet_id")
        return {
            "table": table,
            "key": "tweet_id",
            "key_template": "tweet:{tweet_id}",
            "typed_items": True,
        }

    def make_key(self, name: str) -> str:
        return f"tweet:{name}"

    def make_value(self, key: str) -> Any:
        return {"tweet_id": {"S": key.removeprefix("tweet:")}, "likes": {"N": "3"}}

    def other_value(self, key: str) -> Any:
        return {**self.make_value(key), "likes": {"N": "4"}, "text": {"S": "edited"}}


class AsyncDynamoDB:
    """The async source of a configuration; its client is made on the suite's loop, at the
    first call, and closed by the suite."""

    source_fields: Callable[..., dict[str, Any]]

    @pytest.fixture
    def async_source(
        self,
        make_table: Callable[..., str],
        settings_for: Callable[..., DynamoDBSourceSettings],
    ) -> AsyncDynamoDBSource:
        return AsyncDynamoDBSource.from_settings(settings_for(**self.source_fields(make_table)))


# AsyncSourceConformance comes first: its ``source`` (the async source behind a sync face)
# replaces the configuration's.
class TestAsyncPlainItems(AsyncDynamoDB, AsyncSourceConformance, TestPlainItems):
    pass


class TestAsyncHashAndRangeKey(AsyncDynamoDB, AsyncSourceConformance, TestHashAndRangeKey):
    pass


class TestAsyncTypedItems(AsyncDynamoDB, AsyncSourceConformance, TestTypedItems):
    pass
