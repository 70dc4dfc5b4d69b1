"""Registers the DynamoDB source as kind ``dynamodb`` (entry point ``tiered_cache.sources``)."""

from __future__ import annotations

from tiered_cache.registry import BuildContext, Plugin
from tiered_cache.tier import Source

from .settings import DynamoDBSourceSettings
from .source import DynamoDBSource


def build_dynamodb_source(settings: DynamoDBSourceSettings, context: BuildContext) -> Source:
    """A :class:`DynamoDBSource` with its own client; no request is made until the first call."""
    return DynamoDBSource.from_settings(settings)


PLUGIN: Plugin[Source] = Plugin("dynamodb", DynamoDBSourceSettings, build_dynamodb_source)
