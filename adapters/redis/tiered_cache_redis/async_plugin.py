"""Registers the asyncio Redis tier and bus as kind ``redis`` in ``tiered_cache.async_tiers``
and ``tiered_cache.async_buses``: the same settings as the sync kinds, built on
``redis.asyncio`` for ``AsyncTieredCache``."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.retry import Retry as SyncRetry

from tiered_cache.registry import BuildContext, Plugin

from .async_bus import AsyncRedisBus
from .async_tier import AsyncRedisClient, AsyncRedisTier, make_async_client
from .client import parse_url
from .plugin import (
    SHARED_SETTINGS_KEY,
    RedisBusSettings,
    build_bus_with,
    bus_clients,
    client_options_of,
    tier_options_of,
)
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


def build_async_redis_bus(settings: RedisBusSettings, context: BuildContext) -> AsyncRedisBus:
    """An :class:`AsyncRedisBus` from the ``redis`` bus settings (connections of its own;
    nothing connects before the chain's loop runs it)."""
    return build_bus_with(
        AsyncRedisBus,
        aioredis.Redis.from_url,
        Retry,
        settings,
        context,
        # It listens from a thread (async_bus.py): with a sync client.
        listen_with=bus_clients(redis.Redis.from_url, SyncRetry, settings, context),
    )


ASYNC_BUS_PLUGIN: Plugin[AsyncRedisBus] = Plugin("redis", RedisBusSettings, build_async_redis_bus)
