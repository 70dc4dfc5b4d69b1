"""The L1 hit: the one read path that does no I/O, shared by both faces of the chain.

:class:`~tiered_cache.TieredCache` and :class:`~tiered_cache.AsyncTieredCache` answer a hit in
their in-process tier with this same code -- a plain call even under asyncio, since an
``await`` there would cost more than the hit itself. Everything after a miss goes through
:mod:`tiered_cache.paths`.

A read first asks :attr:`L1Reader.l1_hit`, tier 0's plain-hit reader (:mod:`tiered_cache.hit`,
compiled with the core): a fresh value far enough from its expiry comes back from that one
call. Anything else, and a tier that offers no reader, goes through :attr:`L1Reader.lookup_l1`,
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

from .closed import Paths, is_closed
from .forking import restart_after_fork
from .hit import NOT_FRESH, HitCount, L1Lookup
from .metrics import CacheMetrics
from .protection import Protection
from .read_state import ReadState
from .tier import Entry, MissingType


class L1Tier(Protocol):
    """What the L1 read needs of tier 0's accessor."""

    def get_at_function(self) -> Callable[[str, float], Entry | MissingType] | None: ...

    def hit_reader(self, margin: float, hits: HitCount) -> Callable[[Any], Any] | None: ...

    def failed(self, exc: Exception) -> None: ...

    def miss(self) -> None: ...

    def when_owing(self, relook: Callable[[], None]) -> None: ...


class HitFollower(Protocol):
    """What follows :attr:`L1Reader.l1_hit` (:meth:`L1Reader.follow_l1_hit`)."""

    #: Kept equal to the chain's ``l1_hit``.
    reader: Callable[[Any], Any]


class HitFollowers:
    """What follows a chain's ``l1_hit`` (:meth:`L1Reader.follow_l1_hit`): the decorator's
    functions, held weakly (a decorated function may be dropped), and ``cache.get`` (the
    chain's :class:`~tiered_cache.hit.PlainGet`, held strongly: the chain owns it); and the
    lock that keeps them current: held while ``l1_hit`` changes and while one registers, so
    that none misses a change, nor is told an ``l1_hit`` the close has switched off since.

    Args:
        current: the chain's ``l1_hit`` as it is now.
    """

    def __init__(self, current: Callable[[], Callable[[Any], Any]]) -> None:
        self._current = current
        self.lock = threading.Lock()
        self._followers: weakref.WeakSet[HitFollower] = weakref.WeakSet()
        #: Followers the chain owns (``cache.get``), which need no weak reference.
        self._kept: list[HitFollower] = []
        restart_after_fork(self)

    def follow(self, follower: HitFollower, *, keep: bool = False) -> None:
        with self.lock:
            follower.reader = self._current()
            if keep:
                self._kept.append(follower)
            else:
                self._followers.add(follower)

    def tell(self) -> None:
        """Give every follower the current ``l1_hit`` (with :attr:`lock` held)."""
        reader = self._current()
        for follower in [*self._kept, *self._followers]:
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
    _plain_hits: HitCount
    _xfetch_window: float
    #: ``lookup_l1(key)``: the fresh value in tier 0, ``MISSING``, or :data:`REFRESH_DUE`
    #: (for the decorator, which inlines ``get``), after :attr:`l1_hit` said ``NOT_FRESH``
    #: (:class:`~tiered_cache.hit.L1Lookup`, compiled with the core: no Python frame).
    lookup_l1: L1Lookup
    #: ``l1_hit(key)``: the value of a plain hit in tier 0, or ``NOT_FRESH`` (then ask
    #: :meth:`lookup_l1`). It changes while the bus is down: ``TieredCache.get`` reads it on
    #: every call; ``cache.get`` (``PlainGet``) and the decorator's functions are told
    #: (:meth:`follow_l1_hit`).
    l1_hit: Callable[[Any], Any]
    #: Told of every new :attr:`l1_hit`.
    _hit_followers: HitFollowers
    #: The chain's paths: a :class:`~tiered_cache.closed.ClosedPaths` once it is closed.
    _paths: Paths

    def _setup_l1(
        self, metrics: CacheMetrics, protection: Protection, rng: Callable[[], float]
    ) -> None:
        """Take what the hit path reads into attributes of the chain (one lookup each); the
        chain then lets it read tier 0 (:meth:`_use_l1`)."""
        self._xfetch_window = protection.xfetch_window_factor
        self._plain_hits = metrics.plain_l1_hits
        self.lookup_l1 = L1Lookup(
            self._clock,
            metrics.l1_hits,
            self._xfetch_window,
            protection.early_refresh_beta,
            rng,
        )
        self.l1_hit = self._no_l1_hit  # tier 0 is read once the chain says so (_use_l1)
        self._hit_followers = HitFollowers(lambda: self.l1_hit)

    def follow_l1_hit(self, follower: HitFollower, *, keep: bool = False) -> None:
        """Set ``follower.reader`` to :attr:`l1_hit` now and whenever it changes, for as long
        as ``follower`` lives (held weakly), or for good with ``keep`` (the chain's own
        ``cache.get``). Told under the lock the switch and the close take
        (:meth:`_use_l1`): a follower told after that lock was let go (``cache.get`` was)
        could store a reader the close had switched off meanwhile."""
        self._hit_followers.follow(follower, keep=keep)

    @staticmethod
    def _no_l1_hit(key: Any) -> Any:
        """:attr:`l1_hit` when tier 0 offers no reader (or is not read)."""
        return NOT_FRESH

    def _use_l1(self, tiers: Sequence[L1Tier], unread: ReadState | None) -> None:
        """Let :attr:`lookup_l1` and :attr:`l1_hit` read ``tiers[0]`` (``unread`` None), or
        skip it: a lookup then returns ``unread``, the bus as the read that skips it takes it
        (:meth:`~tiered_cache.paths.ChainPaths.set_bus_connected`), set before the lookup
        stops reading (a read that found it off carries the state that turned it off).
        Never on a closed chain: the rule's one home, every switch passes here.

        The bus's listener decides on the chain's paths, then switches here: one that had
        decided on the open paths as the chain closed switched the lookup on again after the
        close had switched it off (tests/test_close_races.py). Asked under the lock the close's
        own switch takes, after the chain is closed: a switch either comes before the close's,
        which turns the lookup off after it, or sees the chain closed."""
        lookup = self.lookup_l1
        with self._hit_followers.lock:
            enabled = unread is None and not is_closed(self._paths)
            if unread is not None:
                lookup.unread = unread
            # ``unread`` is kept when switched on, never reset: a lookup reads ``get_at``,
            # then ``unread``; reset after the switch, one that found ``get_at`` None before
            # it and ``unread`` after it would take the bus as connected without reading
            # memory (counted by no one). Kept, it is read only while ``get_at`` is None: on
            # an open chain, after it was set here (or never set: no tier 0 the lookup reads,
            # which no outage switches off); tests/test_bus_flap_counts.py, the reads after
            # the bus came back.
            if enabled and tiers:
                # Not through None: a lookup in between would take the bus as the state
                # of the last outage.
                lookup.tier = tiers[0]
                self._read_tier0(tiers[0])
            else:
                lookup.get_at = None
                self.l1_hit = self._no_l1_hit
            self._hit_followers.tell()

    def _read_tier0(self, tier: L1Tier) -> None:
        """The lookup's and the plain hit's reads of ``tier`` (tier 0) as its accessor gives
        them now (with the lock held): directly, or through what it owes
        (:meth:`_relook_l1`)."""
        self.lookup_l1.get_at = tier.get_at_function()
        reader = tier.hit_reader(self._xfetch_window, self._plain_hits)
        self.l1_hit = self._no_l1_hit if reader is None else reader

    def _follow_l1_debts(self, tiers: Sequence[L1Tier]) -> None:
        """Tier 0's reads follow its debts: an in-process tier 0 whose delete failed owes it
        (``TierAccessor._quietly``), and is read only through the payment until it is made;
        the one-call reads, which pay nothing, come back once it is."""
        if tiers:
            tier = tiers[0]
            tier.when_owing(lambda: self._relook_l1(tier))

    def _relook_l1(self, tier: L1Tier) -> None:
        """Tier 0 began to owe deletes, or paid them: read it as its accessor now says, if
        the lookup reads it at all (not while the bus is down, nor once the chain is closed:
        the switch that turns it on again asks the accessor then). Under the switch's lock,
        so a switch of the bus comes wholly before or after."""
        with self._hit_followers.lock:
            if self.lookup_l1.get_at is None or is_closed(self._paths):
                return
            self._read_tier0(tier)
            self._hit_followers.tell()
