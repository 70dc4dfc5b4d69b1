"""Throttling injected with ThrottleInjector: botocore's real retries run, then SourceThrottled."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from tiered_cache_dynamodb import DynamoDBSource
from tiered_cache_dynamodb.testing import ThrottleInjector

from tiered_cache.errors import SourceThrottled
from tiered_cache.testing.clock import FakeClock
from tiered_cache.tier import MISSING


@pytest.fixture
def source_for(
    make_table: Callable[..., str], make_source: Callable[..., DynamoDBSource]
) -> Callable[..., DynamoDBSource]:
    table = make_table(key="id")

    def make(**fields: Any) -> DynamoDBSource:
        source = make_source(table=table, key="id", **fields)
        source.store("hot", {"id": "hot", "text": "viral"})
        source.store("cold", {"id": "cold"})
        return source

    return make


@pytest.mark.parametrize("retry_mode", ["standard", "legacy"])
@pytest.mark.parametrize("max_attempts", [1, 3, 5])
def test_throttling_surfaces_after_exactly_max_attempts(
    source_for: Callable[..., DynamoDBSource],
    botocore_delays: list[float],
    retry_mode: str,
    max_attempts: int,
) -> None:
    source = source_for(max_attempts=max_attempts, retry_mode=retry_mode)
    injector = ThrottleInjector().register(source.client)

    with pytest.raises(SourceThrottled) as caught:
        source.load("hot")

    assert injector.attempts == max_attempts
    assert injector.throttled == max_attempts
    assert len(botocore_delays) == max_attempts - 1
    message = str(caught.value)
    assert "ProvisionedThroughputExceededException" in message
    assert f"after {max_attempts} attempt" in message
    # The synthetic response went through botocore's parser like a real one.
    cause = caught.value.__cause__
    assert isinstance(cause, ClientError)
    assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert cause.response["ResponseMetadata"]["RetryAttempts"] == max_attempts - 1


@pytest.mark.parametrize(
    "code",
    ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"],
)
def test_every_throttling_code_is_source_throttled(
    source_for: Callable[..., DynamoDBSource], botocore_delays: list[float], code: str
) -> None:
    source = source_for(max_attempts=2)
    ThrottleInjector(code=code).register(source.client)
    with pytest.raises(SourceThrottled, match=code):
        source.load("hot")


def test_a_throttle_followed_by_success_is_retried_by_botocore(
    source_for: Callable[..., DynamoDBSource], botocore_delays: list[float]
) -> None:
    source = source_for(max_attempts=3)
    clock = FakeClock()
    # One read per key per second, no burst beyond it: the second read within the second is
    # throttled; botocore's retry comes after the clock moved on.
    injector = ThrottleInjector(per_key_rate=1.0, clock=clock).register(source.client)
    assert source.load("hot") == {"id": "hot", "text": "viral"}

    def tick(**kwargs: Any) -> None:
        clock.advance(1.0)

    source.client.meta.events.register("needs-retry.dynamodb", tick)
    assert source.load("hot") == {"id": "hot", "text": "viral"}
    assert injector.attempts == 3
    assert injector.throttled == 1
    assert len(botocore_delays) == 1


def test_token_bucket_per_key_models_a_hot_partition(
    source_for: Callable[..., DynamoDBSource], botocore_delays: list[float]
) -> None:
    source = source_for(max_attempts=1)
    clock = FakeClock()
    injector = ThrottleInjector(per_key_rate=2.0, clock=clock).register(source.client)

    assert source.load("hot")
    assert source.load("hot")
    with pytest.raises(SourceThrottled):
        source.load("hot")
    # Another key has its own bucket.
    assert source.load("cold")
    assert source.load("absent") is MISSING
    # Half a second refills one read of the hot key.
    clock.advance(0.5)
    assert source.load("hot")
    with pytest.raises(SourceThrottled):
        source.load("hot")
    assert (injector.attempts, injector.throttled, injector.passed) == (7, 2, 5)
    assert [throttled for _, throttled in injector.log] == [
        False,
        False,
        True,
        False,
        False,
        False,
        True,
    ]


def test_batch_reads_take_a_token_from_every_key(
    source_for: Callable[..., DynamoDBSource], botocore_delays: list[float]
) -> None:
    source = source_for(max_attempts=1)
    clock = FakeClock()
    injector = ThrottleInjector(per_key_rate=1.0, clock=clock).register(source.client)
    assert source.load("hot")
    with pytest.raises(SourceThrottled):
        source.load_many(["cold", "hot"])
    # The throttled batch took no token: "cold" still has its read.
    assert source.load("cold")
    assert injector.throttled == 1


def test_a_fraction_is_throttled_with_the_injected_rng(
    source_for: Callable[..., DynamoDBSource], botocore_delays: list[float]
) -> None:
    source = source_for(max_attempts=1)
    injector = ThrottleInjector(rate=0.5, rng=random.Random(3)).register(source.client)
    expected = random.Random(3)
    outcomes = []
    for _ in range(20):
        try:
            source.load("hot")
            outcomes.append(False)
        except SourceThrottled:
            outcomes.append(True)
    assert outcomes == [expected.random() < 0.5 for _ in range(20)]
    assert injector.attempts == 20
    assert 0 < injector.throttled < 20


def test_unregister_stops_throttling_and_writes_are_not_throttled_by_default(
    source_for: Callable[..., DynamoDBSource], botocore_delays: list[float]
) -> None:
    source = source_for(max_attempts=1)
    injector = ThrottleInjector().register(source.client)
    source.store("new", {"id": "new"})  # PutItem is not a read operation
    with pytest.raises(SourceThrottled):
        source.load("new")
    injector.unregister()
    assert source.load("new") == {"id": "new"}
    assert injector.attempts == 1


def test_injector_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rate"):
        ThrottleInjector(rate=1.5)
    with pytest.raises(ValueError, match="per_key_rate"):
        ThrottleInjector(per_key_rate=0)
    with pytest.raises(ValueError, match="code"):
        ThrottleInjector(code="Nope")
