"""Errors of the DynamoDB source; each derives from one of tiered-cache's own errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tiered_cache.errors import (
    ConfigError,
    KeyTemplateError,
    PartialLoadError,
    SourceError,
    SourceThrottled,
)


class InvalidKeyError(KeyTemplateError):
    """A cache key (or an item's key) cannot be a DynamoDB key: empty, wrong type, too long."""


class TableConfigError(SourceError, ConfigError):
    """The table does not fit the settings (absent, other key schema).

    Both a :class:`SourceError` (the source cannot answer) and a :class:`ConfigError` (retrying
    will not help; the settings or the table must change).
    """


class TableNotFoundError(TableConfigError):
    """The table does not exist at the endpoint and region the settings name."""


class BatchLoadError(PartialLoadError):
    """A ``load_many`` could not read every key.

    Attributes:
        found: the items read before giving up (cache key -> value); the chain's ``get_many``
            serves and caches them (see :class:`~tiered_cache.PartialBatchError`).
        unprocessed: how many distinct keys were left unread.
    """

    def __init__(self, message: str, found: Mapping[str, Any], unprocessed: int) -> None:
        super().__init__(message, found, unprocessed)
        self.unprocessed = unprocessed


class BatchThrottledError(BatchLoadError, SourceThrottled):
    """A ``load_many`` left keys unread because the table's read capacity ran out."""
