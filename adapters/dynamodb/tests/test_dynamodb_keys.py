"""Cache keys -> DynamoDB keys, and every bad input refused before any request is sent."""

from __future__ import annotations

import base64
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tiered_cache_dynamodb import DynamoDBSource, DynamoDBSourceSettings, InvalidKeyError, KeyCodec
from tiered_cache_dynamodb.cli import STREAM_TABLE, load_follow_stream_config
from tiered_cache_dynamodb.streams import StreamSettings

from tiered_cache.errors import CodecError, ConfigError, KeyTemplateError
from tiered_cache.settings import load_settings
from tiered_cache.testing.settings_checks import bools_taken_as_something_else

# -- the codec, without a server -----------------------------------------------------------


def test_without_a_template_the_cache_key_is_the_partition_key() -> None:
    codec = KeyCodec("tweet_id")
    assert codec.to_key("tweet:42") == {"tweet_id": {"S": "tweet:42"}}


def test_a_template_extracts_the_key_value() -> None:
    codec = KeyCodec("tweet_id", template="tweet:{tweet_id}")
    assert codec.to_key("tweet:42") == {"tweet_id": {"S": "42"}}
    assert codec.format({"tweet_id": {"S": "42"}}) == "tweet:42"


def test_hash_and_range_template() -> None:
    codec = KeyCodec("user_id", range_key="tweet_id", template="{user_id}#{tweet_id}")
    assert codec.to_key("u1#t9") == {"user_id": {"S": "u1"}, "tweet_id": {"S": "t9"}}
    # The split is always the same: the first separator ends the first placeholder.
    assert codec.to_key("u1#t#9") == {"user_id": {"S": "u1"}, "tweet_id": {"S": "t#9"}}


def test_template_with_range_key_first_and_number_types() -> None:
    codec = KeyCodec(
        "user_id", "N", range_key="ts", range_key_type="N", template="t/{ts}/u/{user_id}"
    )
    assert codec.to_key("t/1700000000/u/7") == {"user_id": {"N": "7"}, "ts": {"N": "1700000000"}}


def test_numbers_are_compared_as_numbers() -> None:
    codec = KeyCodec("id", "N")
    assert codec.identity(codec.to_key("042")) == codec.identity(codec.to_key("4.2e1"))
    assert codec.identity(codec.to_key("42")) == (Decimal(42),)


def test_binary_keys_are_base64_in_the_cache_key() -> None:
    codec = KeyCodec("id", "B")
    assert codec.to_key(base64.b64encode(b"\x00\xff").decode()) == {"id": {"B": b"\x00\xff"}}


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("tweet:{id}", "not a key attribute"),
        ("tweet", "no placeholder for {tweet_id}"),
        ("{tweet_id}{tweet_id}", "appears twice"),
        ("{tweet_id:>5}", "format spec"),
        ("{tweet_id!r}", "format spec or conversion"),
        ("tweet:{tweet_id", "not a valid template"),
    ],
)
def test_unfit_templates_are_refused(template: str, problem: str) -> None:
    with pytest.raises(KeyTemplateError, match=problem) as caught:
        KeyCodec("tweet_id", template=template)
    # A template is shown; text with no placeholder may be a secret a field off: not shown.
    assert (repr(template) in str(caught.value)) == ("{" in template), str(caught.value)


def test_adjacent_placeholders_are_ambiguous() -> None:
    with pytest.raises(KeyTemplateError, match="literal text between them"):
        KeyCodec("a", range_key="b", template="{a}{b}")


def test_a_range_key_needs_a_template() -> None:
    with pytest.raises(KeyTemplateError, match="needs a key_template"):
        KeyCodec("a", range_key="b")


# -- settings ------------------------------------------------------------------------------


def test_settings_through_the_core_loader_resolve_to_the_dynamodb_model() -> None:
    settings = load_settings(
        source={"kind": "dynamodb", "table": "tweet", "key": "tweet_id", "max_attempts": 4}
    )
    assert isinstance(settings.source, DynamoDBSourceSettings)
    assert settings.source.max_attempts == 4
    assert settings.source.retry_mode == "standard"


def test_settings_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"tiered_cache\.source\.consistent_reed"):
        load_settings(
            source={"kind": "dynamodb", "table": "tweet", "key": "id", "consistent_reed": True}
        )
    with pytest.raises(ConfigError, match="key_template"):
        load_settings(
            source={"kind": "dynamodb", "table": "tweet", "key": "id", "key_template": "x:{y}"}
        )


def test_region_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert DynamoDBSourceSettings(table="tweet", key="id").region == "eu-west-3"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert DynamoDBSourceSettings(table="tweet", key="id").region == "ap-south-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert DynamoDBSourceSettings(table="tweet", key="id").region == "us-east-1"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"range_key": "ts"}, "needs a key_template"),
        ({"range_key": "id", "key_template": "{id}"}, "must differ"),
        ({"retry_mode": "eager"}, "retry_mode"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"key_type": "SS"}, "key_type"),
        ({"projection": []}, "at least one attribute"),
        ({"endpoint_url": "localhost:8000"}, "http://"),
        ({"batch_backoff_base": "1s", "batch_backoff_max": "10ms"}, "batch_backoff_max"),
        ({"aws_secret_access_key": "x"}, "aws_access_key_id"),
    ],
)
def test_bad_settings_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        DynamoDBSourceSettings(table="tweet", key="id", **fields)


def test_secret_does_not_show_in_repr() -> None:
    settings = DynamoDBSourceSettings(
        table="tweet", key="id", aws_access_key_id="AKIA", aws_secret_access_key="hunter2"
    )
    assert "hunter2" not in repr(settings)


# -- bad input through a source: an error, and no request ------------------------------------


@pytest.fixture
def plain(
    make_table: Callable[..., str],
    make_source: Callable[..., DynamoDBSource],
    count_requests: Callable[..., Any],
) -> tuple[DynamoDBSource, Any]:
    source = make_source(
        table=make_table(key="tweet_id"), key="tweet_id", key_template="tweet:{tweet_id}"
    )
    return source, count_requests(source.client)


@pytest.fixture
def ranged(
    make_table: Callable[..., str],
    make_source: Callable[..., DynamoDBSource],
    count_requests: Callable[..., Any],
) -> tuple[DynamoDBSource, Any]:
    table = make_table(key="user_id", key_type="N", range_key="tweet_id")
    source = make_source(
        table=table,
        key="user_id",
        key_type="N",
        range_key="tweet_id",
        key_template="{user_id}#{tweet_id}",
    )
    return source, count_requests(source.client)


def each_operation(source: DynamoDBSource, key: str) -> list[Callable[[], Any]]:
    return [
        lambda: source.load(key),
        lambda: source.load_many(["tweet:1", key]),
        lambda: source.remove(key),
        lambda: source.store(key, {"tweet_id": "1"}),
    ]


@pytest.mark.parametrize(
    ("key", "error", "fragments"),
    [
        ("tweet-1", KeyTemplateError, ["'tweet-1'", "'tweet:{tweet_id}'", "does not match"]),
        ("tweet:", KeyTemplateError, ["'tweet:'", "'tweet:{tweet_id}'"]),
        ("", InvalidKeyError, ["empty"]),
        ("tweet:" + "x" * 2049, InvalidKeyError, ["2049 bytes", "limit of 2048"]),
        ("tweet:" + "é" * 1025, InvalidKeyError, ["2050 bytes", "partition key 'tweet_id'"]),
        ("tweet:\ud800", InvalidKeyError, ["not valid Unicode"]),
    ],
)
def test_bad_keys_raise_before_any_request(
    plain: tuple[DynamoDBSource, Any], key: str, error: type[Exception], fragments: list[str]
) -> None:
    source, requests = plain
    for operation in each_operation(source, key):
        with pytest.raises(error) as caught:
            operation()
        for fragment in fragments:
            assert fragment in str(caught.value)
    assert requests.sent == []


def test_a_partition_key_of_exactly_2048_bytes_is_fine(plain: tuple[DynamoDBSource, Any]) -> None:
    source, _ = plain
    key = "tweet:" + "x" * 2048
    source.store(key, {"tweet_id": "x" * 2048})
    assert source.load(key) == {"tweet_id": "x" * 2048}


@pytest.mark.parametrize(
    ("key", "fragments"),
    [
        ("abc#t1", ["partition key 'user_id'", "'abc' is not a number"]),
        ("1.2.3#t1", ["not a number"]),
        ("NaN#t1", ["not a number"]),
        ("1e200#t1", ["outside DynamoDB's number range"]),
        ("1" * 39 + "#t1", ["more than 38 significant digits"]),
        ("7#" + "y" * 1025, ["sort key 'tweet_id'", "1025 bytes", "limit of 1024"]),
        ("7#", ["does not match key_template"]),
        ("#t1", ["does not match key_template"]),
    ],
)
def test_bad_number_and_sort_keys_raise_before_any_request(
    ranged: tuple[DynamoDBSource, Any], key: str, fragments: list[str]
) -> None:
    source, requests = ranged
    for operation in (lambda: source.load(key), lambda: source.load_many(["1#a", key])):
        with pytest.raises(KeyTemplateError) as caught:
            operation()
        for fragment in fragments:
            assert fragment in str(caught.value)
    assert requests.sent == []


def test_a_sort_key_of_exactly_1024_bytes_is_fine(ranged: tuple[DynamoDBSource, Any]) -> None:
    source, _ = ranged
    key = "7#" + "y" * 1024
    source.store(key, {"user_id": 7, "tweet_id": "y" * 1024})
    assert source.load(key) == {"user_id": Decimal(7), "tweet_id": "y" * 1024}


def test_bad_binary_key_raises_before_any_request(
    make_table: Callable[..., str],
    make_source: Callable[..., DynamoDBSource],
    count_requests: Callable[..., Any],
) -> None:
    source = make_source(table=make_table(key="id", key_type="B"), key="id", key_type="B")
    requests = count_requests(source.client)
    with pytest.raises(InvalidKeyError, match="not base64"):
        source.load("not base64!")
    with pytest.raises(InvalidKeyError, match="2049 bytes"):
        source.load(base64.b64encode(b"x" * 2049).decode())
    assert requests.sent == []


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        ({"text": "no key"}, InvalidKeyError, "has no 'S' attribute 'tweet_id'"),
        ({"tweet_id": "2"}, InvalidKeyError, "give 'tweet:2', not 'tweet:1'"),
        ({"tweet_id": 1}, InvalidKeyError, "is of type 'N', but the table's key type is 'S'"),
        (["tweet_id", "1"], CodecError, "must be the item as a mapping"),
        ({"tweet_id": "1", "score": 1.5}, CodecError, "attribute 'score'"),
        ({"tweet_id": "1", "": 1}, CodecError, "attribute name ''"),
        ({"tweet_id": "1", "big": Decimal("1" * 40)}, CodecError, "attribute 'big'"),
    ],
)
def test_bad_items_are_refused_before_any_request(
    plain: tuple[DynamoDBSource, Any], value: Any, error: type[Exception], fragment: str
) -> None:
    source, requests = plain
    with pytest.raises(error) as caught:
        source.store("tweet:1", value)
    assert fragment in str(caught.value)
    assert requests.sent == []


def test_bad_typed_items_are_refused_before_any_request(
    make_table: Callable[..., str],
    make_source: Callable[..., DynamoDBSource],
    count_requests: Callable[..., Any],
) -> None:
    source = make_source(table=make_table(key="id"), key="id", typed_items=True)
    requests = count_requests(source.client)
    with pytest.raises(CodecError, match="typed form"):
        source.store("a", {"id": "a"})
    with pytest.raises(InvalidKeyError, match="not 'a'"):
        source.store("a", {"id": {"S": "b"}})
    assert requests.sent == []


def test_a_typed_number_key_that_is_not_a_number_is_refused(
    make_table: Callable[..., str],
    make_source: Callable[..., DynamoDBSource],
    count_requests: Callable[..., Any],
) -> None:
    source = make_source(
        table=make_table(key="id", key_type="N"), key="id", key_type="N", typed_items=True
    )
    requests = count_requests(source.client)
    with pytest.raises(InvalidKeyError, match="not a number"):
        source.store("1", {"id": {"N": "one"}})
    assert requests.sent == []


def test_true_for_a_number_is_refused_naming_its_field(tmp_path: Path) -> None:
    """``max_attempts = true`` was one attempt, ``batch_size = true`` a stream batch of one
    record (pydantic's lax mode); in the source's table and the stream follower's."""

    def source_with(name: str, value: Any) -> Any:
        fields = {"kind": "dynamodb", "table": "tweets", "key": "id", name: value}
        return load_settings(source=fields).source

    path = "tiered_cache.source"
    assert bools_taken_as_something_else(DynamoDBSourceSettings, path, source_with) == []
    config = tmp_path / "tiered_cache.toml"
    config.write_text("[tiered_cache]\n")

    def stream_with(name: str, value: Any) -> Any:
        _, stream = load_follow_stream_config(
            config, **{"table": "tweets", "key": "id", name: value}
        )
        return stream

    stream = STREAM_TABLE
    assert bools_taken_as_something_else(StreamSettings, stream, stream_with) == []
