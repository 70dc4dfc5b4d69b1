"""The L1 hit: the one read path that does no I/O, shared by both faces of the chain.

:class:`~tiered_cache.TieredCache` and :class:`~tiered_cache.AsyncTieredCache` answer a hit in
their in-process tier with this same code -- a plain call even under asyncio, since an
``await`` there would cost more than the hit itself. Everything after a miss goes through
:mod:`tiered_cache.paths`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .keys import check_keys
from .metrics import CacheMetrics, LocalCounter
from .protection import REFRESH_DUE, Protection, xfetch_due
from .tier import MISSING, Entry, MissingType


class L1Tier(Protocol):
    """What the L1 read needs of tier 0's accessor."""

    def get_at_function(self) -> Callable[[str, float], Entry | MissingType] | None: ...

    def failed(self, exc: Exception) -> None: ...

    def miss(self) -> None: ...


class L1Reader:
    """The chain's lookup in tier 0 (a base of both chains; it holds no state of its own)."""

    _clock: Callable[[], float]
    #: Tier 0's accessor (set by the chain when it has tiers; only read after a lookup).
    _l1_tier: L1Tier
    _l1_hits: LocalCounter
    _l1_hit_cells: Any
    _xfetch_window: float
    _beta: float
    _random: Callable[[], float]
    _l1_get_at: Callable[[str, float], Entry | MissingType] | None

    def _setup_l1(
        self,
        tiers: Sequence[L1Tier],
        metrics: CacheMetrics,
        protection: Protection,
        rng: Callable[[], float],
    ) -> None:
        """Take what the hit path reads into attributes of the chain (one lookup each)."""
        self._random = rng
        self._beta = protection.early_refresh_beta
        self._xfetch_window = protection.xfetch_window_factor
        self._l1_hits = metrics.l1_hits
        self._l1_hit_cells = self._l1_hits.cells
        self._use_l1(tiers, True)

    def lookup_l1(self, key: str) -> Any:
        """The fresh value in tier 0, ``MISSING``, or :data:`REFRESH_DUE` (for the decorator,
        which inlines ``get``).

        The path that matters most: one clock read, one tier call, a lock-free hit counter;
        no flight, no fence, no allocation. The XFetch draw is only made near the expiry.
        """
        get_at = self._l1_get_at
        if get_at is None:
            return MISSING
        now = self._clock()
        try:
            entry = get_at(key, now)
        except Exception as exc:
            check_keys((key,))  # a caller's mistake is not the tier's failure
            self._l1_tier.failed(exc)
            return MISSING
        if entry is not MISSING:
            soft = entry.soft_expiry
            if now < soft:
                try:  # LocalCounter.add, inlined: this is the hit path
                    self._l1_hit_cells.cell[0] += 1
                except AttributeError:
                    self._l1_hits.add()
                if now >= soft - entry.load_duration * self._xfetch_window and xfetch_due(
                    now, soft, entry.load_duration, self._beta, self._random()
                ):
                    return REFRESH_DUE
                return entry.value
        self._l1_tier.miss()
        return MISSING

    def _use_l1(self, tiers: Sequence[L1Tier], enabled: bool) -> None:
        """Let :meth:`lookup_l1` read ``tiers[0]`` (or, ``enabled=False``, skip it)."""
        self._l1_get_at = None
        if enabled and tiers:
            self._l1_tier = tiers[0]
            self._l1_get_at = tiers[0].get_at_function()
