"""The chain's access to its tiers: calls that degrade instead of failing, fills, counters.

:class:`ChainTiers` is the first layer of :class:`tiered_cache.TieredCache`: every call to a
tier goes through here, so a tier that fails is skipped with a warning and a counter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from .errors import CodecError, TierUnavailable
from .logs import fields, tier_logger
from .metrics import CacheMetrics
from .tier import MISSING, Entry, MissingType, Tier

#: How often (seconds of the chain's clock) a failing tier is logged again.
WARNING_INTERVAL = 10.0


class ChainTiers:
    """The tiers of a chain, and the calls to them that never raise (but for CodecError)."""

    def __init__(self, tiers: Sequence[Tier], clock: Callable[[], float]) -> None:
        self._tiers = list(tiers)
        self._clock = clock
        self._metrics = CacheMetrics([tier.name for tier in self._tiers])
        self._last_warning: dict[int, float] = {}
        #: In-process tiers: the ones the bus keeps coherent, bypassed while it is down.
        self._local = frozenset(
            index for index, tier in enumerate(self._tiers) if getattr(tier, "local", False)
        )
        #: Tiers not used right now (the local ones, while the bus is disconnected).
        self._bypassed: frozenset[int] = frozenset()
        #: Tiers whose fills are kept at most ``_bounded_for`` seconds (the local ones, while
        #: the bus is disconnected and a staleness bound is set).
        self._bounded: frozenset[int] = frozenset()
        self._bounded_for = 0.0
        self._bus_down = False

    def _tier_get(
        self, index: int, tier: Tier, key: str, *, count: bool = True
    ) -> Entry | MissingType:
        """``tier.get(key)``; a failure is a miss. ``count=False``: a second look at a key the
        caller has just counted, which neither the chain's metrics nor the tier's eviction
        policy (through :meth:`PeekableTier.peek`, when the tier has it) see as a read."""
        try:
            peek = None if count else getattr(tier, "peek", None)
            entry = tier.get(key) if peek is None else peek(key)
        except Exception as exc:
            self._tier_failed(index, exc)
            return MISSING
        if count and entry is MISSING:
            self._metrics.miss(index)
        return entry

    def _tier_get_many(
        self, index: int, tier: Tier, keys: Sequence[str], now: float, stale: dict[str, Entry]
    ) -> dict[str, Entry]:
        """The fresh entries among ``keys``; stale ones still servable go into ``stale``."""
        try:
            entries = tier.get_many(keys)
        except Exception as exc:
            self._tier_failed(index, exc)
            return {}
        fresh: dict[str, Entry] = {}
        for key, entry in entries.items():
            if now < entry.soft_expiry:
                fresh[key] = entry
            elif now < entry.hard_expiry:
                stale.setdefault(key, entry)
        self._metrics.hit(index, len(fresh))
        self._metrics.miss(index, len(keys) - len(fresh))
        return fresh

    def _fill(self, key: str, entry: Entry, indexes: range) -> None:
        # Deepest first: if a shared tier refuses the value (CodecError), no faster tier
        # holds a copy the others could never see.
        for index in reversed(indexes):
            if index in self._bypassed:
                continue
            try:
                kept = self._capped(entry) if index in self._bounded else entry
                self._tiers[index].set(key, kept)
            except CodecError:
                raise
            except Exception as exc:
                self._tier_failed(index, exc)
            else:
                self._metrics.fill(index)

    def _fill_many(self, entries: Mapping[str, Entry], *, upto: int, start: int = 0) -> None:
        """Fill tiers ``start`` to ``upto - 1`` with ``entries``, deepest first (see _fill)."""
        if not entries:
            return
        for index in range(upto - 1, start - 1, -1):
            if index in self._bypassed:
                continue
            try:
                if index in self._bounded:
                    self._tiers[index].set_many({k: self._capped(e) for k, e in entries.items()})
                else:
                    self._tiers[index].set_many(entries)
            except CodecError:
                raise
            except Exception as exc:
                self._tier_failed(index, exc)
            else:
                self._metrics.fill(index, len(entries))

    def _capped(self, entry: Entry) -> Entry:
        """``entry`` kept no longer than the staleness bound from now (bus down)."""
        until = self._clock() + self._bounded_for
        if entry.hard_expiry <= until:
            return entry
        return replace(entry, soft_expiry=min(entry.soft_expiry, until), hard_expiry=until)

    def _tier_failed(self, index: int, exc: Exception) -> None:
        if isinstance(exc, TierUnavailable):
            self._metrics.skip(index)
        else:
            self._metrics.error(index)
        now = self._clock()
        last = self._last_warning.get(index)
        if last is None or now - last >= WARNING_INTERVAL:
            self._last_warning[index] = now
            name = self._tiers[index].name
            tier_logger(name).warning(
                "tier %r failed (%s: %s); reading through to the next tier",
                name,
                type(exc).__name__,
                exc,
                extra=fields("tier_failed", tier=name),
            )

    def _delete_local(self, keys: Sequence[str]) -> None:
        for index in self._local:
            try:
                self._tiers[index].delete_many(keys)
            except Exception as exc:
                self._tier_failed(index, exc)

    def _delete_prefix(self, index: int, tier: Tier, prefix: str) -> None:
        try:
            delete_prefix = getattr(tier, "delete_prefix", None)
            if callable(delete_prefix):
                delete_prefix(prefix)
            else:
                tier.clear()
        except Exception as exc:
            self._tier_failed(index, exc)
