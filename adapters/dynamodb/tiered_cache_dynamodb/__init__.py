"""A DynamoDB table as the source of truth behind a tiered-cache chain (kind ``dynamodb``)."""

from __future__ import annotations

from .errors import (
    BatchLoadError,
    BatchThrottledError,
    InvalidKeyError,
    TableConfigError,
    TableNotFoundError,
)
from .keys import KeyCodec
from .plugin import PLUGIN, build_dynamodb_source
from .settings import DynamoDBSourceSettings
from .source import THROTTLING_CODES, DynamoDBSource, make_client
from .tables import create_table, delete_table

__all__ = [
    "PLUGIN",
    "THROTTLING_CODES",
    "BatchLoadError",
    "BatchThrottledError",
    "DynamoDBSource",
    "DynamoDBSourceSettings",
    "InvalidKeyError",
    "KeyCodec",
    "TableConfigError",
    "TableNotFoundError",
    "build_dynamodb_source",
    "create_table",
    "delete_table",
    "make_client",
]
