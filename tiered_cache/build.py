"""Settings -> objects: find each kind's plugin and build the chain."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .async_breaker import guard_async
from .async_chain import AsyncTieredCache
from .async_tier import AsyncSource, AsyncTier
from .breaker import guard
from .bus import Bus
from .chain import TieredCache
from .registry import (
    ASYNC_BUSES_GROUP,
    ASYNC_SOURCES_GROUP,
    ASYNC_TIERS_GROUP,
    BUSES_GROUP,
    SOURCES_GROUP,
    TIERS_GROUP,
    BuildContext,
    async_plugin,
    find_plugin,
)
from .settings import CacheSettings, TierSettings
from .tier import Source, Tier


def build_tier(settings: TierSettings, context: BuildContext) -> Tier:
    """One tier from its settings, wrapped in a circuit breaker when its settings ask."""
    plugin = find_plugin(settings.kind, group=TIERS_GROUP)
    tier: Tier = plugin.build(settings, context)
    if settings.breaker.enabled:
        tier = guard(tier, settings.breaker, clock=context.clock)
    return tier


def build_cache(settings: CacheSettings, *, clock: Callable[[], float] = time.time) -> TieredCache:
    """A :class:`TieredCache` from validated settings; tiers built so far are closed if a
    later one fails."""
    shared: dict[str, Any] = {}
    tiers: list[Tier] = []
    source: Source | None = None
    bus: Bus | None = None
    try:
        for index, tier_settings in enumerate(settings.tiers):
            context = BuildContext(settings.namespace, clock, index, shared)
            tiers.append(build_tier(tier_settings, context))
        if settings.source is not None:
            plugin = find_plugin(settings.source.kind, group=SOURCES_GROUP)
            source = plugin.build(
                settings.source, BuildContext(settings.namespace, clock, -1, shared)
            )
        if settings.bus.kind != "off":
            plugin = find_plugin(settings.bus.kind, group=BUSES_GROUP)
            bus = plugin.build(settings.bus, BuildContext(settings.namespace, clock, -1, shared))
    except BaseException:
        for tier in tiers:
            tier.close()
        if source is not None:
            source.close()
        raise
    return TieredCache(tiers, source, bus=bus, **chain_options(settings, clock))


def chain_options(settings: CacheSettings, clock: Callable[[], float]) -> dict[str, Any]:
    """The keyword arguments both chains take from the settings (all but parts and bus)."""
    return {
        "namespace": settings.namespace,
        "ttl": settings.ttl,
        "negative_ttl": settings.negative_ttl,
        "clock": clock,
        "protection": settings.protection,
        "max_stale_when_disconnected": settings.bus.max_stale_when_disconnected,
        "bus_breaker": settings.bus.breaker,
        "write_policy": settings.write_policy,
    }


def build_async_cache(
    settings: CacheSettings, *, clock: Callable[[], float] = time.time
) -> AsyncTieredCache:
    """An :class:`AsyncTieredCache` from the same settings as :func:`build_cache`: each kind
    is built by its asyncio plugin when its adapter has one, else by its sync plugin (the
    chain then runs it in threads and warns). Nothing is connected here: async clients
    connect on first use, so nothing needs closing if a later part fails to build."""
    shared: dict[str, Any] = {}
    tiers: list[Tier | AsyncTier] = []
    for index, tier_settings in enumerate(settings.tiers):
        context = BuildContext(settings.namespace, clock, index, shared)
        plugin = async_plugin(tier_settings.kind, ASYNC_TIERS_GROUP)
        if plugin is None:
            tiers.append(build_tier(tier_settings, context))
            continue
        tier = plugin.build(tier_settings, context)
        if tier_settings.breaker.enabled:  # the breaker awaited: the tier stays async
            tier = guard_async(tier, tier_settings.breaker, clock=context.clock)
        tiers.append(tier)
    source: Source | AsyncSource | None = None
    if settings.source is not None:
        context = BuildContext(settings.namespace, clock, -1, shared)
        kind = settings.source.kind
        plugin = async_plugin(kind, ASYNC_SOURCES_GROUP) or find_plugin(kind, group=SOURCES_GROUP)
        source = plugin.build(settings.source, context)
    bus: Bus | None = None
    if settings.bus.kind != "off":
        context = BuildContext(settings.namespace, clock, -1, shared)
        kind = settings.bus.kind
        plugin = async_plugin(kind, ASYNC_BUSES_GROUP) or find_plugin(kind, group=BUSES_GROUP)
        bus = plugin.build(settings.bus, context)
    return AsyncTieredCache(tiers, source, bus=bus, **chain_options(settings, clock))
