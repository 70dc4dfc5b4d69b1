"""Registers the memory tier as kind ``memory``, the same way an adapter registers its kinds."""

from __future__ import annotations

from .memory import EvictionPolicy, LruPolicy, MemoryTier
from .policy import TinyLfuPolicy
from .registry import BuildContext, Plugin
from .settings import MemoryTierSettings
from .tier import Tier


def build_policy(settings: MemoryTierSettings, context: BuildContext) -> EvictionPolicy:
    """The eviction policy that ``settings.admission`` names, tuned by the other settings."""
    max_bytes = int(settings.max_bytes) if settings.max_bytes is not None else None
    if settings.admission == "always":
        return LruPolicy(settings.max_entries, max_bytes)
    return TinyLfuPolicy(
        settings.max_entries,
        max_bytes,
        window_fraction=settings.window_fraction,
        adaptive=settings.adaptive_window,
        sample_factor=settings.sample_factor,
        sketch_width=settings.sketch_width,
        doorkeeper=settings.doorkeeper,
        top_k=settings.top_k,
        hot_half_life=settings.hot_half_life,
        hot_ttl=settings.hot_ttl,
        clock=context.clock,
    )


def build_memory_tier(settings: MemoryTierSettings, context: BuildContext) -> Tier:
    """A :class:`MemoryTier` from its settings."""
    return MemoryTier(
        name=settings.name or "memory",
        policy=build_policy(settings, context),
        max_entries=settings.max_entries,
        max_bytes=settings.max_bytes,
        ttl=settings.ttl,
        ttl_jitter=settings.ttl_jitter,
        clock=context.clock,
        copy_on_read=settings.copy_on_read,
    )


PLUGIN: Plugin[Tier] = Plugin("memory", MemoryTierSettings, build_memory_tier)
