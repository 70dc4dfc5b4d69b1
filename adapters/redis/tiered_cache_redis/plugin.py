"""Registers the Redis tier as kind ``redis`` (entry point ``tiered_cache.tiers``)."""

from __future__ import annotations

from tiered_cache.registry import BuildContext, Plugin
from tiered_cache.tier import Tier

from .client import RedisClient, make_client, parse_url
from .settings import RedisTierSettings
from .tier import RedisTier

#: Key of the chain's first Redis tier in ``BuildContext.shared``: leases and the invalidation
#: bus use its ``.client`` rather than opening another pool.
SHARED_TIER_KEY = "redis.tier"


def build_redis_tier(settings: RedisTierSettings, context: BuildContext) -> Tier:
    """A :class:`RedisTier` from its settings; the chain wraps it in its circuit breaker."""
    target = parse_url(settings.url, cluster=settings.cluster)

    def connect() -> RedisClient:
        return make_client(
            settings.url,
            cluster=settings.cluster,
            timeout=settings.timeout,
            connect_timeout=settings.connect_timeout,
            pool_size=settings.pool_size,
        )

    # A single server's client connects lazily by itself; a cluster client connects when made,
    # so it is made on first use: a cluster that is down at start-up fails calls, not the start.
    tier = RedisTier(
        None if target.cluster else connect(),
        connect=connect if target.cluster else None,
        name=settings.name or "redis",
        namespace=settings.namespace or context.namespace,
        ttl=settings.ttl,
        ttl_jitter=settings.ttl_jitter,
        codec=settings.codec,
        clock=context.clock,
    )
    context.shared.setdefault(SHARED_TIER_KEY, tier)
    return tier


PLUGIN: Plugin[Tier] = Plugin("redis", RedisTierSettings, build_redis_tier)
