"""A DynamoDB table as the source of truth behind a tiered-cache chain (kind ``dynamodb``)."""

from __future__ import annotations

from .async_source import AsyncDynamoDBSource
from .errors import (
    BatchLoadError,
    BatchThrottledError,
    InvalidKeyError,
    TableConfigError,
    TableNotFoundError,
)
from .keys import KeyCodec
from .plugin import ASYNC_PLUGIN, PLUGIN, build_async_dynamodb_source, build_dynamodb_source
from .settings import DynamoDBSourceSettings
from .source import DynamoDBSource, make_client
from .table_steps import THROTTLING_CODES
from .tables import create_table, delete_table

__all__ = [
    "ASYNC_PLUGIN",
    "PLUGIN",
    "THROTTLING_CODES",
    "AsyncDynamoDBSource",
    "BatchLoadError",
    "BatchThrottledError",
    "DynamoDBSource",
    "DynamoDBSourceSettings",
    "InvalidKeyError",
    "KeyCodec",
    "TableConfigError",
    "TableNotFoundError",
    "build_async_dynamodb_source",
    "build_dynamodb_source",
    "create_table",
    "delete_table",
    "make_client",
]
