"""TieredCache: the public face of a chain of tiers; the read path and the write path.

The chain holds its parts (it inherits none): one :class:`~tiered_cache.accessor.TierAccessor`
per tier (capabilities, breaker, counters), the :class:`~tiered_cache.fence.Fence` (the only
owner of "no fill after an invalidation"), the :class:`~tiered_cache.loader.SourceLoader`
(source calls under protection) and the :class:`~tiered_cache.coherence.BusLink` (the other
processes). Calls go one way: chain -> bus link or loader -> fence -> accessor -> tier.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from .accessor import TierAccessor
from .bus import Bus
from .coherence import BusLink
from .errors import InvalidationIncomplete, PartialBatchError
from .fence import Fence
from .loader import BatchLoader, EntryMaker, Loader, SourceLoader
from .logs import logger_for
from .metrics import CacheMetrics
from .protection import REFRESH_DUE, Protection, xfetch_due
from .reporting import source_report
from .tier import MISSING, Entry, MissingType, Source, Tier

if TYPE_CHECKING:
    from .decorator import CachedFunction
    from .settings import CacheSettings

logger = logger_for("chain")

__all__ = ["BatchLoader", "Loader", "TieredCache"]

P = ParamSpec("P")
R = TypeVar("R")


class TieredCache:
    """A chain of tiers, fastest first, in front of an optional source of truth.

    A read walks the tiers in order. A hit in tier ``i`` fills tiers ``0..i-1``; a miss in
    every tier loads from the source (or the loader passed to :meth:`get`) once per key at a
    time in this process, and fills every tier. A tier that fails is skipped with a warning and
    a counter; the caller only sees an error when the load itself fails.

    Args:
        tiers: the tiers, fastest first.
        source: the system of record; may be omitted when every read passes a loader.
        namespace: keeps this cache's keys apart in shared tiers (used by the tiers' builders).
        ttl: how long a loaded value stays fresh, in seconds; ``None`` leaves it to the tiers.
        negative_ttl: how long a "not found" (``None``) is cached.
        clock: seconds; stamps entries and decides freshness. Wall-clock by default because
            entries are shared between processes through tiers such as Redis.
        protection: stale serving, early refresh, load timeouts and leases (see
            :class:`~tiered_cache.protection.Protection`; its defaults suit a throttled source).
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
    """

    def __init__(
        self,
        tiers: Sequence[Tier],
        source: Source | None = None,
        *,
        namespace: str = "default",
        ttl: float | None = None,
        negative_ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
        protection: Protection | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        background: Callable[[Callable[[], None]], object] | None = None,
        bus: Bus | None = None,
        max_stale_when_disconnected: float = 1.0,
        write_policy: Literal["through", "around"] = "through",
    ) -> None:
        self.namespace = namespace
        self._given = tuple(tiers)
        self._source = source
        self._clock = clock
        self._protection = protection or Protection()
        self._metrics = CacheMetrics([tier.name for tier in tiers])
        self._tiers = [
            TierAccessor(index, tier, self._metrics, clock) for index, tier in enumerate(tiers)
        ]
        self._shared = [tier for tier in self._tiers if not tier.local]
        self._leasing = next((t for t in self._shared if t.leases), None)
        self._fence = Fence(self._tiers, self._metrics)
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
        self._write_policy = write_policy
        self._random = rng
        self._beta = self._protection.early_refresh_beta
        self._xfetch_window = self._protection.xfetch_window_factor
        self._l1_hits = self._metrics.l1_hits
        self._l1_hit_cells = self._l1_hits.cells
        self._use_l1(True)
        self._disconnected_bound = max_stale_when_disconnected
        #: The bus is down and in-process tiers keep fills for the bound (reads are counted).
        self._bus_down = False
        self._bounded = False
        self._bus_link: BusLink | None = None
        if bus is not None:
            self._bus_link = BusLink(bus, self._fence, self._metrics, self._set_bus_connected)

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
    def source(self) -> Source | None:
        """The source of truth, if the chain has one."""
        return self._source

    def get(self, key: str, loader: Loader | None = None, *, ttl: float | str | None = None) -> Any:
        """The value for ``key``, read through the tiers down to the source.

        Args:
            loader: called (with no arguments) instead of the source on a miss in every tier.
                Its return value is cached; ``None`` is cached for ``negative_ttl``.
            ttl: how long the loaded value stays fresh, overriding the cache's ``ttl``.

        Returns ``None`` when the source has no such item.
        """
        value = self.lookup_l1(key)
        if value is MISSING or value is REFRESH_DUE:
            return self.get_after_l1(key, loader, ttl, value is REFRESH_DUE)
        return value

    def lookup_l1(self, key: str) -> Any:
        """The fresh value in tier 0, ``MISSING``, or :data:`REFRESH_DUE` (for the decorator,
        which inlines :meth:`get`).

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
            self._tiers[0].failed(exc)
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
        self._tiers[0].miss()
        return MISSING

    def get_after_l1(
        self, key: str, loader: Loader | None, ttl: float | str | None, early: bool = False
    ) -> Any:
        """Everything after an L1 miss (for the decorator): the other tiers and the source,
        one flight per key. ``early``: the L1 entry is fresh but XFetch picked this read to
        refresh it; serve the entry and refresh in the background."""
        if early and self._tiers:
            self._metrics.count("early_refreshes")
            self._loader.refresh_in_background(key, loader, ttl, None)
            entry = self._tiers[0].get(key, count=False)
            if entry is not MISSING and not entry.is_expired(self._clock()):
                return entry.value
        # A flight that started before an invalidation of the key may bring back what the
        # invalidation removed: a reader that comes after it starts a flight of its own.
        fence = self._fence
        value, shared = self._loader.flights.run(
            key,
            lambda flight: self._read_through(key, flight.tag, loader, ttl),
            tag=fence.mark(),
            joinable=lambda flight: not fence.overtaken(flight.tag, [key]),
        )
        if shared:
            self._metrics.waited()
        return value

    def _read_through(
        self, key: str, mark: int, loader: Loader | None, ttl: float | str | None
    ) -> Any:
        """Inside the key's flight: the first fresh copy (copied up into the faster tiers),
        else a stale one while a refresh runs, else a load. ``mark``: the fence's, taken
        before anything was read; every fill below is judged by it."""
        now = self._clock()
        stale: Entry | None = None
        for tier in self._tiers:
            if tier.bypassed:
                continue
            # Tier 0 was just missed by the caller; look again, quietly, because another
            # flight for this key may have filled it between that miss and this flight.
            entry = tier.get(key, count=tier.index > 0)
            if entry is MISSING:
                continue
            if now < entry.soft_expiry:
                if tier.index > 0:
                    tier.hit()
                    self._fence.fill(mark, {key: entry}, self._tiers[: tier.index])
                if self._bounded:
                    self._count_bus_down(tier)
                return entry.value
            if stale is None and now < entry.hard_expiry:
                stale = entry
        if self._bounded:
            self._count_bus_down(None)
        if stale is not None and self._protection.stale_while_revalidate:
            self._metrics.count("stale_served")
            self._loader.refresh_in_background(key, loader, ttl, stale)
            return stale.value
        return self._loader.load(key, mark, loader, ttl, stale).value

    def get_many(
        self,
        keys: Iterable[str],
        loader: BatchLoader | None = None,
        *,
        ttl: float | str | None = None,
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
        wanted = list(dict.fromkeys(keys))
        stale: dict[str, Entry] = {}
        mark = self._fence.mark()
        found = self._read_tiers(wanted, mark, stale)
        remaining = [key for key in wanted if key not in found]
        if remaining and stale and loader is None and self._protection.stale_while_revalidate:
            # Stale keys are served now and refreshed one by one in the background.
            for key in remaining:
                if key in stale:
                    found[key] = stale[key]
                    self._metrics.count("stale_served")
                    self._loader.refresh_in_background(key, None, ttl, stale[key])
            remaining = [key for key in remaining if key not in stale]
        values = {key: entry.value for key, entry in found.items()}
        errors: dict[str, BaseException] = {}
        if remaining:
            # One batch for the keys no other caller is loading; wait for the others' loads.
            fence = self._fence
            led, joined = self._loader.flights.claim(
                remaining,
                tag=mark,
                joinable=lambda key, flight: not fence.overtaken(flight.tag, [key]),
            )
            if led:
                loaded, failed = self._loader.load_batch(led, mark, loader, ttl, stale)
                values.update(loaded)
                errors.update(failed)
            for key, flight in joined.items():
                try:
                    values[key] = flight.wait()
                except Exception as exc:
                    errors[key] = exc
                self._metrics.waited()
        if errors:
            failed = {key: errors[key] for key in wanted if key in errors}
            raise PartialBatchError(
                {key: values[key] for key in wanted if key in values}, failed
            ) from next(iter(failed.values()))
        return {key: values[key] for key in wanted}

    def lookup_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The fresh entries the tiers hold for ``keys``, without loading anything: keys no
        tier holds fresh are left out. A hit fills the faster tiers, as a read does.

        For callers that own the values themselves (Django's cache API): nothing is loaded,
        refreshed or served stale.
        """
        return self._read_tiers(list(dict.fromkeys(keys)), self._fence.mark(), {})

    def _read_tiers(self, keys: list[str], mark: int, stale: dict[str, Entry]) -> dict[str, Entry]:
        """One ``get_many`` per tier for the keys still missing, fastest tier first; hits fill
        the faster tiers (through the fence). Stale entries still servable go into ``stale``."""
        found: dict[str, Entry] = {}
        remaining = keys
        now = self._clock()
        for tier in self._tiers:
            if not remaining:
                break
            if tier.bypassed:
                continue
            hits = tier.get_many(remaining, now, stale)
            if hits and tier.bounded_for > 0:
                self._metrics.count("bus_down_served", len(hits))
            if hits:
                self._fence.fill(mark, hits, self._tiers[: tier.index])
                found.update(hits)
                remaining = [key for key in remaining if key not in hits]
        return found

    # -- writes -------------------------------------------------------------------------------

    def set(self, key: str, value: Any, *, ttl: float | str | None = None) -> None:
        """Write ``value`` for ``key`` and make every process see it.

        With a source, the source is written first; if that fails, no tier changes. With the
        ``"through"`` write policy the tiers then get the new value, in an order that cannot
        be overtaken (docs/consistency.md): a leasing tier's lease is taken before the source
        is written and the value filled under it, so of two overlapping writes at most one
        fills and the other invalidates. With ``"around"``, every tier drops the key. Other
        processes drop their in-process copy (the bus). A value a tier cannot encode raises
        :class:`~tiered_cache.CodecError` before that tier is written.
        """
        if self._write_policy == "around" and self._source is not None:
            self._source.store(key, value)
            self.invalidate_many([key])
            return
        mark = self._fence.mark()  # before the source is written: later invalidations count
        token = self._steal_lease(key)
        try:
            if self._source is not None:
                self._source.store(key, value)
        except BaseException:
            if token is not None and self._leasing is not None:
                self._leasing.release_leases({key: token})
            raise
        entry = self._entry(value, self._clock(), 0.0, ttl)
        # Loads in flight read the source before this write: none of them may fill now.
        own = self._fence.invalidate([key])
        tokens = {key: token} if token is not None else None
        if key not in self._fence.fill(mark, {key: entry}, self._tiers, tokens=tokens, own=own):
            # Another write (or an invalidation) overlapped this one: which came last at the
            # source cannot be told here, so no tier keeps either value.
            self.invalidate_many([key])
            return
        if self._bus_link is not None:
            self._bus_link.announce([key])

    def _steal_lease(self, key: str) -> str | None:
        """The key's lease for a write, or None (no leasing tier, or it failed)."""
        tier = self._leasing
        if tier is None or not tier.can_lease(key):
            return None
        ttl = self._protection.lease_ttl
        try:
            return tier.lease(lambda leasing: leasing.steal_lease(key, ttl))
        except Exception as exc:
            tier.failed(exc)
            return None

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
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        failed = [error for tier in reversed(self._shared) if (error := tier.delete_many(keys))]
        self._fence.invalidate(keys)
        if self._bus_link is not None and not self._bus_link.announce(keys):
            failed.append("the invalidation bus")
        if strict and failed:
            raise InvalidationIncomplete(
                f"invalidating {len(keys)} key(s) did not reach {', '.join(failed)}"
            )

    def invalidate_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix`` ("drop everything about user 42":
        ``invalidate_prefix("user:42:")``), in every tier and every process's memory.

        A tier that can delete by prefix does (Redis: SCAN and UNLINK, proportional to the
        keys of this cache's namespace); any other tier is cleared whole, which is always safe.
        """
        if not prefix:
            raise ValueError("an empty prefix would drop everything: use clear()")
        for tier in reversed(self._shared):
            tier.delete_prefix(prefix)
        self._fence.invalidate(prefixes=[prefix])
        if self._bus_link is not None:
            self._bus_link.announce(prefixes=[prefix], at=self._clock())

    def clear(self, *, strict: bool = False) -> None:
        """Remove every entry of this cache from every tier and every process's memory;
        ``strict`` as for :meth:`invalidate_many`."""
        failed = [error for tier in reversed(self._shared) if (error := tier.clear())]
        self._fence.invalidate(everything=True)
        if self._bus_link is not None and not self._bus_link.announce(clear=True):
            failed.append("the invalidation bus")
        if strict and failed:
            raise InvalidationIncomplete(f"clearing did not reach {', '.join(failed)}")

    # -- the bus going down and coming back ---------------------------------------------------

    def _set_bus_connected(self, connected: bool) -> None:
        """While the bus is down in-process tiers would miss invalidations: they serve only
        copies filled during the outage, each for at most ``max_stale_when_disconnected``
        (or are bypassed when that is 0), so the source sees about one load per key per
        bound instead of one per read. They are cleared both ways: on the way down nothing
        stale stays for later, on the way up nothing from the outage is trusted."""
        self._bus_down = not connected
        bound = 0.0 if connected else self._disconnected_bound
        self._bounded = bound > 0
        if connected:
            self._fence.invalidate(everything=True)
        for tier in self._tiers:
            if tier.local:
                tier.bypassed = not connected and bound <= 0
                tier.bounded_for = bound
        # While the bus is down reads take the slow path, which counts bounded serves.
        self._use_l1(connected or not (self._tiers and self._tiers[0].local))
        if not connected:
            self._fence.invalidate(everything=True)

    def _count_bus_down(self, tier: TierAccessor | None) -> None:
        """A read while the bus is down: answered by a bounded in-process tier, or not."""
        served = tier is not None and tier.bounded_for > 0
        self._metrics.count("bus_down_served" if served else "bus_down_bypasses")

    def _use_l1(self, enabled: bool) -> None:
        """Let :meth:`lookup_l1` read tier 0 (or, ``enabled=False``, skip it)."""
        self._l1_get_at: Callable[[str, float], Entry | MissingType] | None = None
        if enabled and self._tiers:
            self._l1_get_at = self._tiers[0].get_at_function()

    # -- the decorator ------------------------------------------------------------------------

    def cached(
        self, key: str, *, ttl: float | str | None = None
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Cache a function's results under a key template such as ``"tweet:{tweet_id}"``.

        The template's names must be parameters of the function; the function body is the
        loader. The wrapped function gains ``invalidate(**names)`` and ``key_for(**names)``.
        """
        from .decorator import cached

        return cached(self, key, ttl=ttl)

    # -- reporting and lifecycle -------------------------------------------------------------

    def hot_keys(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` hottest keys with their estimated rate per second, if a tier tracks them."""
        for tier in self._tiers:
            result = tier.hot_keys(n)
            if result:
                return result
        return []

    def stats(self) -> dict[str, Any]:
        """A JSON-serializable snapshot: per-tier hits, misses, fills, errors and skips (and what
        a tier reports itself: evictions, breaker state), loads, load failures, the load latency
        histogram, single-flight waits, the source's report, and the hottest keys."""
        snapshot = self._metrics.snapshot()
        for tier, counters in zip(self._tiers, snapshot["tiers"], strict=True):
            counters.update(tier.report())  # evictions, breaker state: what tiers know
        snapshot["source"] = (
            None
            if self._source is None
            else {
                "name": self._source.name,
                **source_report(self._source, snapshot["source_reads_saved"]),
            }
        )
        snapshot["namespace"] = self.namespace
        snapshot["bus"] = (
            None if self._bus_link is None else ("down" if self._bus_down else "connected")
        )
        snapshot["hot_keys"] = [[key, rate] for key, rate in self.hot_keys(10)]
        return snapshot

    def wait_background(self, timeout: float | None = None) -> bool:
        """Wait until background refreshes and late loads have finished (and filled).

        Returns False if some were still running after ``timeout`` seconds. Useful before a
        graceful shutdown, and in tests.
        """
        return self._loader.wait_background(timeout)

    def close(self) -> None:
        """Close every tier and the source. Idempotent."""
        if not self._loader.close():
            return
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
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = " -> ".join(tier.name for tier in self._tiers) or "no tiers"
        source = self._source.name if self._source is not None else "loader"
        return f"<TieredCache {self.namespace!r}: {names} -> {source}>"
