"""AWS credentials in the DynamoDB and stream settings never reach repr/str or an error."""

from __future__ import annotations

from pathlib import Path

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
    # input: the whole table of a failing validator, the secret among it. Built directly it
    # now describes them as load_settings does, and so does model_validate (which raised
    # pydantic's error wrapping that description).
    from tiered_cache.settings import CacheSettings

    with pytest.raises(ConfigError) as caught:
        CacheSettings(**fields)  # type: ignore[arg-type]
    assert SHORT not in str(caught.value)
    with pytest.raises(ConfigError) as validated:
        CacheSettings.model_validate(fields)
    assert SHORT not in str(validated.value)
    assert str(validated.value) == str(caught.value)


#: A password typed into a duration field by mistake.
TYPED = "Tr0ub4dor-3-typed-in-the-wrong-field"


@pytest.mark.parametrize(
    ("tables", "flags", "field"),
    [
        (f'[tiered_cache]\nttl = "{TYPED}"\n', [], "tiered_cache.ttl"),
        (
            f'[tiered_cache_stream]\npoll_interval = "{TYPED}"\n',
            [],
            "tiered_cache_stream.poll_interval",
        ),
        ("", ["--poll-interval", TYPED], "--poll-interval (tiered_cache_stream.poll_interval)"),
    ],
    ids=["cache-file", "stream-file", "flag"],
)
def test_the_follow_stream_command_does_not_show_a_secret_typed_into_a_duration(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tables: str,
    flags: list[str],
    field: str,
) -> None:
    """Its config check said ``expected a duration ..., got 'Tr0ub4dor-...'`` on stderr."""
    from tiered_cache.cli import main

    config = tmp_path / "cache.toml"
    source = '[tiered_cache.source]\nkind = "dynamodb"\ntable = "tweets"\nkey = "k"\n'
    config.write_text(tables + source if tables.startswith("[tiered_cache]") else source + tables)
    assert main(["follow-stream", "--config", str(config), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{field}: expected a duration" in err, err
    assert TYPED not in err and TYPED[:8] not in err, err


ENDPOINT = "http://user:endpoint-pass-do-not-leak@127.0.0.1:8000"


def test_an_endpoint_with_a_password_is_shown_without_it() -> None:
    """endpoint_url was shown whole in the settings' reprs, the sources' reprs (and so every
    error naming the table) and the settings' own refusal of it."""
    import boto3
    from tiered_cache_dynamodb import DynamoDBSource
    from tiered_cache_dynamodb.async_source import AsyncDynamoDBSource

    client = boto3.client(
        "dynamodb", region_name="us-east-1", endpoint_url=ENDPOINT, **_credentials()
    )
    shown = [
        repr(DynamoDBSourceSettings(table="tweets", key="tweet_id", endpoint_url=ENDPOINT)),
        repr(StreamSettings(table="tweets", key="tweet_id", endpoint_url=ENDPOINT)),
        repr(DynamoDBSource(client, "tweets", "tweet_id")),
        repr(
            AsyncDynamoDBSource(
                None, "tweets", "tweet_id", connect=object, region="eu-west-1", endpoint=ENDPOINT
            )
        ),
    ]
    with pytest.raises(ConfigError) as refused:
        load_settings(
            source={
                "kind": "dynamodb",
                "table": "tweets",
                "key": "k",
                "endpoint_url": ENDPOINT.replace("http", "ftp"),
            }
        )
    shown.append(str(refused.value))
    for text in shown:
        assert "endpoint-pass-do-not-leak" not in text
        assert "127.0.0.1:8000" in text  # the host is still shown
    client.close()


def test_the_access_key_id_as_an_endpoint_user_is_hidden_with_its_password() -> None:
    """An endpoint's user (an access key id, ``https://AKIA...:secret@host``) was shown beside
    its masked password: in the settings' reprs and the refusal of a URL that is not HTTP."""
    endpoint = f"http://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:8000"
    fields = {"kind": "dynamodb", "table": "tweets", "key": "k"}
    shown = [
        repr(DynamoDBSourceSettings(table="tweets", key="k", endpoint_url=endpoint)),
        repr(StreamSettings(table="tweets", key="k", endpoint_url=endpoint)),
    ]
    with pytest.raises(ConfigError) as refused:
        load_settings(source={**fields, "endpoint_url": endpoint.replace("http", "ftp")})
    shown.append(str(refused.value))
    for text in shown:
        _assert_hidden(text)
        assert "127.0.0.1:8000" in text, text


def test_a_secret_typed_into_the_endpoint_is_not_shown() -> None:
    """Text that is no URL (a key pasted a field off) was echoed: ``endpoint_url must start
    with http:// or https://, got '<the key>'``."""
    fields = {"kind": "dynamodb", "table": "tweets", "key": "k", "endpoint_url": SECRET_KEY}
    with pytest.raises(ConfigError) as refused:
        load_settings(source=fields)
    message = str(refused.value)
    assert message.startswith("tiered_cache.source.endpoint_url: "), message
    assert "http://" in message, message
    assert SECRET_KEY not in message and SECRET_KEY[:6] not in message, message


def test_a_secret_typed_into_the_key_template_is_not_shown() -> None:
    """Text with no placeholder was echoed: ``key_template '<the key>' has no placeholder``."""
    fields = {"kind": "dynamodb", "table": "tweets", "key": "k", "key_template": SECRET_KEY}
    with pytest.raises(ConfigError) as refused:
        load_settings(source=fields)
    message = str(refused.value)
    assert "key_template" in message and "no placeholder for {k}" in message, message
    assert SECRET_KEY not in message and SECRET_KEY[:6] not in message, message


def _closed_port_endpoint() -> str:
    import socket

    with socket.socket() as probe:  # a port nothing listens on: every call fails to connect
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://user:endpoint-pass-do-not-leak@127.0.0.1:{port}"


def _shown(error: BaseException) -> str:
    """What a user sees of ``error``: its traceback with every cause and context."""
    import traceback

    return "".join(traceback.format_exception(error))


def test_a_failed_call_to_an_endpoint_with_a_password_does_not_show_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """botocore's connection errors carry the request's URL, the endpoint's password in it:
    the source's SourceError said ``failed: Could not connect to the endpoint URL:
    "http://user:endpoint-pass-do-not-leak@..."`` and so did the error chained under it."""
    from tiered_cache_dynamodb import DynamoDBSource
    from tiered_cache_dynamodb.streams import StreamFollower

    from tiered_cache import SourceError

    endpoint = _closed_port_endpoint()
    settings = DynamoDBSourceSettings(
        table="tweets", key="tweet_id", endpoint_url=endpoint, max_attempts=1, **_credentials()
    )
    shown: list[str] = []
    with DynamoDBSource.from_settings(settings) as source:
        calls = [
            source.check_table,
            lambda: source.load("k"),
            lambda: source.load_many(["a", "b"]),
            lambda: source.store("k", {"tweet_id": "k"}),
            lambda: source.remove("k"),
        ]
        for call in calls:
            with pytest.raises(SourceError) as caught:
                call()
            shown.append(_shown(caught.value))
    follower = StreamFollower(_NoCache(), source=settings)
    try:
        with pytest.raises(Exception) as failed:
            follower.run_once()
        shown.append(_shown(failed.value))
    finally:
        follower.close()
    shown.extend(
        record.getMessage() for record in caplog.records if record.name.startswith("tiered")
    )
    assert len(shown) >= 6
    for text in shown:
        assert "Could not connect" in text or "stream" in text, text  # the cause is still told
        assert "endpoint-pass-do-not-leak" not in text, text
        assert "127.0.0.1" in text, text


class _NoCache:
    def invalidate_many(self, keys: object) -> None:
        raise AssertionError("nothing to invalidate: every call fails")


def test_a_failed_call_of_the_async_source_does_not_show_the_password() -> None:
    """A pin, not a failure seen first: aiohttp refuses a URL with credentials before it
    connects, and its refusal does not quote the URL; the async client gets the same hook as
    the sync one all the same (:func:`tiered_cache_dynamodb.aws.hide_endpoint_secrets`)."""
    import asyncio

    from tiered_cache_dynamodb.async_source import AsyncDynamoDBSource

    from tiered_cache import SourceError

    settings = DynamoDBSourceSettings(
        table="tweets",
        key="tweet_id",
        endpoint_url=_closed_port_endpoint(),
        max_attempts=1,
        **_credentials(),
    )

    async def failures() -> list[str]:
        shown = []
        async with AsyncDynamoDBSource.from_settings(settings) as source:
            for call in (source.check_table, lambda: source.load("k")):
                with pytest.raises(SourceError) as caught:
                    await call()
                shown.append(_shown(caught.value))
        return shown

    shown = asyncio.run(failures())
    assert len(shown) == 2
    for text in shown:
        # aiohttp refuses credentials in a URL before it connects: the refusal is told.
        assert "credentials encoded in URL" in text, text
        assert "endpoint-pass-do-not-leak" not in text, text
