"""Creating and deleting tables, for examples, demos and tests (not used by the source)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from .settings import DynamoDBSourceSettings
from .source import make_client

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import WaiterConfigTypeDef

logger = logging.getLogger(__name__)

#: What a table's stream records hold besides the key (``create_table(stream=...)``).
StreamViewType = Literal["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]

#: Polling of the waiters: DynamoDB Local and moto answer at once, AWS within seconds.
_WAITER: WaiterConfigTypeDef = {"Delay": 1, "MaxAttempts": 120}


def create_table(  # noqa: PLR0917 - the positional signature the examples use
    client_or_settings: DynamoDBClient | DynamoDBSourceSettings,
    table: str,
    key: str,
    key_type: str = "S",
    range_key: str | None = None,
    read_capacity: int = 1,
    write_capacity: int = 1,
    wait: bool = True,
    *,
    range_key_type: str = "S",
    exist_ok: bool = False,
    stream: bool | StreamViewType = False,
) -> dict[str, Any]:
    """Create a table with provisioned throughput and return its description.

    Args:
        client_or_settings: a boto3 DynamoDB client, or source settings to make one from (the
            settings' own table and key fields are not used: pass them explicitly).
        wait: block until the table is ACTIVE.
        exist_ok: return the existing table's description instead of raising if it exists.
        stream: enable the table's DynamoDB stream: ``True`` for ``KEYS_ONLY`` (all that the
            stream follower needs, and the smallest records), or a view type such as
            ``"NEW_AND_OLD_IMAGES"``.
    """
    if isinstance(client_or_settings, DynamoDBSourceSettings):
        client = make_client(client_or_settings)
        try:
            return create_table(
                client,
                table,
                key,
                key_type,
                range_key,
                read_capacity,
                write_capacity,
                wait,
                range_key_type=range_key_type,
                exist_ok=exist_ok,
                stream=stream,
            )
        finally:
            client.close()
    client = client_or_settings
    schema: list[Any] = [{"AttributeName": key, "KeyType": "HASH"}]
    attributes: list[Any] = [{"AttributeName": key, "AttributeType": key_type}]
    if range_key is not None:
        schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
        attributes.append({"AttributeName": range_key, "AttributeType": range_key_type})
    extra: dict[str, Any] = {}
    if stream:
        view = "KEYS_ONLY" if stream is True else stream
        extra["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view}
    try:
        client.create_table(
            TableName=table,
            KeySchema=schema,
            AttributeDefinitions=attributes,
            ProvisionedThroughput={
                "ReadCapacityUnits": read_capacity,
                "WriteCapacityUnits": write_capacity,
            },
            **extra,
        )
        logger.info("created DynamoDB table %r", table)
    except ClientError as exc:
        if not (exist_ok and exc.response.get("Error", {}).get("Code") == "ResourceInUseException"):
            raise
    if wait:
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig=_WAITER)
    return dict(client.describe_table(TableName=table)["Table"])


def delete_table(client: DynamoDBClient, table: str, *, wait: bool = True) -> None:
    """Delete ``table``; deleting an absent table is not an error."""
    try:
        client.delete_table(TableName=table)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
        return
    if wait:
        client.get_waiter("table_not_exists").wait(TableName=table, WaiterConfig=_WAITER)
