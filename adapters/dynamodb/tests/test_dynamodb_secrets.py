"""AWS credentials in the DynamoDB and stream settings never reach repr/str or an error."""

from __future__ import annotations

import pytest
from tiered_cache_dynamodb import DynamoDBSourceSettings
from tiered_cache_dynamodb.streams import StreamSettings

from tiered_cache import ConfigError, load_settings

ACCESS_KEY = "AKIAEDGESDONOTLEAK01"
SECRET_KEY = "wJalrXUtnFEMI-edges-do-not-leak-K7MDENG"
TOKEN = "FwoGZXIvYXdzEdgesSessionTokenDoNotLeak"


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "aws_session_token": TOKEN,
    }


def _assert_hidden(text: str) -> None:
    for secret in (ACCESS_KEY, SECRET_KEY, TOKEN):
        assert secret not in text


def test_repr_and_str_of_the_source_and_stream_settings_hide_the_keys() -> None:
    source = DynamoDBSourceSettings(table="tweets", key="tweet_id", **_credentials())
    stream = StreamSettings(table="tweets", key="tweet_id", **_credentials())
    resolved = StreamSettings().resolve(source)
    for model in (source, stream, resolved):
        _assert_hidden(repr(model))
        _assert_hidden(str(model))
    assert resolved.aws_access_key_id == ACCESS_KEY  # still there to be used


def test_a_config_error_next_to_the_keys_hides_them() -> None:
    source = {"kind": "dynamodb", "table": "tweets", "key": "tweet_id", **_credentials()}
    with pytest.raises(ConfigError) as caught:
        load_settings(source={**source, "max_attempts": 0})
    assert "tiered_cache.source.max_attempts" in str(caught.value)
    _assert_hidden(str(caught.value))
    settings = load_settings(source=source)
    _assert_hidden(repr(settings))
    _assert_hidden(str(settings))


SHORT = "s3k-42"  # pydantic cuts the middle out of a long input's text, not a short one's


@pytest.mark.parametrize(
    "fields",
    [
        {"source": {"kind": "dynamodb", "table": "t", "key": "k", "aws_secret_access_key": SHORT}},
        {"tiers": [f"redis://:{SHORT}@h/0"]},
    ],
    ids=["short-table-name", "tier-not-a-table"],
)
def test_a_settings_object_built_directly_does_not_echo_its_input_in_errors(
    fields: dict[str, object],
) -> None:
    # load_settings describes errors without their input; CacheSettings built directly (for
    # TieredCache.from_settings) raised pydantic's own ValidationError, whose text held the
    # input: the whole table of a failing validator, the secret among it.
    from pydantic import ValidationError

    from tiered_cache.settings import CacheSettings

    with pytest.raises(ValidationError) as caught:
        CacheSettings(**fields)  # type: ignore[arg-type]
    assert SHORT not in str(caught.value)
