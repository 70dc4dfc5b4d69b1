"""The shared source conformance suite, against moto's server over real HTTP.

Three configurations: plain items keyed by the cache key itself; a hash+range table behind
the template ``{user_id}#{tweet_id}``; and items in DynamoDB's typed form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from tiered_cache_dynamodb import DynamoDBSource

from tiered_cache.testing.source_suite import SourceConformance


class TestPlainItems(SourceConformance):
    @pytest.fixture
    def source(
        self, make_table: Callable[..., str], make_source: Callable[..., DynamoDBSource]
    ) -> Iterator[DynamoDBSource]:
        yield make_source(table=make_table(key="id"), key="id")

    def make_value(self, key: str) -> Any:
        return {"id": key, "text": f"tweet {key}", "likes": Decimal(7), "tags": ["a", "b"]}


class TestHashAndRangeKey(SourceConformance):
    @pytest.fixture
    def source(
        self, make_table: Callable[..., str], make_source: Callable[..., DynamoDBSource]
    ) -> Iterator[DynamoDBSource]:
        table = make_table(key="user_id", range_key="tweet_id")
        yield make_source(
            table=table, key="user_id", range_key="tweet_id", key_template="{user_id}#{tweet_id}"
        )

    def make_key(self, name: str) -> str:
        # Two users, so batches mix partitions.
        return f"user-{len(name) % 2}#{name}"

    def make_value(self, key: str) -> Any:
        user_id, tweet_id = key.split("#", 1)
        return {"user_id": user_id, "tweet_id": tweet_id, "body": "hello"}


class TestTypedItems(SourceConformance):
    @pytest.fixture
    def source(
        self, make_table: Callable[..., str], make_source: Callable[..., DynamoDBSource]
    ) -> Iterator[DynamoDBSource]:
        table = make_table(key="tweet_id")
        yield make_source(
            table=table, key="tweet_id", key_template="tweet:{tweet_id}", typed_items=True
        )

    def make_key(self, name: str) -> str:
        return f"tweet:{name}"

    def make_value(self, key: str) -> Any:
        return {"tweet_id": {"S": key.removeprefix("tweet:")}, "likes": {"N": "3"}}

    def other_value(self, key: str) -> Any:
        return {**self.make_value(key), "likes": {"N": "4"}, "text": {"S": "edited"}}
