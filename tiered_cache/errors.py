"""Exceptions raised by tiered-cache; all derive from :class:`TieredCacheError`."""

from __future__ import annotations


class TieredCacheError(Exception):
    """Base class of every error raised by tiered-cache."""


class ConfigError(TieredCacheError, ValueError):
    """The configuration is wrong; the message names the field path and the problem."""


class CodecError(TieredCacheError, TypeError):
    """A value cannot be encoded for (or decoded from) a tier; nothing was written."""


class TierUnavailable(TieredCacheError):
    """A tier cannot be used right now (connection lost, timeout, circuit open)."""


class InvalidationIncomplete(TieredCacheError):
    """A strict invalidation did not reach every shared tier or the bus; the message says
    which. The steps that could be taken were taken: retrying is safe."""


class SourceError(TieredCacheError):
    """The source of truth failed to answer."""


class SourceThrottled(SourceError):
    """The source refused the request for lack of capacity, after its retries were spent."""


class LoadTimeout(SourceError):
    """A load took longer than the hard timeout (it goes on in the background)."""


class KeyTemplateError(TieredCacheError, ValueError):
    """A cache key does not fit a key template, or a template does not fit a function."""
