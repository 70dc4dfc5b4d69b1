"""The DynamoDB source against moto: items, key mapping, options, errors, building."""

from __future__ import annotations

import base64
import traceback
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import Binary
from tiered_cache_dynamodb import (
    PLUGIN,
    DynamoDBSource,
    DynamoDBSourceSettings,
    TableConfigError,
    TableNotFoundError,
    create_table,
)
from tiered_cache_dynamodb.testing import MotoDynamoDB

from tiered_cache.errors import ConfigError, SourceError, SourceThrottled
from tiered_cache.registry import SOURCES_GROUP, BuildContext, find_plugin
from tiered_cache.testing.clock import FakeClock
from tiered_cache.tier import MISSING, Source

MakeSource = Callable[..., DynamoDBSource]

TWEET = {
    "tweet_id": "42",
    "text": "hello",
    "likes": Decimal(12),
    "ratio": Decimal("0.333333333333333333333333333333333333"),  # 36 digits survive
    "negative": Decimal("-1E-100"),
    "huge": Decimal("9.9999999999999999999999999999999999999E+125"),
    "tags": {"a", "b"},
    "scores": {Decimal(1), Decimal("2.5")},
    "nested": {"list": [Decimal(1), "two", None, True], "map": {"k": Decimal(3)}},
    "raw": Binary(b"\x00\x01"),
    "nothing": None,
    "flag": False,
}


@pytest.fixture
def tweets(make_table: Callable[..., str]) -> str:
    return make_table(key="tweet_id")


def test_numbers_come_back_as_decimal_and_round_trip_exactly(
    tweets: str, make_source: MakeSource
) -> None:
    source = make_source(table=tweets, key="tweet_id")
    source.store("42", TWEET)
    loaded = source.load("42")
    assert loaded == TWEET
    assert isinstance(loaded["likes"], Decimal)
    assert loaded["ratio"] == Decimal("0.333333333333333333333333333333333333")
    assert source.load_many(["42"]) == {"42": TWEET}


def test_typed_items_are_exchanged_in_dynamodb_form(
    tweets: str, make_source: MakeSource, admin_client: Any
) -> None:
    plain = make_source(table=tweets, key="tweet_id")
    typed = make_source(table=tweets, key="tweet_id", typed_items=True)
    plain.store("1", {"tweet_id": "1", "likes": Decimal(5), "tags": ["x"]})
    expected = {"tweet_id": {"S": "1"}, "likes": {"N": "5"}, "tags": {"L": [{"S": "x"}]}}
    assert typed.load("1") == expected
    assert typed.load_many(["1", "2"]) == {"1": expected}
    typed.store("2", {"tweet_id": {"S": "2"}, "likes": {"N": "7.50"}})
    assert plain.load("2") == {"tweet_id": "2", "likes": Decimal("7.5")}
    raw = admin_client.get_item(TableName=tweets, Key={"tweet_id": {"S": "2"}})["Item"]
    assert Decimal(raw["likes"]["N"]) == Decimal("7.5")


def test_a_template_maps_the_cache_key_to_the_attribute(
    tweets: str, make_source: MakeSource, admin_client: Any
) -> None:
    source = make_source(table=tweets, key="tweet_id", key_template="tweet:{tweet_id}")
    source.store("tweet:7", {"tweet_id": "7", "text": "seven"})
    raw = admin_client.get_item(TableName=tweets, Key={"tweet_id": {"S": "7"}})
    assert raw["Item"]["text"] == {"S": "seven"}
    assert source.load("tweet:7") == {"tweet_id": "7", "text": "seven"}
    assert source.load("tweet:8") is MISSING
    source.remove("tweet:7")
    assert "Item" not in admin_client.get_item(TableName=tweets, Key={"tweet_id": {"S": "7"}})


def test_hash_and_range_template_reads_and_writes_the_right_items(
    make_table: Callable[..., str], make_source: MakeSource, admin_client: Any
) -> None:
    table = make_table(key="user_id", range_key="tweet_id", range_key_type="N")
    source = make_source(
        table=table,
        key="user_id",
        range_key="tweet_id",
        range_key_type="N",
        key_template="{user_id}#{tweet_id}",
    )
    source.store("alice#1", {"user_id": "alice", "tweet_id": Decimal(1), "text": "a1"})
    source.store("alice#2", {"user_id": "alice", "tweet_id": 2, "text": "a2"})
    source.store("bob#1", {"user_id": "bob", "tweet_id": 1, "text": "b1"})
    raw = admin_client.get_item(
        TableName=table, Key={"user_id": {"S": "bob"}, "tweet_id": {"N": "1"}}
    )
    assert raw["Item"]["text"] == {"S": "b1"}
    found = source.load_many(["alice#1", "alice#2", "bob#1", "bob#2", "alice#01"])
    assert {key: item["text"] for key, item in found.items()} == {
        "alice#1": "a1",
        "alice#2": "a2",
        "bob#1": "b1",
        "alice#01": "a1",  # the same number as "1"
    }
    source.remove("alice#1")
    assert source.load("alice#1") is MISSING
    assert source.load("alice#2")["text"] == "a2"


def test_number_partition_keys(make_table: Callable[..., str], make_source: MakeSource) -> None:
    source = make_source(table=make_table(key="id", key_type="N"), key="id", key_type="N")
    source.store("7", {"id": 7, "v": "seven"})
    assert source.load("7.0") == {"id": Decimal(7), "v": "seven"}
    assert source.load_many(["7", "07", "8"]).keys() == {"7", "07"}


def test_binary_partition_keys(make_table: Callable[..., str], make_source: MakeSource) -> None:
    source = make_source(table=make_table(key="id", key_type="B"), key="id", key_type="B")
    key = base64.b64encode(b"\x00\xffkey").decode()
    source.store(key, {"id": b"\x00\xffkey", "v": 1})
    assert source.load(key) == {"id": Binary(b"\x00\xffkey"), "v": Decimal(1)}
    assert list(source.load_many([key, base64.b64encode(b"other").decode()])) == [key]


def test_projection_reads_only_the_named_attributes_and_the_key(
    tweets: str, make_source: MakeSource, count_requests: Callable[..., Any]
) -> None:
    writer = make_source(table=tweets, key="tweet_id")
    writer.store("1", {"tweet_id": "1", "text": "t", "name": "n", "likes": 3})
    # "name" is a DynamoDB reserved word: placeholders keep it working.
    source = make_source(table=tweets, key="tweet_id", projection=["text", "name"])
    requests = count_requests(source.client)
    assert source.load("1") == {"tweet_id": "1", "text": "t", "name": "n"}
    assert source.load_many(["1"]) == {"1": {"tweet_id": "1", "text": "t", "name": "n"}}
    params = dict(requests.params)["GetItem"]
    assert params["ExpressionAttributeNames"] == {"#p0": "tweet_id", "#p1": "text", "#p2": "name"}


@pytest.mark.parametrize("consistent", [True, False])
def test_consistent_read_is_passed_on(
    tweets: str, make_source: MakeSource, count_requests: Callable[..., Any], consistent: bool
) -> None:
    source = make_source(table=tweets, key="tweet_id", consistent_read=consistent)
    requests = count_requests(source.client)
    source.load("1")
    source.load_many(["1", "2"])
    params = dict(requests.params)
    assert params["GetItem"]["ConsistentRead"] is consistent
    assert params["BatchGetItem"]["RequestItems"][tweets]["ConsistentRead"] is consistent


def test_the_table_is_described_once_lazily(
    tweets: str,
    settings_for: Callable[..., DynamoDBSourceSettings],
    count_requests: Callable[..., Any],
) -> None:
    source = DynamoDBSource.from_settings(settings_for(table=tweets, key="tweet_id"))
    requests = count_requests(source.client)
    assert requests.sent == []
    source.load("1")
    source.load("2")
    source.load_many(["3"])
    assert requests.sent == ["DescribeTable", "GetItem", "GetItem", "BatchGetItem"]
    source.close()


def test_a_missing_table_names_table_region_and_endpoint(
    moto_server: MotoDynamoDB, make_source: MakeSource, count_requests: Callable[..., Any]
) -> None:
    source = make_source(table="no-such-table", key="id")
    requests = count_requests(source.client)
    for operation in (
        lambda: source.load("1"),
        lambda: source.load_many(["1"]),
        lambda: source.store("1", {"id": "1"}),
        lambda: source.remove("1"),
    ):
        with pytest.raises(TableNotFoundError) as caught:
            operation()
        message = str(caught.value)
        assert "'no-such-table'" in message
        assert "us-east-1" in message
        assert moto_server.endpoint_url in message
        assert isinstance(caught.value, SourceError)
        assert isinstance(caught.value, ConfigError)
    # The check is retried (the table may be created), but nothing else is sent.
    assert set(requests.sent) == {"DescribeTable"}


def test_a_table_deleted_after_the_check_is_reported_too(
    make_table: Callable[..., str], make_source: MakeSource, admin_client: Any
) -> None:
    table = make_table(key="id")
    source = make_source(table=table, key="id")
    assert source.load("1") is MISSING
    admin_client.delete_table(TableName=table)
    with pytest.raises(TableNotFoundError, match=repr(table)):
        source.load("1")


def test_a_table_keyed_otherwise_is_a_config_error(
    tweets: str,
    make_source: MakeSource,
    make_table: Callable[..., str],
    count_requests: Callable[..., Any],
) -> None:
    source = make_source(table=tweets, key="id")
    requests = count_requests(source.client)
    for _ in range(2):
        with pytest.raises(TableConfigError, match=r"partition key 'tweet_id'.*key='id'"):
            source.load("1")
    # A key schema cannot change: the table is described once, nothing else is sent.
    assert requests.sent == ["DescribeTable"]
    numbers = make_table(key="id", key_type="N")
    with pytest.raises(TableConfigError, match="type 'N', but the settings say 'S'"):
        make_source(table=numbers, key="id").load("1")


def test_each_call_refused_for_a_table_keyed_otherwise_gets_an_error_of_its_own(
    tweets: str, make_source: MakeSource
) -> None:
    """The verdict is remembered, and was raised as one exception object on every call: each
    raise added that call's frames to its traceback (every frame of every refused call kept
    for the source's life) and set its ``__context__`` to what that caller was handling."""
    source = make_source(table=tweets, key="id")
    refused: list[TableConfigError] = []
    for call in range(3):
        try:
            raise KeyError(f"handled by call {call}")
        except KeyError:
            with pytest.raises(TableConfigError, match=r"partition key 'tweet_id'.*key='id'") as no:
                source.load("1")
        refused.append(no.value)
    assert [str(error.__context__) for error in refused] == [
        "'handled by call 0'",
        "'handled by call 1'",
        "'handled by call 2'",
    ]
    # The calls after the first (the check's) raise from the same place, as deep.
    depths = [len(traceback.extract_tb(error.__traceback__)) for error in refused[1:]]
    assert depths[0] == depths[1]


def test_an_unreachable_endpoint_is_a_source_error_naming_it(
    botocore_delays: list[float], unreachable: DynamoDBSourceSettings
) -> None:
    settings = unreachable
    endpoint = str(settings.endpoint_url)
    # Building makes no request, so it cannot hang on a down endpoint.
    source = PLUGIN.build(settings, BuildContext("tweets", FakeClock(), -1))
    with pytest.raises(SourceError) as caught:
        source.load("1")
    assert not isinstance(caught.value, SourceThrottled)
    assert endpoint in str(caught.value)
    assert "'tweet'" in str(caught.value)
    assert "eu-west-1" in str(caught.value)
    assert len(botocore_delays) == 1  # botocore retried the connection once
    source.close()


def test_the_plugin_builds_a_source_from_settings(moto_server: MotoDynamoDB, tweets: str) -> None:
    assert find_plugin("dynamodb", group=SOURCES_GROUP) is PLUGIN
    settings = moto_server.settings(table=tweets, key="tweet_id", max_attempts=4)
    source = PLUGIN.build(settings, BuildContext("tweets", FakeClock(), -1))
    assert isinstance(source, Source)
    assert isinstance(source, DynamoDBSource)
    assert source.name == f"dynamodb:{tweets}"
    config = source.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert config.connect_timeout == 1.0
    assert source.load("1") is MISSING
    source.close()


def test_close_is_idempotent_and_a_closed_source_refuses_calls(
    tweets: str, settings_for: Callable[..., DynamoDBSourceSettings], moto_server: MotoDynamoDB
) -> None:
    source = DynamoDBSource.from_settings(settings_for(table=tweets, key="tweet_id"))
    source.close()
    source.close()
    with pytest.raises(SourceError, match="closed"):
        source.load("1")
    # A client passed in belongs to the caller: closing the source leaves it usable.
    client = moto_server.client()
    with DynamoDBSource.from_settings(
        settings_for(table=tweets, key="tweet_id"), client=client
    ) as borrowed:
        borrowed.load("1")
    assert client.describe_table(TableName=tweets)["Table"]["TableName"] == tweets
    client.close()


def test_create_table_from_settings_and_exist_ok(
    moto_server: MotoDynamoDB, admin_client: Any
) -> None:
    settings = moto_server.settings(table="ignored", key="ignored")
    description = create_table(
        settings, "made-by-settings", "pk", "N", "sk", read_capacity=5, range_key_type="B"
    )
    assert description["TableStatus"] == "ACTIVE"
    assert description["ProvisionedThroughput"]["ReadCapacityUnits"] == 5
    assert {
        a["AttributeName"]: a["AttributeType"] for a in description["AttributeDefinitions"]
    } == {
        "pk": "N",
        "sk": "B",
    }
    again = create_table(admin_client, "made-by-settings", "pk", "N", "sk", exist_ok=True)
    assert again["TableName"] == "made-by-settings"
    with pytest.raises(Exception, match="ResourceInUseException"):
        create_table(admin_client, "made-by-settings", "pk", wait=False)


def test_a_table_deleted_after_the_check_fails_load_many_with_the_table_error(
    make_table: Callable[..., str], make_source: MakeSource, admin_client: Any
) -> None:
    table = make_table(key="id")
    source = make_source(table=table, key="id")
    assert source.load_many(["1"]) == {}
    admin_client.delete_table(TableName=table)
    with pytest.raises(TableNotFoundError, match=repr(table)):
        source.load_many(["1", "2"])
