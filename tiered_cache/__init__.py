"""tiered-cache: a chain of cache tiers in front of a slow or throttled source of truth."""

# First: decides whether the compiled core (if built and current) or its sources are imported.
from . import compiled as _compiled  # noqa: F401  # isort: skip
from .async_accessor import BlockingTierWarning
from .async_chain import AsyncTieredCache
from .async_tier import AsyncLeasingTier, AsyncSource, AsyncSourceBase, AsyncTier, AsyncTierBase
from .chain import TieredCache
from .decorator import (
    AsyncCachedFunction,
    BoundAsyncCachedFunction,
    BoundCachedFunction,
    CachedFunction,
)
from .errors import (
    ChainClosedError,
    CodecError,
    ConfigError,
    EventLoopConflict,
    InvalidationIncomplete,
    KeyTemplateError,
    KeyTooLong,
    LoadTimeout,
    PartialBatchError,
    PartialLoadError,
    RecursiveLoad,
    SourceError,
    SourceResting,
    SourceThrottled,
    TieredCacheError,
    TierUnavailable,
    UnencodableKey,
)
from .memory import MemoryTier
from .registry import BuildContext, Plugin
from .settings import CacheSettings, SourceSettings, TierSettings, load_settings
from .tier import MISSING, Entry, Missing, PeekableTier, Source, Tier, TierBase

__all__ = [
    "MISSING",
    "AsyncCachedFunction",
    "AsyncLeasingTier",
    "AsyncSource",
    "AsyncSourceBase",
    "AsyncTier",
    "AsyncTierBase",
    "AsyncTieredCache",
    "BlockingTierWarning",
    "BoundAsyncCachedFunction",
    "BoundCachedFunction",
    "BuildContext",
    "CacheSettings",
    "CachedFunction",
    "ChainClosedError",
    "CodecError",
    "ConfigError",
    "Entry",
    "EventLoopConflict",
    "InvalidationIncomplete",
    "KeyTemplateError",
    "KeyTooLong",
    "LoadTimeout",
    "MemoryTier",
    "Missing",
    "PartialBatchError",
    "PartialLoadError",
    "PeekableTier",
    "Plugin",
    "RecursiveLoad",
    "Source",
    "SourceError",
    "SourceResting",
    "SourceSettings",
    "SourceThrottled",
    "Tier",
    "TierBase",
    "TierSettings",
    "TierUnavailable",
    "TieredCache",
    "TieredCacheError",
    "UnencodableKey",
    "load_settings",
]
