"""Stamping loaded values into entries (compiled with the core: once per miss and per set).

:class:`EntryMaker` is the chain's one rule for an entry's times: freshness from the TTLs
(the cache's, or the one passed to a read or a write), staleness from ``max_stale``, and the
negative TTL for a value the source does not have. Compiled (``tools/build_core.py``), it is a
C call that builds the compiled :class:`~tiered_cache.entry.Entry` directly; this source is the
reference (``TIERED_CORE_PURE=1``).
"""

from __future__ import annotations

from typing import Any

from .entry import NEVER, Entry
from .tier import MISSING
from .units import parse_duration

__all__ = ["EntryMaker"]


class EntryMaker:
    """Stamps values into entries: freshness from the TTLs, staleness from ``max_stale``."""

    def __init__(self, ttl: float | None, negative_ttl: float, max_stale: float) -> None:
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_stale = max_stale

    def __call__(self, value: Any, now: float, duration: float, ttl: float | str | None) -> Entry:
        if value is MISSING or value is None:
            lifetime: float | None = self._negative_ttl
            value = None
        elif ttl is not None:
            lifetime = parse_duration(ttl)
        else:
            lifetime = self._ttl
        if lifetime is None:
            soft = hard = NEVER
        else:
            soft = now + lifetime
            hard = soft + self._max_stale
        # Positional: value, loaded_at, soft_expiry, hard_expiry, load_duration (one per miss).
        return Entry(value, now, soft, hard, duration)
