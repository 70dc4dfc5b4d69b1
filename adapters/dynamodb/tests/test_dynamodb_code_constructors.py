"""A DynamoDB source built in code meets the rules of a config file's ``dynamodb`` source,
from their one home (``DynamoDBSourceSettings``' fields and its backoffs' rule): both
sources (built on ``TableSteps``) took a table name DynamoDB refuses (sent, and refused at
the first read, the name echoed), a negative retry limit, a NaN or negative backoff, a
``batch_backoff_max`` below the base, an empty projection and a key type of no name. Each
error names the argument, never its value: a secret typed into the wrong argument is not
shown."""

from __future__ import annotations

import math
from typing import Any

import pytest
from tiered_cache_dynamodb import AsyncDynamoDBSource, DynamoDBSource

from tiered_cache import ConfigError, load_settings

#: A value the settings' dynamodb source refuses, by argument (the field of that name).
SOURCE_REFUSED: list[tuple[str, Any]] = [
    ("table", "ab"),
    ("table", "t" * 256),
    ("table", "tweets table"),
    ("key", ""),
    ("key_type", "X"),
    ("range_key", ""),
    ("projection", []),
    ("batch_retry_limit", -1),
    ("batch_retry_limit", 51),
    ("batch_retry_limit", True),
    ("batch_backoff_base", -1.0),
    ("batch_backoff_base", math.nan),
    ("batch_backoff_max", math.inf),
]


def _sources(admin_client: Any, **arguments: Any) -> list[Any]:
    """Both kinds of source, built from ``arguments`` (neither sends a request here)."""
    fields = {"table": "tweet", "key": "id", **arguments}
    return [
        lambda: DynamoDBSource(admin_client, **fields),
        lambda: AsyncDynamoDBSource(None, connect=_never, region="us-east-1", **fields),
    ]


async def _never() -> Any:
    raise AssertionError("not connected in these tests")


@pytest.mark.parametrize(("argument", "value"), SOURCE_REFUSED)
def test_a_source_built_in_code_refuses_what_its_settings_refuse(
    admin_client: Any, argument: str, value: Any
) -> None:
    for build in _sources(admin_client, **{argument: value}):
        with pytest.raises(ConfigError, match=rf"^{argument}: "):
            build()
    source = {"kind": "dynamodb", "table": "tweet", "key": "id", argument: value}
    with pytest.raises(ConfigError, match=rf"tiered_cache\.source\.{argument}: "):
        load_settings(source=source)


def test_a_source_built_in_code_refuses_a_backoff_max_below_its_base(admin_client: Any) -> None:
    refused = {"batch_backoff_base": 1.0, "batch_backoff_max": 0.5}
    for build in _sources(admin_client, **refused):
        with pytest.raises(
            ConfigError, match=r"^batch_backoff_max: batch_backoff_max must not be smaller"
        ):
            build()
    source = {"kind": "dynamodb", "table": "tweet", "key": "id", **refused}
    with pytest.raises(
        ConfigError, match=r"^tiered_cache\.source\.batch_backoff_max: batch_backoff_max must not"
    ):
        load_settings(source=source)


def test_a_source_built_in_code_reads_durations_as_the_settings_do(admin_client: Any) -> None:
    source = DynamoDBSource(
        admin_client, "tweet", "id", batch_backoff_base="50ms", batch_backoff_max="2s"
    )
    assert (source._steps._backoff_base, source._steps._backoff_max) == (0.05, 2.0)


#: A secret access key typed into the wrong argument.
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("argument", ["table", "key_type", "batch_backoff_base"])
def test_a_refused_argument_is_never_shown(admin_client: Any, argument: str) -> None:
    for build in _sources(admin_client, **{argument: SECRET}):
        with pytest.raises(ConfigError) as refused:
            build()
        assert SECRET not in str(refused.value), refused.value
        assert "K7MDENG" not in repr(refused.value), refused.value
