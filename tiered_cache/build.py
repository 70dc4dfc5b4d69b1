"""Settings -> objects: find each kind's plugin and build the chain."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .breaker import guard
from .bus import Bus
from .chain import TieredCache
from .protection import Protection
from .registry import BUSES_GROUP, SOURCES_GROUP, TIERS_GROUP, BuildContext, find_plugin
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
    return TieredCache(
        tiers,
        source,
        namespace=settings.namespace,
        ttl=settings.ttl,
        negative_ttl=settings.negative_ttl,
        clock=clock,
        protection=Protection(**settings.protection.model_dump()),
        bus=bus,
        max_stale_when_disconnected=settings.bus.max_stale_when_disconnected,
        write_policy=settings.write_policy,
    )
