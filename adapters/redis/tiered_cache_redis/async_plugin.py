"""Registers the asyncio Redis tier as kind ``redis`` in ``tiered_cache.async_tiers``: the
same settings as the sync kind, built on ``redis.asyncio`` for ``AsyncTieredCache``."""

from __future__ import annotations

from tiered_cache.registry import BuildContext, Plugin

from .async_tier import AsyncRedisClient, AsyncRedisTier, make_async_client
from .client import parse_url
from .plugin import SHARED_SETTINGS_KEY, client_options_of, tier_options_of
from .settings import RedisTierSettings


def build_async_redis_tier(settings: RedisTierSettings, context: BuildContext) -> AsyncRedisTier:
    """An :class:`AsyncRedisTier` from the ``redis`` kind's settings (it connects on first
    use); the chain wraps it in its circuit breaker."""
    parse_url(settings.url, cluster=settings.cluster)  # a bad URL fails the build, not a read

    def connect() -> AsyncRedisClient:
        return make_async_client(settings.url, **client_options_of(settings))

    tier = AsyncRedisTier(connect=connect, **tier_options_of(settings, context))
    # The bus (whose URL defaults to the first Redis tier's) reads the settings from here.
    context.shared.setdefault(SHARED_SETTINGS_KEY, settings)
    return tier


ASYNC_PLUGIN: Plugin[AsyncRedisTier] = Plugin("redis", RedisTierSettings, build_async_redis_tier)
