"""Registers the DynamoDB source as kind ``dynamodb``: the sync source (entry point
``tiered_cache.sources``) and, for the asyncio chain, the aiobotocore one
(``tiered_cache.async_sources``)."""

from __future__ import annotations

import importlib.util
import logging

from tiered_cache.async_tier import AsyncSource
from tiered_cache.registry import BuildContext, Plugin
from tiered_cache.tier import Source

from .settings import DynamoDBSourceSettings
from .source import DynamoDBSource

logger = logging.getLogger(__name__)


def build_dynamodb_source(settings: DynamoDBSourceSettings, context: BuildContext) -> Source:
    """A :class:`DynamoDBSource` with its own client; no request is made until the first call."""
    return DynamoDBSource.from_settings(settings)


def build_async_dynamodb_source(
    settings: DynamoDBSourceSettings, context: BuildContext
) -> AsyncSource | Source:
    """An :class:`~tiered_cache_dynamodb.AsyncDynamoDBSource` (its client is made on the first
    call); without aiobotocore, the sync source, which the asyncio chain runs in threads."""
    if importlib.util.find_spec("aiobotocore") is None:
        logger.warning(
            "the dynamodb source runs in threads under the asyncio chain: aiobotocore is not "
            "installed (pip install 'tiered-cache-dynamodb[async]')"
        )
        return DynamoDBSource.from_settings(settings)
    from .async_source import AsyncDynamoDBSource

    return AsyncDynamoDBSource.from_settings(settings)


PLUGIN: Plugin[Source] = Plugin("dynamodb", DynamoDBSourceSettings, build_dynamodb_source)
ASYNC_PLUGIN: Plugin[AsyncSource | Source] = Plugin(
    "dynamodb", DynamoDBSourceSettings, build_async_dynamodb_source
)
