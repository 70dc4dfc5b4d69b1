"""The ``redis`` tier kind for tiered-cache: Redis and Redis Cluster as a shared tier."""

from .client import RedisClient, RedisTarget, client_options, make_client, parse_url
from .plugin import PLUGIN, SHARED_TIER_KEY, build_redis_tier
from .settings import RedisTierSettings
from .tier import RedisTier

__all__ = [
    "PLUGIN",
    "SHARED_TIER_KEY",
    "RedisClient",
    "RedisTarget",
    "RedisTier",
    "RedisTierSettings",
    "build_redis_tier",
    "client_options",
    "make_client",
    "parse_url",
]
