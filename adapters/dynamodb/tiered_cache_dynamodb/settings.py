"""The settings model of the ``dynamodb`` source kind."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from tiered_cache.errors import ConfigError
from tiered_cache.redaction import redacted_repr_args, shown_url
from tiered_cache.settings import FieldProblem, SourceSettings, checked
from tiered_cache.units import Duration

from .keys import parse_template

KeyType = Literal["S", "N", "B"]
RetryMode = Literal["standard", "adaptive", "legacy"]


def check_endpoint(value: str | None) -> str | None:
    """``value``, or ValueError unless it is an HTTP(S) URL (the source's and the stream's
    rule). The URL may hold credentials (``http://user:secret@host``): shown redacted; text
    that is no URL (a key typed a field off) is not shown (:func:`shown_url`)."""
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(
            f"endpoint_url must start with http:// or https://, got {shown_url(value)}"
        )
    return value


def endpoint_repr_args(
    args: Iterable[tuple[str | None, Any]],
) -> Iterable[tuple[str | None, Any]]:
    """A settings model's ``__repr_args__`` with its ``endpoint_url`` redacted."""
    return redacted_repr_args(args, ["endpoint_url"])


def default_region() -> str:
    """``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


#: A DynamoDB table's name, as DynamoDB takes one: 3 to 255 letters, digits, ``_``, ``-`` and
#: ``.``. Another was sent, and refused by DynamoDB at the first read, with the name echoed.
TableName = Annotated[
    str, StringConstraints(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
]


def _check_projection(names: list[str]) -> list[str]:
    if not names:
        raise ValueError("projection must name at least one attribute (or be omitted)")
    if any(not name for name in names):
        raise ValueError("projection contains an empty attribute name")
    return names


#: The attributes a read asks for: in the field's type, so that a source built in code meets
#: the rule too (:func:`checked_options` checks each argument by its field's type).
Projection = Annotated[list[str], AfterValidator(_check_projection)]


class DynamoDBSourceSettings(SourceSettings):
    """A DynamoDB table read with GetItem/BatchGetItem and written with PutItem/DeleteItem."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kind: Literal["dynamodb"] = "dynamodb"
    table: TableName = Field(description="Name of the DynamoDB table.")
    key: str = Field(min_length=1, description="Name of the table's partition (hash) key.")
    range_key: str | None = Field(
        default=None,
        min_length=1,
        description="Name of the table's sort (range) key, if it has one; needs a key_template.",
    )
    key_template: str | None = Field(
        default=None,
        description="How a cache key maps to the item key, such as 'tweet:{tweet_id}' or "
        "'{user_id}#{tweet_id}' (placeholders are the key attribute names). Without a "
        "template the cache key is the partition key's value.",
    )
    key_type: KeyType = Field(
        default="S",
        description="DynamoDB type of the partition key: 'S' string, 'N' number, or 'B' "
        "binary (given base64-encoded in the cache key).",
    )
    range_key_type: KeyType = Field(
        default="S", description="DynamoDB type of the sort key ('S', 'N' or 'B')."
    )
    region: str = Field(
        default_factory=default_region,
        min_length=1,
        description="AWS region; defaults to AWS_REGION, AWS_DEFAULT_REGION, then us-east-1.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint to use instead of AWS's (DynamoDB Local, moto: "
        "'http://127.0.0.1:8000').",
    )
    aws_access_key_id: str | None = Field(
        repr=False,
        default=None,
        description="Access key; none: whatever boto3 finds (environment, profile, role).",
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret key going with aws_access_key_id."
    )
    aws_session_token: SecretStr | None = Field(
        default=None, description="Session token for temporary credentials."
    )
    profile: str | None = Field(
        default=None, description="Named profile of the AWS config files to take credentials from."
    )
    consistent_read: bool = Field(
        default=False,
        description="Strongly consistent reads (twice the read capacity of eventual ones).",
    )
    projection: Projection | None = Field(
        default=None,
        description="Attributes to read; none: the whole item. The key attributes are always "
        "read too, so that batch results can be matched to their keys.",
    )
    typed_items: bool = Field(
        default=False,
        description="Exchange items in DynamoDB's typed form ({'id': {'S': '42'}}) instead of "
        "plain Python values (numbers as Decimal).",
    )
    retry_mode: RetryMode = Field(
        default="standard", description="botocore retry mode: 'standard', 'adaptive' or 'legacy'."
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Attempts botocore makes per request, the first one included.",
    )
    connect_timeout: Duration = Field(
        default=1.0,
        gt=0,
        description="Longest wait for a TCP connection ('1s'); short, so that a down endpoint "
        "fails fast instead of hanging the caller.",
    )
    read_timeout: Duration = Field(
        default=5.0, gt=0, description="Longest wait for a response once connected ('5s')."
    )
    batch_retry_limit: int = Field(
        default=5,
        ge=0,
        le=50,
        description="Retries of the UnprocessedKeys of a BatchGetItem before giving up.",
    )
    batch_backoff_base: Duration = Field(
        default=0.05,
        ge=0,
        description="First backoff before retrying UnprocessedKeys ('50ms'); doubles on every "
        "retry, with full jitter.",
    )
    batch_backoff_max: Duration = Field(
        default=2.0, ge=0, description="Longest single backoff between UnprocessedKeys retries."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return check_endpoint(value)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        return endpoint_repr_args(super().__repr_args__())

    @model_validator(mode="after")
    def _check_keys(self) -> DynamoDBSourceSettings:
        if self.range_key is not None and self.range_key == self.key:
            raise ValueError(f"range_key must differ from key (both are {self.key!r})")
        if self.key_template is not None:
            # Raises KeyTemplateError (a ValueError) naming the template and the problem.
            parse_template(self.key_template, self.key, self.range_key)
        elif self.range_key is not None:
            raise ValueError(
                f"a table with a sort key ({self.range_key!r}) needs a key_template that places "
                f"both keys in the cache key, such as '{{{self.key}}}#{{{self.range_key}}}'"
            )
        if self.aws_secret_access_key is not None and self.aws_access_key_id is None:
            raise ValueError("aws_secret_access_key is set but aws_access_key_id is not")
        check_backoffs(self.batch_backoff_base, self.batch_backoff_max)
        return self


def check_backoffs(base: float, most: float) -> None:
    """The rule of the two backoffs of UnprocessedKeys retries, a config file's and a
    source's built in code (:func:`checked_options`)."""
    if most < base:
        raise FieldProblem(
            "batch_backoff_max", "batch_backoff_max must not be smaller than batch_backoff_base"
        )


#: The options of a source's table beyond its name and key, the keywords both sources take
#: (``DynamoDBSource(client, table, key, **options)``): the fields of
#: :class:`DynamoDBSourceSettings` of these names, whose rules and defaults they take.
TABLE_OPTIONS = (
    "key_type",
    "range_key",
    "range_key_type",
    "key_template",
    "consistent_read",
    "projection",
    "typed_items",
    "batch_retry_limit",
    "batch_backoff_base",
    "batch_backoff_max",
)


def checked_options(table: Any, key: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """``table``, ``key`` and the table options ``given`` in code (:data:`TABLE_OPTIONS`;
    the others at their fields' defaults), each as its field of
    :class:`DynamoDBSourceSettings` takes it (:func:`~tiered_cache.settings.checked`: text
    such as ``"50ms"`` read as seconds), and the backoffs' rule; or
    :class:`~tiered_cache.ConfigError` naming the first argument refused (``table: ...``),
    never its value (a key typed into the wrong argument would be a secret shown).
    :class:`TypeError` for an option of no such name."""
    unknown = sorted(set(given) - set(TABLE_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected table option {unknown[0]!r}")
    fields = DynamoDBSourceSettings.model_fields
    defaults = {name: fields[name].default for name in TABLE_OPTIONS}
    values = {"table": table, "key": key, **defaults, **given}
    options = {name: checked(DynamoDBSourceSettings, name, value) for name, value in values.items()}
    try:
        check_backoffs(options["batch_backoff_base"], options["batch_backoff_max"])
    except FieldProblem as exc:
        raise ConfigError(f"{exc.field}: {exc}") from None
    return options
