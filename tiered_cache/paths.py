"""The chain's read and write paths, written once as steps (:mod:`tiered_cache.steps`).

:class:`ChainPaths` holds every decision of a read after the L1 miss (which tier answers, what
is copied up, when a stale value is served, when the source is asked) and of a write (the
order of lease, source, fence, tiers and bus that keeps copies coherent). The threaded
:class:`~tiered_cache.TieredCache` runs these steps with plain calls, the asyncio
:class:`~tiered_cache.AsyncTieredCache` awaits them: its tier accessors, loader, source and
bus offer coroutines of the same names. What differs between the two faces -- threads or
coroutines for single-flight, background work and timeouts -- stays in their loaders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from .deletes import deleting
from .errors import InvalidationIncomplete, PartialBatchError
from .fence import ChainTier, Fence
from .forms import Forms, Prepare, prepared, prepared_one
from .held_leases import HeldLeases, Holdings
from .keys import MAX_KEY_LENGTH, check_keys
from .metrics import CacheMetrics
from .owed import Debt
from .protection import Protection
from .read_state import (
    BUS_DOWN_COUNTS,
    BUS_STARTING_COUNTS,
    CONNECTED,
    BoundedCounts,
    ReadState,
)
from .singleflight import Landing, LeaderGone
from .stale_copy import StaleCopy
from .stamp import CheckedTtl, EntryMaker, check_ttl
from .steps import Steps, run
from .tier import MISSING, Entry
from .units import DurationLike

#: ``announce(keys, prefixes, clear, at)``: publish an invalidation; True if it went out.
Announce = Callable[[Sequence[str], Sequence[str], bool, float], Any]
#: ``fill_one(mark, key, entry, tiers, own)``: :meth:`Fence.fill_one`, for the threaded chain.
FillOne = Callable[[int, str, Entry, Sequence[Any], "int | None"], bool]


__all__ = ["BUS_DOWN_COUNTS", "BUS_STARTING_COUNTS", "BoundedCounts", "ChainPaths"]


class ChainPaths:
    """The read-through and write paths of one chain, as steps.

    Args:
        tiers: the chain's tier accessors, fastest first (sync, or the asyncio chain's).
        fence: the chain's fence.
        metrics: the chain's counters.
        protection: the source-protection options.
        make_entry: stamps values into entries.
        clock: the chain's clock.
        loader: the chain's loader: ``load(key, mark, loader, ttl, stale)`` (a step),
            ``refresh_in_background(key, loader, ttl, (stale, mark))`` (a plain call) and
            ``holdings`` (:class:`~tiered_cache.held_leases.Holdings`).
        store: writes the source (a step), or None when the chain has no source.
        announce: tells the other processes (a step), or None without a bus.
        write_policy: ``"through"`` or ``"around"`` (see :meth:`TieredCache.set`).
    """

    def __init__(
        self,
        tiers: Sequence[ChainTier],
        *,
        fence: Fence,
        metrics: CacheMetrics,
        protection: Protection,
        make_entry: EntryMaker,
        clock: Callable[[], float],
        loader: Any,
        store: Callable[[str, Any], Any] | None,
        announce: Announce | None,
        write_policy: Literal["through", "around"],
    ) -> None:
        self.tiers = list(tiers)
        #: The shared tiers, as an invalidation deletes from them (the slowest first: a read
        #: meanwhile must not copy an old value up from a tier not reached yet).
        self.slowest_first = [tier for tier in reversed(self.tiers) if not tier.local]
        self.leasing = fence.leasing(self.tiers)
        #: The tiers that store keys as UTF-8, named for check_keys' message; None: no such
        #: tier, any str is a key.
        self.utf8_for = ", ".join(repr(tier.name) for tier in self.tiers if tier.utf8_keys) or None
        #: Each tier's check of a value it could not store (CodecError), made before a write
        #: sends anything, and the form its fill stores: see :meth:`check_values`.
        self.value_checks: list[Prepare] = [(tier.index, tier.prepare_value) for tier in self.tiers]
        self.fence = fence
        self.metrics = metrics
        self.protection = protection
        # Read once, not per read: Protection is a frozen pydantic model, whose every field
        # read goes through BaseModel.__getattr__'s hook.
        self.stale_while_revalidate = protection.stale_while_revalidate
        self.make_entry = make_entry
        self.clock = clock
        self.loader = loader
        #: The leases of the loads and writes in flight, which the loader's close gives back.
        #: A write in flight as the chain closed stole its leases, then found the tier closed
        #: at its fill (or invalidation): they held until ``lease_ttl`` (2 to 5 of them in
        #: each of 15 rounds of 6 writer threads). A fill that used them first makes that
        #: give-back release nothing.
        self.holdings: Holdings = loader.holdings
        self.store = store
        #: A write's values are the only copy (no source): those written without a lease are
        #: ordered in the shared tiers by their own write, and a gap keeps them out of memory
        #: alone (Fence.fill_steps).
        self.sole = store is None
        self.announce = announce
        self.write_policy = write_policy
        #: The fence's one-key, lease-less fill in plain calls, when the tiers' calls are
        #: plain calls (:attr:`Fence.plain`: the threaded chain); None: fills go as steps.
        self.fill_one: FillOne | None = fence.fill_one if fence.plain else None
        #: The bus as a read starting now takes it (:mod:`tiered_cache.read_state`): down
        #: (or starting), in-process tiers keep fills for a bound, or are bypassed, and every
        #: read is counted as served by them or gone past them (once: a read that memory
        #: served or missed while bounded is its hit or miss too). Replaced whole, never
        #: changed: a read asks it once and carries its answer (:meth:`looked`).
        self.state: ReadState = CONNECTED
        #: Tier 0 is in-process: the L1 lookup reads it only while the bus is up.
        self.l1_local = bool(self.tiers) and self.tiers[0].local
        #: Tier 0's reads are I/O (the asyncio chain's Redis first): the L1 lookup never
        #: reads it, so the read after it counts its hit or miss, as the threaded chain's
        #: lookup counts it (counted by no one, Redis first showed none, ever): once per
        #: read, by the first of its steps that reads it (``first_counted`` after that).
        self.first_awaited = bool(self.tiers) and not self.tiers[0].inline

    # -- reads

    def looked(self) -> ReadState:
        """The bus as a read takes it whose L1 lookup read tier 0 (a miss, or an early
        refresh): connected, when tier 0 is in-process (the lookup reads it only then, and
        counted its hit or miss); else the state now (a shared tier 0, or none, is read
        whatever the bus: the read decides here, once). A lookup that did not read an
        in-process tier 0 returned the state it was switched off with instead."""
        return CONNECTED if self.l1_local else self.state

    def entered(self) -> None:
        """A ``with`` (``async with``) block is entered: nothing to do on open paths; the
        closed paths refuse it as they refuse every call (:mod:`tiered_cache.closed`)."""

    def read_through(
        self,
        key: str,
        mark: int,
        loader: Any,
        ttl: CheckedTtl | None,
        state: ReadState,
        *,
        beside: bool = False,
        below: tuple[float, Sequence[ChainTier], StaleCopy | None] | None = None,
        first_counted: bool = False,
    ) -> Steps[Any]:
        """Inside the key's flight: the first fresh copy (copied up into the faster tiers),
        else a stale one while a refresh runs, else a load. ``mark``: the fence's, taken
        before anything was read; every fill below is judged by it. (The threaded chain's
        misses read with :meth:`read_through_plain`, its reads beside a refresh with this.)
        ``beside``: the read of a caller that found a background refresh leading the key's
        flight (:data:`~tiered_cache.singleflight.BESIDE`), outside any flight: the same
        walk, but where it would load it returns ``MISSING`` (nothing to serve: the caller
        joins the refresh). ``state``: the bus as the read took it at its memory lookup.
        ``below``: the walk goes on where :meth:`read_through_plain` found a stale copy:
        ``(now, tiers, stale)``, the read's time, the tiers below that copy, and the copy if
        still servable (with the tier it was found in); None: from the first tier, now.
        ``first_counted``: this read counted an I/O tier 0 already (:attr:`first_awaited`: read
        beside a refresh, then leading the next flight)."""
        now: float
        tiers: Sequence[ChainTier]
        stale: StaleCopy | None
        if below is None:
            check_keys((key,), self.utf8_for)
            now, tiers, stale = self.clock(), self.tiers, None
        else:  # read_through_plain's key, checked there (as before the walks were one)
            now, tiers, stale = below
        down = state.down
        for tier in tiers:
            if state.bypass and tier.local:
                continue
            # Tier 0 was just missed by the caller; look again, quietly, because another
            # flight for this key may have filled it between that miss and this flight. Not
            # while the bus is down: the caller's L1 lookup then left an in-process tier 0 to this
            # read, which counts its hit or miss (else memory's serves of an outage counted
            # neither). A shared tier 0 the lookup reads whatever the bus: counted there;
            # one whose reads are I/O it never reads: counted here, as the lookup counts
            # its tier 0 (a copy past its soft expiry is a miss too), once per read.
            stands_in = tier.index == 0 and self.first_awaited and not first_counted
            counted = tier.index > 0 or (down and tier.local) or stands_in
            entry = yield tier.get, (key, counted)
            if entry is MISSING:
                continue
            if stands_in and now >= entry.soft_expiry:
                self.metrics.miss(0)
            if now < entry.soft_expiry:
                if counted:
                    tier.hit()
                if tier.index > 0:
                    above = self.fence.copy_targets(tier.index)
                    if self.fill_one is not None:
                        self.fill_one(mark, key, entry, above, None)
                    else:
                        yield from self.fence.fill_steps(mark, {key: entry}, above)
                if down:
                    self.count_bus_down(state, tier)
                return entry.value
            if stale is None and now < entry.hard_expiry:
                stale = StaleCopy(entry, tier.index)  # where it rests (rest_targets)
        servable = stale if self.stale_while_revalidate else None
        if beside and servable is None:
            # Not counted as a read while the bus is down: the caller's read goes on in the
            # refresh's flight (joined, not counted) or in one it leads (counted there).
            return MISSING
        if down:
            self.count_bus_down(state, None)
        if servable is not None:
            self.metrics.count("stale_served")
            self.loader.refresh_in_background(key, loader, ttl, (servable, mark))
            return servable.entry.value
        loaded: Entry = yield self.loader.load, (key, mark, loader, ttl, stale)
        return loaded.value

    def read_through_plain(
        self, flight: Landing, key: str, loader: Any, ttl: CheckedTtl | None, state: ReadState
    ) -> Any:
        """:meth:`read_through` for the threaded chain, in plain calls (its tiers' and
        loader's calls are plain calls; ``flight.tag`` is the fence's mark): the same walk
        without the steps' driver, which cost as much as the rest of the chain's part of an
        L2 hit. A fresh copy is copied up (:meth:`Fence.fill_one`) and served, a miss in
        every tier is loaded; what is rarer goes on as steps: a stale copy, from the tier
        below it (:meth:`read_through`), and a read while the bus is down (it is counted), whole.
        ``state``: the bus as the read took it at its memory lookup (:meth:`read_through`):
        not asked again (``self.state``), or a read the bus flapped under was counted twice,
        or not at all."""
        utf8_for = self.utf8_for
        if type(key) is not str or (
            utf8_for is not None and (not key.isascii() or len(key) > MAX_KEY_LENGTH)
        ):
            check_keys((key,), utf8_for)  # no call for a key it cannot refuse (once per miss)
        mark = flight.tag
        if state.down:
            return run(self.read_through(key, mark, loader, ttl, state))
        now = self.clock()
        tiers = self.tiers
        for tier in tiers:
            # Tier 0 is looked at again, quietly, as in read_through (connected: none is bypassed
            # for this read, whatever the bus has done since its lookup).
            entry = tier.get(key, tier.index > 0)
            if entry is MISSING:
                continue
            if now >= entry.soft_expiry:
                servable = StaleCopy(entry, tier.index) if now < entry.hard_expiry else None
                below = (now, tiers[tier.index + 1 :], servable)
                return run(self.read_through(key, mark, loader, ttl, state, below=below))
            if tier.index > 0:
                tier.hit()
                fill_one = self.fill_one
                assert fill_one is not None, "the threaded chain's fence fills in plain calls"
                fill_one(mark, key, entry, self.fence.copy_targets(tier.index), None)
            return entry.value
        return self.loader.load(key, mark, loader, ttl, None).value

    def get_many(
        self, keys: list[str], loader: Any, ttl: DurationLike | None
    ) -> Steps[dict[str, Any]]:
        """See :meth:`TieredCache.get_many`."""
        check_keys(keys, self.utf8_for)
        lifetime = check_ttl(ttl)
        wanted = list(dict.fromkeys(keys))
        stale: dict[str, StaleCopy] = {}
        mark = self.fence.mark()
        found = yield from self.read_tiers(wanted, mark, stale, self.state)
        if len(found) == len(wanted):
            # Every key found (a batch of hits): one pass, not three (the missing ones, the
            # values found, the values in the order asked). A tier that answered a key not
            # asked for may leave one missing: the general way below then serves it.
            try:
                return {key: found[key].value for key in wanted}
            except KeyError:
                pass
        remaining = [key for key in wanted if key not in found]
        if remaining and stale and loader is None and self.stale_while_revalidate:
            # Stale keys are served now and refreshed one by one in the background.
            for key in remaining:
                if key in stale:
                    found[key] = stale[key].entry
                    self.metrics.count("stale_served")
                    self.loader.refresh_in_background(key, None, lifetime, (stale[key], mark))
            remaining = [key for key in remaining if key not in stale]
        values = {key: entry.value for key, entry in found.items()}
        errors: dict[str, BaseException] = {}
        while remaining:
            # One batch for the keys no other caller is loading; wait for the others' loads.
            # The flights it leads are claimed into ``leading``, inside its block: whatever
            # stops this caller from the step they are claimed (an interrupt as the claim
            # returns, as the load is called, a cancellation) lands the ones not landed yet.
            with self.loader.flights.leading() as leading:
                joined, behind = leading.claim(remaining, tag=mark, may_join=self.fence.may_join)
                remaining = []
                if leading.flights:
                    batch = (leading, mark, loader, lifetime, stale)
                    loaded, failed = yield self.loader.load_batch, batch
                    values.update(loaded)
                    errors.update(failed)
            for key, flight in joined.items():
                try:
                    values[key] = yield flight.wait, ()
                except LeaderGone:
                    remaining.append(key)  # its leader was interrupted: claim it again
                except Exception as exc:
                    errors[key] = exc
                self.metrics.waited()
            for key, flight in behind.items():
                # A load that read before the key's invalidation: not this batch's to take,
                # and no second load beside it (one per key at a time); claimed again once
                # it has ended.
                yield flight.settle, ()
                remaining.append(key)
        if errors:
            failed = {key: errors[key] for key in wanted if key in errors}
            raise PartialBatchError(
                {key: values[key] for key in wanted if key in values}, failed
            ) from next(iter(failed.values()))
        return {key: values[key] for key in wanted}

    def lookup_many(self, keys: list[str]) -> Steps[dict[str, Entry]]:
        """See :meth:`TieredCache.lookup_many`."""
        check_keys(keys, self.utf8_for)
        wanted = list(dict.fromkeys(keys))
        return (yield from self.read_tiers(wanted, self.fence.mark(), {}, self.state))

    def read_tiers(
        self, keys: list[str], mark: int, stale: dict[str, StaleCopy], state: ReadState
    ) -> Steps[dict[str, Entry]]:
        """One ``get_many`` per tier for the keys still missing, fastest tier first; hits fill
        the faster tiers (through the fence). Stale entries still servable go into ``stale``
        (the first tier's of each key, with that tier: where a rest on it may go).
        ``state``: the bus as the batch took it before its first tier (its memory lookup),
        for every tier and its counts: asked again at the end, a batch the bus left during
        its read counted memory's misses and a bypass per key, and one it came back to
        during the shared tier's read counted none."""
        found: dict[str, Entry] = {}
        remaining = keys
        now = self.clock()
        served = 0
        # The tier's stale entries: each kept with its tier, the first tier's of a key.
        past: dict[str, Entry] = {}
        for tier in self.tiers:
            if not remaining:
                break
            if state.bypass and tier.local:
                continue
            hits = yield tier.get_many, (remaining, now, past)
            if past:
                for key, entry in past.items():
                    if key not in stale:
                        stale[key] = StaleCopy(entry, tier.index)
                past.clear()
            if hits and state.bounded and tier.local:
                served += len(hits)
            if hits:
                # The first tier's hits: no faster tier, no step (the fence's rule).
                above = self.fence.copy_targets(tier.index)
                yield from self.fence.fill_steps(mark, hits, above)
                found.update(hits)
                remaining = [key for key in remaining if key not in hits]
        if state.down:
            # Every key a read while the bus is down: memory's (within the bound), or past
            # it (to a shared tier, a load, or nothing), as count_bus_down counts a get's.
            if served:
                self.metrics.count(state.counts.served, served)
            if len(keys) > served:
                self.metrics.count(state.counts.bypassed, len(keys) - served)
        return found

    def joined(
        self,
        key: str,
        loader: Any,
        ttl: CheckedTtl | None,
        state: ReadState,
        first_counted: bool = False,
    ) -> None:
        """A ``get`` that joined another caller's load of its key: a wait
        (``singleflight_waits``); and if it took the bus as down or starting (``state``, the
        read's own; the other arguments are the read's, unused), a read past memory, as the
        leader's read counts one (:meth:`read_through`), whatever tier 0 is: a Redis-first chain's
        joined reads counted none (1 bypass for 10 reads). The L1 lookup leaves an in-process
        tier 0 to the read then (:meth:`set_bus_connected`), which the flight's leader alone
        makes: its miss too (of ten reads joining one load, memory counted one miss; ten when
        connected, and in get_many). A tier 0 whose reads are I/O no lookup reads
        (:attr:`first_awaited`): its miss, as the threaded chain's lookup counts it for each
        read that joins, unless the read counted it already (``first_counted``: read beside
        the refresh it joins)."""
        self.metrics.waited()
        if self.first_awaited:
            if not first_counted:
                self.metrics.miss(0)
        elif state.down and self.l1_local and not state.bypass:
            self.metrics.miss(0)  # tier 0's (a bypassed one is not read)
        if state.down:
            self.count_bus_down(state, None)

    def count_bus_down(self, state: ReadState, tier: ChainTier | None) -> None:
        """A read that took the bus as down (or starting): answered by a bounded in-process
        tier, or not."""
        counts = state.counts
        served = tier is not None and state.bounded and tier.local
        self.metrics.count(counts.served if served else counts.bypassed)

    # -- writes

    def set(self, key: str, value: Any, ttl: DurationLike | None) -> Steps[None]:
        """See :meth:`TieredCache.set`: its steps. A plain call that returns them (each
        checks the key at its first step): a chain without a leasing tier runs
        :meth:`write_one` with no frame around it (holding a registry's place cost it 1.1%
        of a set's instructions, counted with callgrind on two memory tiers)."""
        forms = prepared_one(self.value_checks, key, value)  # see check_values
        lifetime = check_ttl(ttl)
        if self.write_policy == "around" and self.store is not None:
            return self.write_around(key, value)
        if self.leasing is None:
            return self.write_one(key, value, lifetime, None, forms)
        return self.write_leased(key, value, lifetime, forms)

    def write_around(self, key: str, value: Any) -> Steps[None]:
        """:meth:`set` with the ``"around"`` policy: the source, then every tier dropped."""
        check_keys((key,), self.utf8_for)
        store = self.store
        assert store is not None, "set writes around only a chain with a source"
        yield store, (key, value)
        yield from self.invalidate_many([key])

    def write_leased(
        self, key: str, value: Any, ttl: CheckedTtl | None, forms: Forms | None
    ) -> Steps[None]:
        """:meth:`write_one` on a chain with a leasing tier. Whether the write takes the key's
        lease is decided here, once (:meth:`leased`; after the key's check: it reads the key);
        one that does holds it in a :class:`HeldLeases` of the loader's :attr:`holdings` for
        the length of the write (the loader's close gives it back). A key the tier cannot
        lease is written as on a chain without one, with no :class:`HeldLeases`. ``forms``:
        the tiers' forms of the value (:meth:`check_values`)."""
        check_keys((key,), self.utf8_for)
        if not self.leased(key):
            return (yield from self.write_one(key, value, ttl, None, forms))
        held = self.holdings.hold()
        try:
            yield from self.write_one(key, value, ttl, held, forms)
        finally:
            self.holdings.let_go(held)

    def write_one(
        self,
        key: str,
        value: Any,
        ttl: CheckedTtl | None,
        held: HeldLeases | None,
        forms: Forms | None = None,
    ) -> Steps[None]:
        """:meth:`set`'s write through the tiers; ``held``: the write takes the key's lease
        and holds it there (None: it takes none, see :meth:`write_leased`); ``forms``: the
        tiers' forms of the value, which the fill stores (:meth:`check_values`)."""
        check_keys((key,), self.utf8_for)
        mark = self.fence.mark()  # before the source is written: later invalidations count
        token = None if held is None else (yield from self.steal_lease(key, held))
        try:
            if self.store is not None:
                yield self.store, (key, value)
        except BaseException:
            if token is not None and self.leasing is not None:
                yield self.leasing.release_leases, ({key: token},)
            raise
        try:
            entry = self.make_entry(value, self.clock(), 0.0, ttl, True)
            # Loads in flight read the source before this write: none of them may fill now;
            # nor may a read of this process that finds the old value in a tier this fill
            # has not reached yet (the invalidation stays open until the fill is done).
            # Without the lease it needed to order it against another write (the steal
            # failed), nothing is filled: see leased().
            entries = {} if held is not None and token is None else {key: entry}
            landed = key in (
                yield from self.fence.write_steps(
                    mark,
                    [key],
                    entries,
                    tokens={key: token} if token is not None else None,
                    sole=self.sole,
                    forms=forms,
                )
            )
            if not landed:
                # Another write (or an invalidation) overlapped this one: which came last at
                # the source cannot be told here, so no tier keeps either value.
                yield from self.invalidate_many([key])
                return
            if self.announce is not None:
                yield self.announce, ([key], (), False, 0.0)
        except GeneratorExit:  # the steps were closed, not run: nothing more may be yielded
            raise
        except BaseException:
            # The source took the value but a tier refused it (CodecError), its ttl was bad,
            # or the writer was interrupted (Ctrl-C, a signal-raised time limit) before the
            # tiers and the other processes had it: left alone, the tiers kept the old value
            # (Redis for its ttl, read by every process; the other processes' memory, never
            # told) and the stolen lease. Invalidated as an overlapped write is.
            yield from self.invalidate_many([key])
            raise

    def set_alone(self, key: str, value: Any, *, ttl: DurationLike | None = None) -> None:
        """:meth:`set` for a chain of one in-process tier and no bus, in plain calls (the
        threaded chain chooses it when it is built, with the ``"through"`` write policy or no
        source): no lease to take and nothing to announce, so the same order (the mark, the
        source, the entry, the fence's invalidation and fill) without the steps' driver."""
        if type(key) is not str:  # the check's call only for a key it may refuse
            check_keys((key,))
        forms = prepared_one(self.value_checks, key, value)  # as set's (copy_on_read)
        lifetime = check_ttl(ttl)
        fence = self.fence
        mark = fence.mark()  # before the source is written: later invalidations count
        if self.store is not None:
            self.store(key, value)
        try:
            entry = self.make_entry(value, self.clock(), 0.0, lifetime, True)
            if forms is not None:
                entry = forms.entry(self.tiers[0].index, key, entry)
            written = fence.write_alone(mark, key, entry)
        except Exception:
            run(self.invalidate_many([key]))  # the source took the value: see set
            raise
        if not written:
            # Overlapped by another write or an invalidation: no tier keeps either value.
            run(self.invalidate_many([key]))

    def set_many(self, items: Mapping[str, Any], ttl: DurationLike | None) -> Steps[None]:
        """See :meth:`TieredCache.set_many`: :meth:`set`'s order for several keys at once."""
        check_keys(items, self.utf8_for)
        items = dict(items)
        forms = self.check_values(items)
        lifetime = check_ttl(ttl)
        if not items:
            return
        keys = list(items)
        if self.write_policy == "around" and self.store is not None:
            try:
                for key, value in items.items():
                    yield self.store, (key, value)
            finally:  # what reached the source must not be served old from any tier
                yield from self.invalidate_many(keys)
            return
        # Which keys the write takes the leases of is decided here, once (leased()).
        leased = [key for key in keys if self.leased(key)]
        held = self.holdings.hold() if leased else None
        try:
            yield from self.write_many(items, lifetime, held, leased, forms)
        finally:
            self.holdings.let_go(held)

    def write_many(
        self,
        items: dict[str, Any],
        ttl: CheckedTtl | None,
        held: HeldLeases | None,
        leased: list[str],
        forms: Forms | None = None,
    ) -> Steps[None]:
        """:meth:`set_many`'s write through the tiers: the leases of the keys ``leased``
        (:meth:`leased`) taken and held in ``held``; ``forms``: the tiers' forms of the
        values (:meth:`check_values`)."""
        keys = list(items)
        mark = self.fence.mark()  # before the source is written: later invalidations count
        tokens = {} if held is None else (yield from self.steal_leases(leased, held))
        stored: list[str] = []
        try:
            if self.store is not None:
                for key, value in items.items():
                    yield self.store, (key, value)
                    stored.append(key)
        except BaseException:
            # The keys written before the failure changed at the source: no tier may keep
            # their old value; the others did not change, and their leases go back.
            unchanged = {key: token for key, token in tokens.items() if key not in stored}
            if unchanged and self.leasing is not None:
                yield self.leasing.release_leases, (unchanged,)
            yield from self.invalidate_many(stored)
            raise
        try:
            now = self.clock()
            needs_lease = set(leased)
            entries = {
                key: self.make_entry(value, now, 0.0, ttl, True)
                for key, value in items.items()
                if key in tokens or key not in needs_lease  # see leased()
            }
            # Loads in flight read the source before this write: none of them may fill now
            # (nor a read of this process meanwhile: see write_one).
            landed = yield from self.fence.write_steps(
                mark, keys, entries, tokens=tokens or None, sole=self.sole, forms=forms
            )
            # Overlapped by another write or an invalidation: no tier keeps either value.
            yield from self.invalidate_many([key for key in keys if key not in landed])
            written = [key for key in keys if key in landed]
            if written and self.announce is not None:
                yield self.announce, (written, (), False, 0.0)
        except GeneratorExit:  # as in set
            raise
        except BaseException:
            yield from self.invalidate_many(keys)  # the source took them: see set
            raise

    def check_values(self, items: Mapping[str, Any]) -> Forms | None:
        """:class:`~tiered_cache.CodecError` for a value a tier could not store, before the
        write sends anything. Found at the tier's fill instead, it came after the source had
        taken the value (a table then held what no read could cache) and the write dropped the
        key from every tier and process (a chain without a source lost its old value).
        Returns the tiers' forms of the values (``TierBase.prepare_value``: the Redis tier's
        encoding), which the write's fill hands to them: the value is encoded once, here, and
        what is sent is what was checked (:mod:`tiered_cache.forms`). ``set`` asks through
        :func:`~tiered_cache.forms.prepared_one`, the same rule for one value."""
        return prepared(self.value_checks, items)

    def leased(self, key: str) -> bool:
        """Whether a write of ``key`` takes its lease on the leasing tier. One that could
        not (the steal failed: Redis timed out, or its breaker is open) does not fill any
        tier but invalidates the key: it cannot be ordered against a write of another
        process that took the lease meanwhile, whose value a lease-less fill would overwrite
        in Redis with this older one (served to everyone until Redis's TTL)."""
        return self.leasing is not None and self.fence.needs_lease(self.leasing, key)

    def steal_lease(self, key: str, held: HeldLeases) -> Steps[str | None]:
        """The lease of ``key`` (one the write takes: :meth:`leased`) for a write, or None
        (the steal failed); taken, it is in ``held``."""
        tier = self.leasing
        assert tier is not None, "a write takes a lease only on a chain with a leasing tier"
        try:
            token: str = yield tier.steal_lease, (key, self.protection.lease_ttl)
        except Exception as exc:
            tier.failed(exc)
            return None
        held.took({key: token})
        return token

    def steal_leases(self, wanted: Sequence[str], held: HeldLeases) -> Steps[dict[str, str]]:
        """The leases of ``wanted`` (keys a write takes them of: :meth:`leased`) for a write
        of them all, taken in one round trip; none if that failed. Taken one by one, a batch's
        first leases expired before its fill under a slow Redis (2,000 keys at load 16: 6 s
        against a lease_ttl of 3 s) and the write was lost from every tier."""
        tier = self.leasing
        assert tier is not None, "a write takes leases only on a chain with a leasing tier"
        if len(wanted) == 1:
            token = yield from self.steal_lease(wanted[0], held)
            return {} if token is None else {wanted[0]: token}
        try:
            tokens: dict[str, str] = yield tier.steal_leases, (wanted, self.protection.lease_ttl)
        except Exception as exc:
            tier.failed(exc)
            return {}
        held.took(tokens)
        return tokens

    def invalidate_many(self, keys: Sequence[str], *, strict: bool = False) -> Steps[None]:
        """See :meth:`TieredCache.invalidate_many`."""
        check_keys(keys, self.utf8_for)
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        try:
            failed = yield from deleting(self.slowest_first, keys)
        finally:
            # Stopped too (a Ctrl-C, a signal-raised time limit; the shared tiers stopped in
            # and not reached owe the delete: tiered_cache.deletes): this process's memory
            # drops them all the same, and its reads of those tiers wait for the delete owed.
            self.fence.invalidate(keys)
        if self.announce is not None and not (yield self.announce, (keys, (), False, 0.0)):
            failed.append("the invalidation bus")
        if strict and failed:
            raise InvalidationIncomplete(
                f"invalidating {len(keys)} key(s) did not reach {', '.join(failed)}"
            )

    def invalidate_prefix(self, prefix: str) -> Steps[None]:
        """See :meth:`TieredCache.invalidate_prefix`."""
        check_keys((prefix,), self.utf8_for)
        if not prefix:
            raise ValueError("an empty prefix would drop everything: use clear()")
        try:
            yield from deleting(self.slowest_first, prefixes=(prefix,))
        finally:  # stopped too: see invalidate_many
            self.fence.invalidate(prefixes=[prefix])
        if self.announce is not None:
            yield self.announce, ((), [prefix], False, self.clock())

    def clear(self, *, strict: bool = False) -> Steps[None]:
        """See :meth:`TieredCache.clear`."""
        try:
            failed = yield from deleting(self.slowest_first, everything=True)
        finally:  # stopped too: see invalidate_many
            self.fence.invalidate(everything=True)
        if self.announce is not None and not (yield self.announce, ((), (), True, 0.0)):
            failed.append("the invalidation bus")
        if strict and failed:
            raise InvalidationIncomplete(f"clearing did not reach {', '.join(failed)}")

    def paid(self, debt: Debt) -> Steps[None]:
        """A shared tier made deletes it owed (:mod:`tiered_cache.owed`): announced again.
        Since the first announcement, another process may have filled the old value into that
        tier under a lease taken before the write, and copied it up into its memory; the
        delete removed it from the tier, this drops the copies. (This process's own fence
        logged the invalidation when it was made: its fills since were judged by it, and its
        reads of the tier waited for the delete.)"""
        if self.announce is None:
            return
        if debt.everything:
            yield self.announce, ((), (), True, 0.0)
            return
        if debt.keys:
            yield self.announce, (debt.keys, (), False, 0.0)
        if debt.prefixes:
            yield self.announce, ((), debt.prefixes, False, self.clock())

    # -- the bus going down and coming back

    def set_bus_connected(
        self, connected: bool, bound: float, *, starting: bool = False
    ) -> ReadState | None:
        """While the bus is down in-process tiers would miss invalidations: they serve only
        copies filled during the outage, each for at most ``bound`` seconds
        (``max_stale_when_disconnected``; bypassed when that is 0), so the source sees about
        one load per key per bound instead of one per read. They are cleared both ways: on
        the way down nothing stale stays for later, on the way up nothing from the outage is
        trusted. Returns None when the chain's L1 lookup may read tier 0, else the state a
        read it leaves tier 0 to carries (:meth:`looked`): not while the bus is down and
        tier 0 is in-process (reads take these paths, which count each read as served by
        memory or gone past it, bypassed memory included).
        ``starting``: not down, not yet subscribed (the same rule), counted apart."""
        if connected:
            bound = 0.0
        # Every read counted while down, bypassed or bounded: with memory bypassed
        # (``bound`` 0) the reads counted neither memory's hits and misses nor a bypass.
        # One new state, whole: a read holds the one it found.
        state = (
            CONNECTED
            if connected
            else ReadState(
                down=True,
                bypass=bound <= 0,
                bounded=bound > 0,
                counts=BUS_STARTING_COUNTS if starting else BUS_DOWN_COUNTS,
            )
        )
        # The rule's one owner: the state reads take (and the tiers' bounds) never trusts
        # memory more than what it holds allows. Going down, they stop trusting it first;
        # coming back, they trust it only once the outage's copies are dropped: set before
        # the drop, a read that takes its state here (get_many, lookup_many, any read of a
        # chain whose in-process tier is not first) took the bus as connected and was served
        # a copy kept while nothing was heard (tests/test_bus_back_order.py). The chain's L1
        # lookup is switched on after this returns, the link shows "connected" after that
        # (BusLink.on_reconnect): each after the drop.
        if not connected:
            self._trust_memory(state, bound)
        # A gap, not a clear: what this process may have missed concerns its memory only,
        # and a write whose lease ordered it in Redis stays there (Fence.fill_steps).
        self.fence.invalidate(gap=True)
        if connected:
            self._trust_memory(state, bound)
        return None if connected or not self.l1_local else state

    def _trust_memory(self, state: ReadState, bound: float) -> None:
        """What reads take the bus to be from now on (``state``), and how far the in-process
        tiers are used (:meth:`set_bus_connected`, the one caller)."""
        for tier in self.tiers:
            if tier.local:
                tier.bypassed = state.bypass
                tier.bounded_for = bound
        self.state = state
