"""TieredCache: the public face of a chain of tiers; the read path and the write path.

The chain holds its parts (it inherits none): one :class:`~tiered_cache.accessor.TierAccessor`
per tier (capabilities, breaker, counters), the :class:`~tiered_cache.fence.Fence` (the only
owner of "no fill after an invalidation"), the :class:`~tiered_cache.loader.SourceLoader`
(source calls under protection) and the :class:`~tiered_cache.coherence.BusLink` (the other
processes). Calls go one way: chain -> bus link or loader -> fence -> accessor -> tier.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FunctionType, MethodType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from .accessor import TierAccessor
from .bus import Bus
from .closed import ClosedPaths, Paths, is_closed
from .closing import CloseOnce
from .coherence import DEFAULT_BUS_BREAKER, BusLink, publish_breaker
from .fence import Fence
from .hit import NOT_FRESH, PlainGet
from .keys import check_chain_labels, key_list
from .l1 import L1Reader
from .loader import BatchLoader, Loader, SourceLoader
from .logs import logger_for
from .metrics import CacheMetrics
from .not_data import NotData
from .paths import ChainPaths
from .protection import REFRESH_DUE, Protection
from .read_state import CONNECTED, ReadState
from .reporting import chain_stats, first_hot_keys
from .settings import check_chain_options
from .signal_frames import in_signal_handler
from .singleflight import Flight
from .stamp import CheckedTtl, EntryMaker, check_ttl
from .steps import run
from .tier import MISSING, Entry, Source, Tier
from .units import DurationLike

if TYPE_CHECKING:
    from .decorator import CachedFunction
    from .settings import BreakerSettings, CacheSettings

logger = logger_for("chain")

__all__ = ["BatchLoader", "Loader", "TieredCache"]

P = ParamSpec("P")
R = TypeVar("R")


class TieredCache(L1Reader, NotData):
    """A chain of tiers, fastest first, in front of an optional source of truth.

    A read walks the tiers in order. A hit in tier ``i`` fills tiers ``0..i-1``; a miss in
    every tier loads from the source (or the loader passed to :meth:`get`) once per key at a
    time in this process, and fills every tier. A tier that fails is skipped with a warning and
    a counter; the caller only sees an error when the load itself fails.

    Args:
        tiers: the tiers, fastest first.
        source: the system of record; may be omitted when every read passes a loader.
        namespace: keeps this cache's keys apart in shared tiers (used by the tiers' builders).
            It and each tier's ``name`` label the chain's series: one empty, or one UTF-8
            cannot encode, is refused here (``ValueError`` naming it), as the settings do.
        ttl: how long a loaded value stays fresh, in seconds (more than 0) or text such as
            ``"5m"``; ``None`` leaves it to the tiers.
        negative_ttl: how long a "not found" (``None``) is cached.
        clock: seconds; stamps entries and decides freshness. Wall-clock by default because
            entries are shared between processes through tiers such as Redis.
        protection: stale serving, early refresh, load timeouts and leases (see
            :class:`~tiered_cache.protection.Protection`; its defaults suit a throttled source),
            or its table as a config file gives it (``{"hard_timeout": "100ms"}``).
        sleep: how to wait between looks while another process holds a key's lease.
        rng: uniform numbers in [0, 1) for the early-refresh draw.
        background: runs a background refresh; by default a small thread pool. Tests pass a
            list's ``append`` to decide themselves when refreshes run.
        bus: announces writes and invalidations to the other processes and applies theirs to
            this chain's in-process tiers (tiers with ``local = True``).
        max_stale_when_disconnected: while the bus is down, in-process tiers serve only what
            was filled during the outage, for at most this many seconds; 0: not at all.
        write_policy: ``"through"``: :meth:`set` writes the source, then every tier;
            ``"around"``: it writes the source, then invalidates every tier.
        bus_breaker: the circuit breaker around the bus's publish (``bus.breaker``): after a
            failed publish, announcements are skipped for its cool-down (the other processes
            see the gap and clear their memory); None: every announcement is tried.

    The arguments a config file also gives (``ttl``, ``negative_ttl``, ``write_policy``,
    ``max_stale_when_disconnected``, and ``protection``, the settings' own model) are checked
    here by the settings' rules: one they refuse raises :class:`~tiered_cache.ConfigError`
    naming it (``ttl: a ttl must be more than 0 ...``), never echoing the value.
    """

    def __init__(
        self,
        tiers: Sequence[Tier],
        source: Source | None = None,
        *,
        namespace: str = "default",
        ttl: DurationLike | None = None,
        negative_ttl: DurationLike = 30.0,
        clock: Callable[[], float] = time.time,
        protection: Protection | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        background: Callable[[Callable[[], None]], object] | None = None,
        bus: Bus | None = None,
        max_stale_when_disconnected: DurationLike = 1.0,
        write_policy: Literal["through", "around"] = "through",
        bus_breaker: BreakerSettings | None = DEFAULT_BUS_BREAKER,
    ) -> None:
        self.namespace = check_chain_labels(namespace, [tier.name for tier in tiers])
        ttl, negative_ttl, write_policy, max_stale_when_disconnected, protection = (
            check_chain_options(
                ttl, negative_ttl, write_policy, max_stale_when_disconnected, protection
            )
        )
        self._given = tuple(tiers)
        self._source = source
        #: The close, run once on a thread of its own (:meth:`close`).
        self._closing = CloseOnce(self._close_parts)
        self._clock = clock
        self._protection = protection or Protection()
        self._metrics = CacheMetrics([tier.name for tier in tiers])
        self._tiers = [
            TierAccessor(index, tier, self._metrics, clock) for index, tier in enumerate(tiers)
        ]
        self._fence = Fence(self._tiers, self._metrics, leases=self._protection.lease != "off")
        #: The fence's rule for joining a flight, bound once (every miss passes it).
        self._may_join = self._fence.may_join
        self._entry = EntryMaker(ttl, negative_ttl, self._protection.max_stale)
        self._loader = SourceLoader(
            self._tiers,
            source,
            fence=self._fence,
            metrics=self._metrics,
            make_entry=self._entry,
            clock=clock,
            sleep=sleep,
            protection=self._protection,
            background=background,
        )
        self._bus_link: BusLink | None = None
        #: Every path after the L1 lookup; a :class:`ClosedPaths` once the chain is closed.
        paths = ChainPaths(
            self._tiers,
            fence=self._fence,
            metrics=self._metrics,
            protection=self._protection,
            make_entry=self._entry,
            clock=clock,
            loader=self._loader,
            store=self._store if source is not None else None,
            announce=self._announce if bus is not None else None,
            write_policy=write_policy,
        )
        self._paths: Paths = paths
        for tier in self._tiers:  # a delete a shared tier owes is announced again once made
            tier.pay_with(paths.paid)
        #: What a miss that joins another's load counts (bound once: every join calls it).
        self._joined = paths.joined
        #: What a miss runs inside its flight: the read down the tiers in plain calls.
        self._read: Callable[[Flight, str, Loader | None, CheckedTtl | None, ReadState], Any] = (
            self._paths.read_through_plain
        )
        #: What a miss that finds a background refresh leading its key's flight runs first,
        #: bound once (SingleFlight.run's ``beside``).
        self._beside = self._read_beside
        #: A chain of one in-process tier (holding any str key: set_alone checks only a key's
        #: type) and no bus: a set runs in plain calls.
        alone = (
            bus is None
            and len(self._tiers) == 1
            and self._tiers[0].local
            and not self._tiers[0].utf8_keys
        )
        # ``cache.set`` likewise, when the source (if any) is written through: an instance
        # attribute shadows the method, as for ``get`` below (a subclass that defines its own
        # ``set`` keeps it).
        writes_alone = alone and (source is None or write_policy == "through")
        if writes_alone and type(self).set is TieredCache.set:
            vars(self)["set"] = MethodType(_SET_ALONE, self._paths)
        # ``cache.get`` is answered without a Python frame on a plain hit: an instance
        # attribute shadows the method (a function is a non-data descriptor). A subclass that
        # defines its own ``get`` keeps it.
        self._setup_l1(self._metrics, self._protection, rng)
        self._plain_get = PlainGet(self._no_l1_hit, self.lookup_l1, self.get_after_l1)
        self.follow_l1_hit(self._plain_get, keep=True)
        if type(self).get is TieredCache.get:
            vars(self)["get"] = self._plain_get
        self._use_l1(self._tiers, None)
        self._follow_l1_debts(self._tiers)
        self._disconnected_bound = max_stale_when_disconnected
        #: The bus is down (in-process tiers are bypassed or bounded).
        if bus is not None:
            self._bus_link = BusLink(
                bus,
                self._fence,
                self._metrics,
                self._set_bus_connected,
                breaker=publish_breaker(bus_breaker, clock),
            )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        path: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **overrides: Any,
    ) -> TieredCache:
        """Build from the ``[tiered_cache]`` table of a TOML file, with ``TIERED_CACHE_*``
        environment variables and ``overrides`` taking precedence. Raises ``ConfigError``.

        Args:
            path: the TOML file; ``None`` builds from the environment (and ``overrides``) alone.
            clock: wall-clock seconds, for expiries (tests pass a fake clock).
            **overrides: fields of the ``[tiered_cache]`` table, highest priority of all:
                ``TieredCache.from_config("tiered_cache.toml", namespace="test", ttl="5s")``.
                A wrong name or value raises ``ConfigError`` naming the field.
        """
        from .build import build_cache
        from .settings import load_settings

        return build_cache(load_settings(path, **overrides), clock=clock)

    @classmethod
    def from_settings(
        cls, settings: CacheSettings, *, clock: Callable[[], float] = time.time
    ) -> TieredCache:
        """Build from a settings object."""
        from .build import build_cache

        return build_cache(settings, clock=clock)

    # -- reads --------------------------------------------------------------------------------

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """The tiers, fastest first (as given)."""
        return self._given

    @property
    def closed(self) -> bool:
        """Whether the chain was closed (every call but reporting then raises
        :class:`~tiered_cache.ChainClosedError`)."""
        return is_closed(self._paths)

    @property
    def source(self) -> Source | None:
        """The source of truth, if the chain has one."""
        return self._source

    def get(
        self, key: str, loader: Loader | None = None, *, ttl: DurationLike | None = None
    ) -> Any:
        """The value for ``key``, read through the tiers down to the source.

        Args:
            loader: called (with no arguments) instead of the source on a miss in every tier.
                Its return value is cached; ``None`` is cached for ``negative_ttl``.
            ttl: how long the loaded value stays fresh, overriding the cache's ``ttl``
                (:class:`ValueError` before anything is read if it is not a duration more
                than 0, the settings' rule for a ttl).

        Returns ``None`` when the source has no such item.
        """
        # An instance answers ``get`` through hit.PlainGet (see __init__), which does this.
        value = self.l1_hit(key)  # one call for a plain hit (L1Reader.l1_hit)
        if value is NOT_FRESH:
            return self._get_rest(key, loader, ttl)
        return value

    def _get_rest(self, key: str, loader: Loader | None, ttl: DurationLike | None) -> Any:
        """:meth:`get` after the plain-hit reader declined: the general L1 lookup, then the
        other tiers and the source."""
        value = self.lookup_l1(key)
        if value is MISSING or value is REFRESH_DUE or type(value) is ReadState:
            return self.get_after_l1(key, loader, ttl, value)
        return value

    def get_after_l1(
        self, key: str, loader: Loader | None, ttl: DurationLike | None, looked: Any = MISSING
    ) -> Any:
        """Everything after an L1 miss (for the decorator): the other tiers and the source,
        one flight per key. ``looked``: what the L1 lookup returned: ``MISSING``;
        ``REFRESH_DUE`` (the L1 entry is fresh but XFetch picked this read to refresh it:
        serve the entry and refresh in the background); or the bus's
        :class:`~tiered_cache.read_state.ReadState`, tier 0 not read. The read's one
        decision of the bus (:meth:`ChainPaths.looked`), carried through its flight."""
        lifetime = check_ttl(ttl)
        state = looked if type(looked) is ReadState else self._paths.looked()
        if looked is REFRESH_DUE and self._tiers:
            self._metrics.count("early_refreshes")
            self._loader.refresh_in_background(key, loader, lifetime, None)
            entry = self._tiers[0].get(key, count=False)
            if entry is not MISSING and not entry.is_expired(self._clock()):
                return entry.value
        # Join the key's flight only if the fence allows (Fence.may_join), else lead a new one
        # with the fence's mark, taken before anything is read. A background refresh's flight
        # is read beside first (SingleFlight.run's ``beside``).
        value, _ = self._loader.flights.run(
            key,
            self._read,
            key,
            loader,
            lifetime,
            state,
            tag=self._fence.mark(),
            may_join=self._may_join,
            wait=self._loader.join_timeout,
            beside=self._beside,
            joined=self._joined,
        )
        return value

    def _read_beside(
        self,
        flight: Flight,
        key: str,
        loader: Loader | None,
        ttl: CheckedTtl | None,
        state: ReadState,
    ) -> Any:
        """The read of a miss that found a background refresh leading its key's flight
        (:data:`~tiered_cache.singleflight.BESIDE`): the tiers read under the miss's own mark
        (``flight.tag``; ``flight`` is not in the table), without loading: a fresh copy or a
        stale one still servable, else ``MISSING`` (the miss then joins the refresh). Rare
        (only while a refresh runs): the steps' walk, not the plain one."""
        return run(self._paths.read_through(key, flight.tag, loader, ttl, state, beside=True))

    def get_many(
        self,
        keys: Iterable[str],
        loader: BatchLoader | None = None,
        *,
        ttl: DurationLike | None = None,
    ) -> dict[str, Any]:
        """Values for ``keys`` (``None`` for keys the source does not have).

        Each tier is asked once for the keys still missing; what remains is loaded with one
        call to the source's ``load_many`` (or ``loader(keys)``), and filled into every tier.

        Args:
            keys: the keys to read; duplicates are read once.
            loader: called instead of the source with the list of keys no tier had; returns a
                mapping of the keys it found to their values (a key it leaves out, or maps to
                ``None``, is cached as not found for ``negative_ttl``).
            ttl: how long the loaded values stay fresh, overriding the cache's ``ttl``.

        Returns a dict with every requested key. If some keys cannot be served (the source
        failed and they have no stale copy), raises :class:`~tiered_cache.PartialBatchError`,
        which carries every value that could be served and, per key, the error of the others.
        """
        return run(self._paths.get_many(key_list(keys), loader, ttl))

    def lookup_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The fresh entries the tiers hold for ``keys``, without loading anything: keys no
        tier holds fresh are left out. A hit fills the faster tiers, as a read does.

        For callers that own the values themselves (Django's cache API): nothing is loaded,
        refreshed or served stale.
        """
        return run(self._paths.lookup_many(key_list(keys)))

    # -- writes -------------------------------------------------------------------------------

    def set(self, key: str, value: Any, *, ttl: DurationLike | None = None) -> None:
        """Write ``value`` for ``key`` and make every process see it.

        With a source, the source is written first; if that fails, no tier changes. With the
        ``"through"`` write policy the tiers then get the new value, in an order that cannot
        be overtaken (docs/consistency.md): a leasing tier's lease is taken before the source
        is written and the value filled under it, so of two overlapping writes at most one
        fills and the other invalidates. With ``"around"``, every tier drops the key. Other
        processes drop their in-process copy (the bus). A value a tier cannot encode raises
        :class:`~tiered_cache.CodecError` before anything is sent (source, tiers, bus), and a
        ``ttl`` that is not a duration more than 0 :class:`ValueError`. ``ttl`` is the
        value's, ``None``'s too (without one, a written ``None`` is kept for ``negative_ttl``,
        as a source's "not found" is).
        """
        # A chain of one in-process tier alone answers through ChainPaths.set_alone (see
        # __init__), which makes the same decisions in plain calls.
        run(self._paths.set(key, value, ttl))

    def set_many(self, items: Mapping[str, Any], *, ttl: DurationLike | None = None) -> None:
        """Write several values, as :meth:`set` writes one: the source first (one ``store``
        per key), then every tier in one batch per tier, under the keys' leases. If the
        source fails part way, the keys it already took are dropped from every tier (the
        others keep their value) and the error is raised."""
        run(self._paths.set_many(items, ttl))

    def invalidate(self, key: str) -> None:
        """Remove ``key`` from every tier and every process's memory (not from the source)."""
        self.invalidate_many([key])

    def invalidate_many(self, keys: Iterable[str], *, strict: bool = False) -> None:
        """Remove ``keys`` from every tier and every process's memory (not from the source).

        Shared tiers go first, then the fence (no fill in flight may land; the in-process
        copies go), then the bus: a reader that starts after any step cannot bring an old
        copy back. A tier or bus that fails is logged and counted; with ``strict`` (the stream
        follower, which must not move past a change it could not announce) it then raises
        :class:`~tiered_cache.InvalidationIncomplete`.
        """
        run(self._paths.invalidate_many(key_list(keys), strict=strict))

    def invalidate_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix`` ("drop everything about user 42":
        ``invalidate_prefix("user:42:")``), in every tier and every process's memory.

        A tier that can delete by prefix does (Redis: SCAN and UNLINK, proportional to the
        keys of this cache's namespace); any other tier is cleared whole, which is always safe.
        """
        run(self._paths.invalidate_prefix(prefix))

    def clear(self, *, strict: bool = False) -> None:
        """Remove every entry of this cache from every tier and every process's memory;
        ``strict`` as for :meth:`invalidate_many`."""
        run(self._paths.clear(strict=strict))

    # -- the bus going down and coming back ---------------------------------------------------

    def _set_bus_connected(self, connected: bool, *, starting: bool = False) -> None:
        """The bus went down or came back (:meth:`ChainPaths.set_bus_connected`)."""
        self._use_l1(
            self._tiers,
            self._paths.set_bus_connected(connected, self._disconnected_bound, starting=starting),
        )

    def _store(self, key: str, value: Any) -> None:
        assert self._source is not None
        self._source.store(key, value)

    def _announce(
        self, keys: Sequence[str], prefixes: Sequence[str], clear: bool, at: float
    ) -> bool:
        assert self._bus_link is not None
        return self._bus_link.announce(keys, prefixes, clear=clear, at=at)

    # -- the decorator ------------------------------------------------------------------------

    def cached(
        self, key: str, *, ttl: DurationLike | None = None
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Cache a function's results under a key template such as ``"tweet:{tweet_id}"``.

        The template's names must be parameters of the function; the function body is the
        loader. The wrapped function gains ``invalidate(**names)`` and ``key_for(**names)``.
        """
        from .decorator import cached

        return cast("Callable[[Callable[P, R]], CachedFunction[P, R]]", cached(self, key, ttl=ttl))

    # -- reporting and lifecycle -------------------------------------------------------------

    def hot_keys(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` hottest keys with their estimated rate per second, if a tier tracks them."""
        return first_hot_keys(self._tiers, n)

    def stats(self) -> dict[str, Any]:
        """A JSON-serializable snapshot: per-tier hits, misses, fills, errors and skips (and what
        a tier reports itself: evictions, breaker state), loads, load failures, the load latency
        histogram, single-flight waits, the source's report, and the hottest keys."""
        return chain_stats(
            self._metrics.snapshot(),
            tiers=self._tiers,
            source=self._source,
            namespace=self.namespace,
            bus=self._bus_link,
        )

    def wait_background(self, timeout: float | None = None) -> bool:
        """Wait until background refreshes and late loads have finished (and filled).

        Returns False if some were still running after ``timeout`` seconds. Useful before a
        graceful shutdown, and in tests.
        """
        return self._loader.wait_background(timeout)

    def close(self) -> None:
        """Close every tier and the source. Idempotent. From then on every read, write and
        invalidation (and every call of a decorated function) raises
        :class:`~tiered_cache.ChainClosedError`; :meth:`stats` still answers.

        The close runs once, on a thread of its own (``tiered-cache-close``, not a daemon:
        the interpreter's exit waits for it), whoever asks (:mod:`tiered_cache.closing`):
        every ``close()`` returns once it is done, and a caller stopped on its way (Ctrl-C,
        a signal handler raising) stops waiting, not the close, which the next ``close()``
        waits for. Two calls never return with the chain half closed.

        Called from a signal handler (a worker's SIGTERM handler), it marks the chain closed
        and returns at once: the handler may have interrupted a call of this chain on the
        main thread, holding a lock the close needs, which it lets go only once the handler
        has returned. The interrupted call then ends (its result or ``ChainClosedError``)
        and every later call is refused. Called from a background refresh's loader, it
        returns at once too: the close waits for that refresh.

        A call in flight in the source as the chain closes is not waited for (a hung source
        would hang the shutdown): it ends with its result, and fills no memory (the fence's
        close), nor turns the L1 lookup back on (nothing does on a closed chain)."""
        # First, a C call (no instant to run a signal handler at before it): the exit's hook,
        # which finishes a close stopped on its way (tiered_cache.closing).
        self._closing.hold_exit()
        aside = in_signal_handler()
        # A signal handler raising after this stops the caller only, not the close.
        self._closing.start(aside=aside)
        if not self.closed:  # as the close's first step does, for a handler not waiting
            self._refuse_calls()
        if not aside and not self._loader.on_a_worker():
            self._closing.wait()

    def _refuse_calls(self) -> None:
        # First, so that no call reaches a tier or the source being closed (tiered_cache.closed),
        # and before the loader gives back the leases of the calls in flight: a write begun
        # after that give-back stole a lease nothing gave back (its fill found the tier closed;
        # leases left in 15 of 15 rounds of 6 writer threads closed at a random instant).
        self._paths = ClosedPaths(repr(self))
        self._read = self._paths.read_through_plain
        vars(self).pop("set", None)  # the lone tier's set, bound to the open paths

    def _close_parts(self) -> None:
        """The close, on its thread (:meth:`close`): the loader's work, the bus, the tiers,
        the source. Each step is harmless twice (a forked child runs them again when its
        parent's close had not ended at the fork)."""
        self._refuse_calls()
        self._fence.close()  # the calls in flight fill no memory from now on
        for tier in self._tiers:  # first: a payment in flight announces on the bus
            tier.stop_paying()
        self._loader.close()
        self._use_l1(self._tiers, CONNECTED)  # closed: reads are refused
        if self._bus_link is not None:
            try:
                self._bus_link.close()
            except Exception:
                logger.exception("closing the invalidation bus failed")
        for tier in self._tiers:
            tier.close()
        if self._source is not None:
            try:
                self._source.close()
            except Exception:
                logger.exception("closing the source failed")

    def __enter__(self) -> TieredCache:
        """The chain, for a ``with`` block that closes it; a closed chain is refused
        (:class:`~tiered_cache.ChainClosedError`), as any use of it is."""
        self._paths.entered()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = " -> ".join(tier.name for tier in self._tiers) or "no tiers"
        source = self._source.name if self._source is not None else "loader"
        return f"<TieredCache {self.namespace!r}: {names} -> {source}>"


# ``cache.set`` of a lone in-process chain is ChainPaths.set_alone (see TieredCache.__init__),
# bound as it is (a wrapper would add a frame to every set), but under the public method's
# name, doc and annotations: help(cache.set) and inspect showed set_alone's, an internal.
_SET_ALONE = FunctionType(
    ChainPaths.set_alone.__code__,
    ChainPaths.set_alone.__globals__,
    "set",
    ChainPaths.set_alone.__defaults__,
    ChainPaths.set_alone.__closure__,
)
_SET_ALONE.__kwdefaults__ = ChainPaths.set_alone.__kwdefaults__
_SET_ALONE.__qualname__ = TieredCache.set.__qualname__
_SET_ALONE.__module__ = TieredCache.set.__module__
_SET_ALONE.__doc__ = TieredCache.set.__doc__
_SET_ALONE.__annotations__ = TieredCache.set.__annotations__

# ``cache.get`` is a PlainGet (see TieredCache.__init__); compiled, it is a C callable that
# inspect cannot read, so ``inspect.signature(cache.get)`` (help(), introspecting frameworks)
# raised. It stands for the bound method: it reports that method's signature, without self.
_GET = inspect.signature(TieredCache.get)
_GET_PARAMETERS = list(_GET.parameters.values())[1:]
PlainGet.__signature__ = _GET.replace(parameters=_GET_PARAMETERS)  # type: ignore[attr-defined]
# And its doc: help() shows an object's own doc, never one it shares with its class, so the
# instance's doc is a property (the class's own, PlainGet's, stays in hit.py).
PlainGet.__doc__ = property(lambda _: TieredCache.get.__doc__)  # type: ignore[assignment]
