"""The ``redis`` tier kind for tiered-cache: Redis and Redis Cluster as a shared tier."""

from .async_bus import AsyncRedisBus
from .async_plugin import (
    ASYNC_BUS_PLUGIN,
    ASYNC_PLUGIN,
    build_async_redis_bus,
    build_async_redis_tier,
)
from .async_tier import AsyncRedisClient, AsyncRedisTier, make_async_client
from .client import RedisClient, RedisTarget, client_options, make_client, parse_url
from .plugin import PLUGIN, SHARED_TIER_KEY, build_redis_tier
from .settings import RedisTierSettings
from .tier import RedisTier

__all__ = [
    "ASYNC_BUS_PLUGIN",
    "ASYNC_PLUGIN",
    "PLUGIN",
    "SHARED_TIER_KEY",
    "AsyncRedisBus",
    "AsyncRedisClient",
    "AsyncRedisTier",
    "RedisClient",
    "RedisTarget",
    "RedisTier",
    "RedisTierSettings",
    "build_async_redis_bus",
    "build_async_redis_tier",
    "build_redis_tier",
    "client_options",
    "make_async_client",
    "make_client",
    "parse_url",
]
