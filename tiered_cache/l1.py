"""The L1 hit: the one read path that does no I/O, shared by both faces of the chain.

:class:`~tiered_cache.TieredCache` and :class:`~tiered_cache.AsyncTieredCache` answer a hit in
their in-process tier with this same code -- a plain call even under asyncio, since an
``await`` there would cost more than the hit itself. Everything after a miss goes through
:mod:`tiered_cache.paths`.

A read first asks :attr:`L1Reader.l1_hit`, tier 0's plain-hit reader (:mod:`tiered_cache.hit`,
compiled with the core): a fresh value far enough from its expiry comes back from that one
call. Anything else, and a tier that offers no reader, goes through :meth:`L1Reader.lookup_l1`,
which decides as it always has (expiry, the XFetch draw, the miss). Neither takes the fence:
an invalidation removes the key from tier 0 before it returns, and a fill the fence refuses
never lands there or is removed again, so what tier 0 holds is a copy the rules allow.

A decorated function (:mod:`tiered_cache.decorator`: its C hit or its generated wrapper) does
not read :attr:`L1Reader.l1_hit` from the chain on every call (that attribute lookup cost a
third of the C hit): it registers with :meth:`L1Reader.follow_l1_hit`, and the chain sets its
``reader`` whenever :attr:`~L1Reader.l1_hit` changes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .forking import restart_after_fork
from .hit import NOT_FRESH, HitCount
from .keys import check_keys
from .metrics import CacheMetrics, LocalCounter
from .protection import REFRESH_DUE, Protection, xfetch_due
from .tier import MISSING, Entry, MissingType


class L1Tier(Protocol):
    """What the L1 read needs of tier 0's accessor."""

    def get_at_function(self) -> Callable[[str, float], Entry | MissingType] | None: ...

    def hit_reader(self, margin: float, hits: HitCount) -> Callable[[Any], Any] | None: ...

    def failed(self, exc: Exception) -> None: ...

    def miss(self) -> None: ...


class HitFollower(Protocol):
    """What follows :attr:`L1Reader.l1_hit` (:meth:`L1Reader.follow_l1_hit`)."""

    #: Kept equal to the chain's ``l1_hit``.
    reader: Callable[[Any], Any]


class HitFollowers:
    """The decorator's functions following a chain's ``l1_hit`` (:meth:`L1Reader.follow_l1_hit`),
    held weakly (a decorated function may be dropped), and the lock that keeps them current:
    held while ``l1_hit`` changes and while one registers, so that none misses a change.

    Args:
        current: the chain's ``l1_hit`` as it is now.
    """

    def __init__(self, current: Callable[[], Callable[[Any], Any]]) -> None:
        self._current = current
        self.lock = threading.Lock()
        self._followers: weakref.WeakSet[HitFollower] = weakref.WeakSet()
        restart_after_fork(self)

    def follow(self, follower: HitFollower) -> None:
        with self.lock:
            follower.reader = self._current()
            self._followers.add(follower)

    def tell(self) -> None:
        """Give every follower the current ``l1_hit`` (with :attr:`lock` held)."""
        reader = self._current()
        for follower in list(self._followers):
            follower.reader = reader

    def after_fork_in_child(self) -> None:
        """A new lock, and every follower told again: a thread of the parent changing
        ``l1_hit`` at the fork (the bus listener) held the lock, which would stay held in the
        child (its first decoration, or bus change, would wait for ever), and may have left
        the followers one reader behind."""
        self.lock = threading.Lock()
        self.tell()


class L1Reader:
    """The chain's lookup in tier 0 (a base of both chains; it holds no state of its own)."""

    _clock: Callable[[], float]
    #: Tier 0's accessor (set by the chain when it has tiers; only read after a lookup).
    _l1_tier: L1Tier
    _l1_hits: LocalCounter
    _l1_hit_cells: Any
    _plain_hits: HitCount
    _xfetch_window: float
    _beta: float
    _random: Callable[[], float]
    _l1_get_at: Callable[[str, float], Entry | MissingType] | None
    #: ``l1_hit(key)``: the value of a plain hit in tier 0, or ``NOT_FRESH`` (then ask
    #: :meth:`lookup_l1`). It changes while the bus is down: ``TieredCache.get`` reads it on
    #: every call; ``cache.get`` (``PlainGet``) and the decorator's functions are told
    #: (:meth:`follow_l1_hit`).
    l1_hit: Callable[[Any], Any]
    #: Told of every new :attr:`l1_hit`.
    _hit_followers: HitFollowers

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
        self._plain_hits = metrics.plain_l1_hits
        self._hit_followers = HitFollowers(lambda: self.l1_hit)
        self._use_l1(tiers, True)

    def follow_l1_hit(self, follower: HitFollower) -> None:
        """Set ``follower.reader`` to :attr:`l1_hit` now and whenever it changes, for as long
        as ``follower`` lives (held weakly)."""
        self._hit_followers.follow(follower)

    def lookup_l1(self, key: str) -> Any:
        """The fresh value in tier 0, ``MISSING``, or :data:`REFRESH_DUE` (for the decorator,
        which inlines ``get``), after :attr:`l1_hit` said ``NOT_FRESH``.

        One clock read, one tier call, a lock-free hit counter; no flight, no fence, no
        allocation. The XFetch draw is only made near the expiry.
        """
        if type(key) is not str:
            # Refused before the tier is asked: an object that hashes and compares like a
            # stored key would be answered by the tier's dict (a str subclass passes).
            check_keys((key,))
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
                try:  # LocalCounter.add, inlined
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

    @staticmethod
    def _no_l1_hit(key: Any) -> Any:
        """:attr:`l1_hit` when tier 0 offers no reader (or is not read)."""
        return NOT_FRESH

    def _use_l1(self, tiers: Sequence[L1Tier], enabled: bool) -> None:
        """Let :meth:`lookup_l1` and :attr:`l1_hit` read ``tiers[0]`` (or, ``enabled=False``,
        skip it)."""
        with self._hit_followers.lock:
            self._l1_get_at = None
            self.l1_hit = self._no_l1_hit
            if enabled and tiers:
                self._l1_tier = tiers[0]
                self._l1_get_at = tiers[0].get_at_function()
                reader = tiers[0].hit_reader(self._xfetch_window, self._plain_hits)
                if reader is not None:
                    self.l1_hit = reader
            self._hit_followers.tell()
