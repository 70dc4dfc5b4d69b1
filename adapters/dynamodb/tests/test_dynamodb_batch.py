"""BatchGetItem: chunks of 100 keys, UnprocessedKeys retried with bounded jittered backoff."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError
from tiered_cache_dynamodb import BatchLoadError, BatchThrottledError, DynamoDBSource
from tiered_cache_dynamodb.testing import ThrottleInjector, UnprocessedInjector, seed_items

from tiered_cache.errors import SourceError, SourceThrottled


@pytest.fixture
def table(make_table: Callable[..., str], admin_client: Any) -> str:
    name = make_table(key="id")
    seed_items(admin_client, name, [f"k{i}" for i in range(250)])
    return name


def test_250_keys_take_exactly_3_batch_get_item_calls(
    table: str, make_source: Callable[..., DynamoDBSource], count_requests: Callable[..., Any]
) -> None:
    source = make_source(table=table, key="id")
    requests = count_requests(source.client)
    keys = [f"k{i}" for i in range(250)]

    found = source.load_many(keys)

    assert requests.count("BatchGetItem") == 3
    sizes = [
        len(params["RequestItems"][table]["Keys"])
        for operation, params in requests.params
        if operation == "BatchGetItem"
    ]
    assert sizes == [100, 100, 50]
    assert set(found) == set(keys)
    assert found["k249"] == {"id": "k249", "n": 249}


def test_250_missing_keys_also_take_3_calls_and_return_nothing(
    make_table: Callable[..., str],
    make_source: Callable[..., DynamoDBSource],
    count_requests: Callable[..., Any],
) -> None:
    source = make_source(table=make_table(key="id"), key="id")
    requests = count_requests(source.client)
    assert source.load_many([f"absent-{i}" for i in range(250)]) == {}
    assert requests.count("BatchGetItem") == 3


def test_duplicates_are_requested_once(
    table: str, make_source: Callable[..., DynamoDBSource], count_requests: Callable[..., Any]
) -> None:
    source = make_source(table=table, key="id")
    requests = count_requests(source.client)
    keys = [f"k{i}" for i in range(100)] * 3  # 300 keys, 100 distinct: one request
    found = source.load_many(keys)
    assert requests.count("BatchGetItem") == 1
    assert len(found) == 100


def test_unprocessed_keys_are_retried_until_all_are_read(
    table: str,
    make_source: Callable[..., DynamoDBSource],
    count_requests: Callable[..., Any],
    sleeps: Any,
) -> None:
    source = make_source(
        table=table, key="id", batch_retry_limit=5, batch_backoff_base=0.1, batch_backoff_max=0.3
    )
    requests = count_requests(source.client)
    # First chunk: 60 pushed back, then 20 of those; then the second chunk: 10.
    unprocessed = UnprocessedInjector(source.client, table, [60, 20, 0, 10])
    keys = [f"k{i}" for i in range(150)]

    found = source.load_many(keys)

    assert set(found) == set(keys)
    # chunk 1 (100 keys), its retry (60), its retry (20); chunk 2 (50), its retry (10).
    sizes = [
        len(p["RequestItems"][table]["Keys"]) for op, p in requests.params if op == "BatchGetItem"
    ]
    assert sizes == [100, 60, 20, 50, 10]
    assert requests.count("BatchGetItem") == 5
    assert unprocessed.pushed_back == 90
    # Full jitter: each wait in [0, min(max, base * 2**retry)], the retry count restarting
    # with each chunk.
    assert len(sleeps.delays) == 3
    bounds = [0.1, 0.2, 0.1]
    assert all(0.0 <= d <= b for d, b in zip(sleeps.delays, bounds, strict=True))


def test_backoff_is_capped_and_jittered_with_the_injected_rng(
    table: str, settings_for: Callable[..., Any], sleeps: Any
) -> None:
    settings = settings_for(
        table=table, key="id", batch_retry_limit=6, batch_backoff_base=0.1, batch_backoff_max=0.5
    )
    rng = random.Random(7)
    expected_rng = random.Random(7)
    with DynamoDBSource.from_settings(settings, sleep=sleeps, rng=rng) as source:
        UnprocessedInjector(source.client, table, [1, 1, 1, 1, 1, 1])
        assert len(source.load_many(["k1", "k2"])) == 2
    caps = [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert sleeps.delays == [expected_rng.uniform(0.0, cap) for cap in caps]


def test_keys_still_unprocessed_after_the_retry_limit_raise_a_bounded_error(
    table: str,
    make_source: Callable[..., DynamoDBSource],
    count_requests: Callable[..., Any],
    sleeps: Any,
) -> None:
    source = make_source(table=table, key="id", batch_retry_limit=3)
    requests = count_requests(source.client)
    # The first chunk reads fine; the second never gets past 30 of its 100 keys; a third
    # chunk is never requested.
    UnprocessedInjector(source.client, table, [0, 70, "all", "all", "all"])
    keys = [f"k{i}" for i in range(250)]

    with pytest.raises(BatchThrottledError) as caught:
        source.load_many(keys)

    error = caught.value
    assert isinstance(error, SourceThrottled)
    assert isinstance(error, SourceError)
    assert error.unprocessed == 70 + 50
    assert "120 of 250 keys unprocessed after 3 retries" in str(error)
    assert table in str(error)
    assert len(error.found) == 130
    assert requests.count("BatchGetItem") == 1 + 1 + 3
    assert len(sleeps.delays) == 3


def test_with_no_retries_allowed_the_first_unprocessed_key_fails(
    table: str, make_source: Callable[..., DynamoDBSource], sleeps: Any
) -> None:
    source = make_source(table=table, key="id", batch_retry_limit=0)
    UnprocessedInjector(source.client, table, [1])
    with pytest.raises(BatchThrottledError) as caught:
        source.load_many(["k1", "k2", "k3"])
    assert caught.value.unprocessed == 1
    assert sleeps.delays == []


def test_a_throttled_batch_get_item_raises_source_throttled_with_counts(
    table: str,
    make_source: Callable[..., DynamoDBSource],
    botocore_delays: list[float],
) -> None:
    source = make_source(table=table, key="id", max_attempts=2)
    injector = ThrottleInjector(operations={"BatchGetItem"}).register(source.client)
    with pytest.raises(BatchThrottledError) as caught:
        source.load_many([f"k{i}" for i in range(150)])
    assert caught.value.unprocessed == 150
    assert caught.value.found == {}
    assert "ProvisionedThroughputExceededException" in str(caught.value)
    assert injector.attempts == 2
    assert len(botocore_delays) == 1


def test_other_batch_failures_are_a_source_error_naming_the_count(
    table: str, make_source: Callable[..., DynamoDBSource], botocore_delays: list[float]
) -> None:
    source = make_source(table=table, key="id", max_attempts=1)
    keys = [f"k{i}" for i in range(120)]

    def refuse_second_call(**kwargs: Any) -> None:
        if "k100" in str(kwargs["request"].body):
            # What botocore's HTTP layer raises when the server drops the connection.
            raise ConnectionClosedError(endpoint_url=kwargs["request"].url)

    source.client.meta.events.register("before-send.dynamodb.BatchGetItem", refuse_second_call)
    with pytest.raises(BatchLoadError) as caught:
        source.load_many(keys)
    error = caught.value
    assert not isinstance(error, SourceThrottled)
    assert error.unprocessed == 20
    assert len(error.found) == 100
    assert "20 of 120 keys left unprocessed" in str(error)
