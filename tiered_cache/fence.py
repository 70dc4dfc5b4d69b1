"""The one owner of "nothing read before an invalidation is filled after it".

Every fill of the chain -- a loaded value, a background refresh, a load that outlived its caller,
a copy from a slower tier into a faster one, a ``get_many`` batch, a write-through ``set`` --
takes a :meth:`Fence.mark` *before* it reads, and lands through :meth:`Fence.fill`, which asks
the fence's log of recent invalidations whether one came since the mark. Every invalidation --
``set``, ``invalidate*``, ``clear``, a bus message, a DynamoDB stream record, the bus going down
or coming back -- goes through the one entry point :meth:`Fence.invalidate` (keys, prefixes or
everything), which logs it and drops the in-process copies.

Fill first, check second: the fence checks before it writes (no wasted write, the lease given
back at once) and again after (an invalidation that landed between the check and the write
is undone: the copies just written are deleted). So no invalidation can slip between a check
and a write. With a leasing tier (Redis), the lease carries the same rule across processes: an
invalidation deletes the lease, and the fill under it fails.

In-flight work needs no registry: a mark is all a fill needs to be judged. If the log no longer
reaches back to a mark (more than ``log_size`` invalidations since), the fill is refused, which
is always safe.

A write-through ``set`` invalidates its keys (its loads in flight read the source before it)
and then fills the tiers, slowest first. Its invalidation stays open until that fill is done
(:meth:`Fence.write_steps`, which opens it and closes it in one frame), so marks taken meanwhile
are dated before it: a read of this process that missed memory after the write dropped it may find
the old value still in Redis (the write's fill has not reached it yet) and copy it up into
memory after the write's own memory fill; judged from a mark after the invalidation, nothing
refused that copy and this process served its previous value after its ``set`` returned, until
the memory ``ttl`` (the history checker's seed 2033, schedule 548). A read whose mark comes after
the write is done reads Redis after the write's fill.

A write whose fill of a shared tier failed (a timeout, a value Redis refused while it answers)
would leave that tier the key's *old* value, which every other process reads once the bus
dropped its memory copy: the write deletes the key there instead, and a delete that fails is
owed (:mod:`tiered_cache.owed`), as an invalidation's is. A read's fill that failed leaves
nothing to undo (the tier missed the key), so it deletes nothing. Every fill that failed, of
every shape and either face, goes through :meth:`Fence._failed_fill`, the rule's one home.

A gap (the bus dropped or came back, a sender's number skipped) is an invalidation of memory
alone: this process may have missed messages about its own copies; it says nothing of Redis. So
it refuses what a fill writes into the in-process tiers, but a key filled under its lease is
judged differently: the lease orders it in the shared tier (a writer or an invalidation of the
key meanwhile would have taken or deleted the lease, and the leased write fails), so for it a
gap counts only once its leased write is sent (a message missed after that may be of a later
write), and then only for the in-process tiers. Any other fill -- a copy up from Redis, a fill
without a lease or whose leased write failed -- is refused everywhere by a gap since its mark.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Protocol, TypeVar

from .accessor import TierAccessor
from .deletes import Deletes, deleting
from .errors import CodecError
from .forms import Forms
from .invalidation_log import InvalidationLog
from .leases import PartialFill
from .logs import fields, key_hash, logger_for
from .metrics import CacheMetrics
from .steps import Steps, arun, run
from .tier import Entry

__all__ = ["ChainTier", "Fence", "FillTarget"]

logger = logger_for("chain")

T = TypeVar("T", bound="FillTarget")


class Fence:
    """Decides which fills may land, and applies every invalidation to the in-process tiers.

    Args:
        tiers: the chain's tiers (accessors), fastest first.
        metrics: the chain's counters (``lease_lost``, ``fills_refused``).
        log_size: invalidations remembered; a fill older than that many is refused.
        leases: the chain takes leases (its protection's ``lease`` is not ``"off"``) on the
            first tier that offers them (:meth:`leasing`).
        fill_targets: the accessors fills are given, when they are not ``tiers`` (the asyncio
            chain's, which declare the async tiers' leases): they decide the leasing tier.
    """

    def __init__(
        self,
        tiers: Sequence[TierAccessor],
        metrics: CacheMetrics,
        *,
        log_size: int = 4096,
        leases: bool = True,
        fill_targets: Sequence[FillTarget] | None = None,
    ) -> None:
        self._tiers = list(tiers)
        self._local = [tier for tier in self._tiers if tier.local]
        self._metrics = metrics
        self._log = InvalidationLog(log_size)
        #: The place of the tier the chain leases on (the first that offers leases, unless
        #: the chain takes none), or None: see :meth:`needs_lease`.
        targets: Sequence[FillTarget] = self._tiers if fill_targets is None else fill_targets
        self._lease_index = (
            next((tier.index for tier in targets if tier.leases), None) if leases else None
        )
        #: What a write fills (:meth:`write_steps`): the chain's tiers, whichever face's.
        self._targets = list(targets)
        #: What a copy found in each tier may be written into (:meth:`copy_targets`).
        self._above: list[Sequence[FillTarget]] = [
            [above for above in self._targets[:index] if above.local or not tier.local]
            for index, tier in enumerate(self._targets)
        ]
        #: Where a fail-safe rest on a copy found in each tier goes (:meth:`rest_targets`).
        self._rest: list[Sequence[FillTarget]] = [
            (above or self._targets[index : index + 1])[:1]
            for index, above in enumerate(self._above)
        ]
        #: The fills go to ``tiers`` themselves, whose calls are plain calls (the threaded
        #: chain): a one-key fill without a lease (a write's, a copy-up's) then runs as
        #: :meth:`fill_one`'s plain calls, not as steps. Known from how the fence was built,
        #: once; the chain's paths read it here.
        self.plain = fill_targets is None
        #: Set by :meth:`close`: a load's fill is refused in every tier from then on.
        self._closed = False
        # Taken before every read that may fill (once per miss): the log's own method, with no
        # frame of the fence's around it.
        self.mark: Callable[[], int] = self._log.mark
        """Take before reading anything a fill will write; pass to :meth:`fill`."""

    # -- invalidations: the entry point (and write_alone, below, which records a one-key
    # invalidation itself so that a lone in-process tier drops and fills in one call; both
    # follow the log's order: recorded pending, dropped, then done)

    def invalidate(
        self,
        keys: Iterable[str] = (),
        prefixes: Iterable[str] = (),
        *,
        everything: bool = False,
        gap: bool = False,
    ) -> int:
        """``keys``, every key starting with one of ``prefixes``, or ``everything`` changed:
        no fill that read before now may land, and the in-process copies go. ``gap``: this
        process may have missed invalidations (its bus dropped or came back, a sender's number
        skipped): every in-process copy goes, and no fill that read before now may land in
        memory; a leased fill may still land in the shared tier (see the module's notes).

        Returns the invalidation's number.
        """
        keys = list(keys)
        prefixes = list(prefixes)
        everything = everything or gap
        log = self._log
        if gap:
            number = log.record_gap(pending=True)
        elif everything:
            number = log.record_everything(pending=True)
        else:
            number = log.record(keys, prefixes, pending=True)
        # Logged first, dropped second: a fill that checks after the drop sees the log entry.
        # Until the drop is done, marks are taken from before it (InvalidationLog.mark): a
        # read meanwhile may find the old value in a slower tier not dropped yet and copy it
        # into a faster one already dropped.
        try:
            self._drop(keys, prefixes, everything)
        finally:
            log.done(number)
        return number

    def close(self) -> None:
        """The chain is closed: its in-process copies go, and none lands there again. A gap
        recorded and never done (:meth:`invalidate`'s are done once their drop is): every
        mark taken from now on is dated before it, so every fill in memory, in flight or to
        come, is refused before its write or undone after it. The close does not wait for
        the calls in flight (a caller's load, a write's source call: a hung source would hang
        the shutdown); their fills reached the closed chain's memory after the close had
        emptied it, and it held them for good (tests/test_close_races.py). A gap concerns
        memory alone: a fill under its lease may still land in the shared tier, and a write
        whose fill is refused invalidates the key there (as for any write overlapped).

        A load's fill that comes after the close (:meth:`fill_steps`) is refused in the
        shared tiers too: they are closed, or about to be, and the loader gave its leases
        back. Written, it failed there: a tier failure logged and counted on a closed chain,
        then an undo owed to the closed tier, logged as a delete it could not make (a
        loader that closed its own chain, every time)."""
        self._closed = True
        self._log.record_gap(pending=True)
        self._drop((), (), True)

    def _drop(self, keys: Sequence[str], prefixes: Sequence[str], everything: bool) -> None:
        """An invalidation's drop of the in-process copies."""
        for tier in self._local:
            if everything:
                tier.clear()
                continue
            tier.delete_many(keys)
            for prefix in prefixes:
                tier.delete_prefix(prefix)

    def write_steps(
        self,
        mark: int,
        keys: Sequence[str],
        entries: Mapping[str, Entry],
        *,
        tokens: Mapping[str, str] | None = None,
        sole: bool = False,
        forms: Forms | None = None,
    ) -> Steps[AbstractSet[str]]:
        """A write-through ``set`` of ``keys``: their invalidation (loads in flight read the
        source before the write: none of them may fill now), then the fill of ``entries``
        (those of ``keys`` it may write; ``tokens``: their leases) into the chain's tiers,
        which that invalidation does not refuse. Returns the keys that landed. In the threaded
        chain a one-key fill without a lease goes as :meth:`fill_one`'s plain calls.
        ``sole``: the chain has no source, so the written values are the only copy (see
        :meth:`fill_steps`). ``forms``: the tiers' own forms of the values, made by the
        write's check (:mod:`tiered_cache.forms`), which the fill hands to each tier.

        The invalidation stays open until the fill is done (see the module's notes), and is
        closed here whatever happens: opened and closed in this one frame, the ``try`` right
        after the record. Opened by one call and closed in the caller's ``finally``, an
        interrupt (Ctrl-C) raised as that call returned, before the caller's ``try``, left it
        open for good: every later mark dated before it, every fill of a key invalidated
        since refused."""
        log = self._log
        own = log.record(keys, (), pending=True)
        try:
            self._drop(keys, (), False)
            if self.plain and not tokens and len(entries) == 1:
                ((key, entry),) = entries.items()
                landed = self.fill_one(
                    mark, key, entry, self._tiers, own, sole=sole, written=True, forms=forms
                )
                return {key} if landed else set()
            if not entries:
                return set()
            return (
                yield from self.fill_steps(
                    mark,
                    entries,
                    self._targets,
                    tokens=tokens,
                    own=own,
                    sole=sole,
                    written=True,
                    forms=forms,
                )
            )
        finally:
            log.done(own)

    # -- what a copy may be written into

    def copy_targets(self, index: int) -> Sequence[FillTarget]:
        """The tiers a copy found in tier ``index`` is copied up into (filled, through the
        fence, by the read that found it): the one home of that rule, which every copy-up
        asks (a hit below tier 0 of a ``get`` or a ``get_many``, either face; a lease
        holder's value found in the leasing tier) and a fail-safe rest (:meth:`rest_targets`).

        The faster tiers; but a copy an in-process tier holds is this process's alone: it may
        go into an in-process tier above, never into a shared one, whatever the bus. What
        another process invalidated reaches this process's memory by the bus, after that
        process deleted it from the shared tiers: until the message arrives (a bus in
        flight, or down: an outage copy, ``max_stale_when_disconnected``) memory may hold
        the old value, served within that bound. Copied up into Redis, it was every process's,
        until its expiry: the message, arriving after the copy-up and its fence's check, drops
        memory's copy alone. Until 2026-12-07 a read did so while the bus was down
        (adapters/redis/tests/test_redis_outage_copies_stay_below.py), until 2026-12-08 while
        it was connected, in the message's flight
        (adapters/redis/tests/test_redis_memory_copies_stay_below.py). A leasing tier takes
        no copy without its lease (:meth:`needs_lease`) already."""
        return self._above[index]

    def rest_targets(self, index: int) -> Sequence[FillTarget]:
        """The tier a fail-safe rest on a stale copy found in tier ``index`` goes into
        (``BatchLoad.rest_source``: the copy served as fresh for ``fail_safe_throttle``, so a
        failing source is not asked by every read): the fastest tier that copy may be
        copied up into (:meth:`copy_targets`, the one rule of what goes up), else the tier it
        was found in, where the next read finds it. Until 2026-12-08 it was tier 0 whatever
        the copy's tier: a Redis-first chain wrote memory's copy into Redis, every process's
        (adapters/redis/tests/test_redis_outage_rest_stays_below.py)."""
        return self._rest[index]

    # -- the lease rule

    def leasing(self, tiers: Sequence[T]) -> T | None:
        """The tier of ``tiers`` (the chain's, or some of them: a copy-up's) the chain leases
        on, or None: the one answer every path uses (loads, writes, fills)."""
        index = self._lease_index  # ``tiers`` is the chain's or a prefix: the tier's place
        if index is None or index >= len(tiers):
            return None
        tier = tiers[index]
        # Not a prefix (an outage copy's targets, the in-process tiers above it: copy_targets):
        # whatever tier stands at that place is another.
        return tier if tier.index == index else None

    def needs_lease(self, tier: FillTarget, key: str) -> bool:
        """Whether ``key`` may be written into ``tier`` only under its lease: the rule's one
        home, which every fill (:meth:`fill_steps`, :meth:`fill_one`, :meth:`write_alone`)
        and write (``ChainPaths.leased``) asks. A key the chain's leasing tier can lease is
        written there only with its token: a load or write without it (the lease could not be
        taken: the tier timed out, or the holder took longer than ``lease_wait``) fills the
        faster tiers only, since a write of another process that took the lease meanwhile
        would be overwritten with this older value, served to every process until the tier's
        TTL."""
        return tier.index == self._lease_index and tier.can_lease(key)

    # -- fills

    def overtaken(self, mark: int, keys: Collection[str], *, own: int | None = None) -> list[str]:
        """Those of ``keys`` an invalidation since ``mark`` (other than ``own``) concerns."""
        return self._log.overtaken(mark, keys, ignore=own)

    def may_join(self, key: str, mark: int) -> bool:
        """Whether a miss of ``key`` may wait for a load that read under ``mark`` (one in
        flight, or one its caller gave up on) instead of starting its own: only if no
        invalidation of ``key`` came since ``mark``. Otherwise that load may bring back what
        the invalidation removed: a miss waits for a flight in progress to end without taking
        its value, then loads (:class:`~tiered_cache.singleflight.FlightTable`: one load of a
        key at a time); a load its caller gave up on is not waited for (timed_slots.py).
        The one copy of this rule: every path asks here."""
        return not self._log.overtaken(mark, [key])

    def fill(
        self,
        mark: int,
        entries: Mapping[str, Entry],
        tiers: Sequence[TierAccessor],
        *,
        tokens: Mapping[str, str] | None = None,
        own: int | None = None,
    ) -> AbstractSet[str]:
        """Write ``entries`` into ``tiers`` (fastest first; written deepest first), unless an
        invalidation since ``mark`` concerns them. Returns the keys that landed.

        ``tokens``: leases held on the leasing tier among ``tiers``; those keys are written
        there only while their lease holds, and a key whose lease was lost (a writer came) is
        kept out of the faster tiers too. Leases of refused keys are given back.
        ``own``: the writer's own invalidation, which does not refuse its fill.
        Raises :class:`~tiered_cache.CodecError` (leases not yet used are given back).
        """
        return run(self.fill_steps(mark, entries, tiers, tokens=tokens, own=own))

    async def afill(
        self,
        mark: int,
        entries: Mapping[str, Entry],
        tiers: Sequence[FillTarget],
        *,
        tokens: Mapping[str, str] | None = None,
        own: int | None = None,
    ) -> AbstractSet[str]:
        """:meth:`fill` for the asyncio chain (its accessors' writes are coroutines)."""
        return await arun(self.fill_steps(mark, entries, tiers, tokens=tokens, own=own))

    def fill_steps(
        self,
        mark: int,
        entries: Mapping[str, Entry],
        tiers: Sequence[FillTarget],
        *,
        tokens: Mapping[str, str] | None = None,
        own: int | None = None,
        sole: bool = False,
        written: bool = False,
        forms: Forms | None = None,
    ) -> Steps[AbstractSet[str]]:
        """The fill, as steps (:mod:`tiered_cache.steps`), for the sync and the asyncio
        chains; :meth:`fill_one` is its one-key, lease-less form in plain calls.

        ``sole``: a write of a chain without a source. Its values are the only copy, not a
        copy read before anything: the shared tiers order those written without a lease
        (every key on a chain without leases; on one that leases, a key its leasing tier
        cannot lease, braces of its own on a cluster) by their own write, as a lease orders a
        leased write, so an invalidation since ``mark`` (a gap, or another write's or
        invalidation's message) keeps them out of memory alone: what the shared tier holds
        afterwards is whichever came last there. Refused everywhere, as a copy is, the write
        was lost: a sourceless chain's ``set`` made while its bus subscribed (a Django
        backend's first) was undone; and of two processes writing one key at once, the
        first to hear of the other deleted from Redis the other's value, written last there:
        neither was kept (adapters/redis/tests/test_redis_sole_writes_overlapping.py). So
        a sole write's leased keys are ordered by their own write too: its leases only keep
        out the fills of loads in flight (a loader's), and its plain write voids them
        (:meth:`_write_sole`). Filled under them, a write whose lease
        another writer stole before its fill was not written and invalidated the key: it
        deleted the other's value, or its lease, whose fill then failed: both lost.

        ``written``: the fill of a write (:meth:`write_steps`): a tier that failed it is
        followed by :meth:`_failed_fill`. ``forms``: its tiers' own forms of the values
        (:mod:`tiered_cache.forms`): each tier is handed its own (:meth:`_stored`).

        No ``tiers`` (a copy from the first tier, a lease holder's value found in a leasing
        tier that comes first, a chain without tiers): no step, nothing judged or counted,
        since there is no copy to refuse; every key counts as landed, as none is kept
        anywhere. The one home of that rule: callers pass what they have to fill."""
        if not tiers or (self._closed and not written):
            return self._closed_out(entries) if tiers else entries.keys()
        tokens = dict(tokens) if tokens else {}
        leasing = self.leasing(tiers)
        # Until their leased write is sent, the keys with a lease are judged by the
        # invalidations of the shared tiers only (see _judge).
        leased = set(tokens) if leasing is not None else set()
        # Set at the leased write: the keys it confirmed under their leases, where the log
        # stood when it was sent, and those of them a gap since keeps out of memory. A sole
        # write's keys, leased or not, are confirmed by their own write, ordered from its mark
        # (or from the write into the leasing tier, which sends them: _write_sole).
        bare = set(entries) if sole else set()
        confirmed: set[str] = set(bare)
        ordered: int | None = mark if bare else None
        leased |= bare
        # A sole write's keys invalidated since its mark already: kept out of memory at once.
        refused, early = self._judge(mark, entries, own, leased, ordered, sole=sole)
        kept_out: set[str] = set(early)
        if early:
            self._refuse(early)
        if refused:
            self._refuse(refused)
            given_back = {key: tokens.pop(key) for key in refused if key in tokens}
            if leasing is not None and given_back:
                yield leasing.release_leases, (given_back,)
            entries = {key: entry for key, entry in entries.items() if key not in refused}
            if not entries:
                return set()
        # A copy only when the leased fill may drop keys from it (a fill after every miss
        # or set with no leasing tier: no copy).
        landing: Mapping[str, Entry] = dict(entries) if leasing is not None else entries
        filled: list[FillTarget] = []
        refused_value: CodecError | None = None
        try:
            for tier in reversed(tiers):
                if tier.bypassed:
                    continue
                if tier is leasing:
                    assert isinstance(landing, dict)
                    ordered = self.mark()
                    write = self._write_sole if sole else self._fill_leased
                    confirmed = (
                        yield from write(tier, landing, tokens, written, forms)
                    ) | bare.intersection(landing)
                    tokens = {}
                    filled.append(tier)
                    # Before the faster tiers are written: what came since, gaps included.
                    refused = yield from self._undo(
                        mark,
                        landing,
                        own,
                        (confirmed, ordered),
                        written=filled,
                        out=kept_out,
                        sole=sole,
                    )
                    for key in refused:
                        del landing[key]
                elif kept_out and tier.local:
                    yield tier.set_many, (self._stored(tier, landing, forms, kept_out),)
                    filled.append(tier)
                else:
                    yield from self._fill_tier(tier, landing, written, forms)
                    filled.append(tier)
                if not landing:
                    break
        except CodecError as exc:
            refused_value = exc
        # The give-back is yielded after the except block, never in one: compiled (mypyc
        # 2.4), a generator suspended in an except block left the thread handling what it
        # caught, for good (tests/test_compiled_hazards.py).
        if refused_value is not None:
            if leasing is not None and tokens:
                yield leasing.release_leases, (tokens,)
            raise refused_value
        # Invalidated between the check and the write: undo, deleting is always safe.
        late = yield from self._undo(
            mark, landing, own, (confirmed, ordered), written=filled, out=kept_out, sole=sole
        )
        return set(landing).difference(late)

    def _closed_out(self, entries: Mapping[str, Entry]) -> AbstractSet[str]:
        """A load's copy after :meth:`close`: refused in every tier (a write's fill is not:
        its source has the new value, and the shared tiers must not keep the old one). Its
        leases went back at the close."""
        self._refuse(list(entries))
        return set()

    def _undo(
        self,
        mark: int,
        landing: Mapping[str, Entry],
        own: int | None,
        lease: tuple[Collection[str], int | None],
        *,
        written: Sequence[FillTarget],
        out: set[str],
        sole: bool = False,
    ) -> Steps[list[str]]:
        """Delete from the ``written`` tiers what an invalidation came for (:meth:`_judge`;
        ``lease``: the keys the leased write confirmed, and where the log stood when it was
        sent): returns the keys of ``landing`` no tier may keep; those only memory may not
        keep join ``out`` (kept out of memory), and only the in-process tiers drop them.
        ``sole``: as for :meth:`fill_steps`."""
        refused, memory = self._judge(mark, landing, own, *lease, sole=sole)
        memory = [key for key in memory if key not in out]
        if not refused and not memory:
            return refused
        self._metrics.count("fills_refused", len(refused) + len(memory))
        out.update(memory)
        yield from self._undone(written, refused, memory)
        return refused

    @staticmethod
    def _undone(
        written: Sequence[FillTarget], refused: Sequence[str], memory: Sequence[str] = ()
    ) -> Steps[None]:
        """The one undo of a fill (:meth:`_undo`'s, :meth:`fill_one`'s): ``memory`` (keys
        only the in-process tiers may not keep) dropped from those of ``written`` first, then
        ``refused`` deleted from ``written`` in the order they were written, the slowest
        first (an invalidation's order: a read of this process between the two deletes finds
        the refused copy still in memory, not a slower tier's to copy up). The drop first:
        it makes no I/O, and after the walk a stop in a shared tier's delete (Ctrl-C, a
        cancellation), which leaves the tiers not reached owing ``refused`` only, skipped it
        and left the value in memory, served until memory's ``ttl``."""
        if memory:
            for tier in written:
                if tier.local:
                    yield tier.delete_many, (memory,)
        if refused:
            yield from deleting(written, refused)

    def _judge(
        self,
        mark: int,
        keys: Collection[str],
        own: int | None,
        leased: Collection[str],
        ordered: int | None,
        *,
        sole: bool = False,
    ) -> tuple[list[str], list[str]]:
        """Of ``keys``, ``(those no tier may keep, those only memory may not keep)``.

        A key not in ``leased`` is refused by any invalidation since ``mark`` (a gap too: a
        copy from Redis read before it may be older than a write whose message it hid). A key
        in ``leased`` (its lease held, or its leased write confirmed) is refused by those of
        the shared tiers since ``mark`` only: its lease ordered it there. A gap since
        ``ordered`` (its leased write sent; None: not yet) keeps it out of memory alone, for
        a message missed after the leased write may be of a later write by another process.
        ``sole`` (a write of a chain without a source, every key in ``leased``): no
        invalidation refuses a key in the shared tiers, which order it (see
        :meth:`fill_steps`); one since ``ordered`` keeps it out of memory.
        """
        log = self._log
        if not leased:
            return log.overtaken(mark, keys, own), []
        plain = [key for key in keys if key not in leased]
        held = [key for key in keys if key in leased]
        refused = log.overtaken(mark, plain, own) if plain else []
        if held and not sole:
            refused += log.overtaken(mark, held, own, True)
        if ordered is None or not held:
            return refused, []
        gone = set(refused)
        return refused, [key for key in log.overtaken(ordered, held, own) if key not in gone]

    def fill_one(
        self,
        mark: int,
        key: str,
        entry: Entry,
        tiers: Sequence[TierAccessor],
        own: int | None = None,
        *,
        sole: bool = False,
        written: bool = False,
        forms: Forms | None = None,
    ) -> bool:
        """:meth:`fill` of one key without a lease (the threaded chain's fill after a miss, a
        copy-up, a write), in plain calls rather than steps: the same check before the write
        and after it, with nothing to give back. True if it landed. ``sole``: as for
        :meth:`fill_steps`, an invalidation keeps the write out of memory alone; ``written``:
        the fill of a write (:meth:`_failed_fill` if a tier failed it); ``forms``: its
        tiers' own forms of the value (:meth:`fill_steps`)."""
        keys = (key,)
        log = self._log
        early = log.overtaken(mark, keys, own)  # positional: a call with keywords costs more
        if early:
            self._refuse(keys)
            if not sole:
                return False
        # The rule's call only in a chain that leases: a memory-only chain's miss pays nothing.
        leases = self._lease_index is not None
        for tier in reversed(tiers):
            if tier.bypassed or (early and tier.local) or (leases and self.needs_lease(tier, key)):
                continue
            stored = entry if forms is None else forms.entry(tier.index, key, entry)
            if not tier.set_one(key, stored):
                run(self._failed_fill(tier, keys, written))
        if early or not log.overtaken(mark, keys, own):
            return True
        # Invalidated between the check and the write: undo, deleting is always safe (from
        # every tier given, in the order written: no list of the written ones is kept on the
        # common path).
        self._metrics.count("fills_refused")
        run(self._undone([tier for tier in reversed(tiers) if tier.local or not sole], keys))
        return sole

    def write_alone(self, mark: int, key: str, entry: Entry) -> bool:
        """A write of one key into a chain of one in-process tier
        (:meth:`~tiered_cache.paths.ChainPaths.set_alone`), in plain calls: what
        :meth:`invalidate` of the key and then :meth:`fill_one` of ``entry`` do (that
        invalidation does not refuse it), with the tier's drop and fill made one step
        (``TierBase.replace``). Logged first: marks stay before the invalidation until the
        tier has dropped the old copy and taken the new one. The fill is checked against the
        invalidations since ``mark`` before the write (refused: the old copy is only dropped)
        and after it (undone). True if it landed."""
        tier = self._tiers[0]
        keys = (key,)
        log = self._log
        leases = self._lease_index is not None  # as in fill_one: no call without leases
        own = log.record_key(key)
        try:
            refused = log.overtaken(mark, keys, own)
            # replace: the drop and the fill in one step; refused (its breaker open, the
            # tier failing), the old copy is dropped all the same, as an invalidation's is.
            if (
                refused
                or tier.bypassed
                or (leases and self.needs_lease(tier, key))
                or not tier.set_one(key, entry, True)
            ):
                tier.delete_many(keys)
        finally:
            log.done(own)
        if refused:
            self._refuse(keys)
            return False
        if not log.overtaken(mark, keys, own):
            return True
        # Invalidated between the check and the write: undo, as fill_one does.
        self._metrics.count("fills_refused")
        tier.delete_many(keys)
        return False

    def _refuse(self, keys: Sequence[str]) -> None:
        """What was read may predate an invalidation: the callers that asked before it are
        served, but no tier keeps it."""
        self._metrics.count("fills_refused", len(keys))
        for key in keys[:10]:
            logger.debug(
                "not caching key %s: invalidated during its load",
                key_hash(key),
                extra=fields("fill_cancelled", key=key),
            )

    @staticmethod
    def _stored(
        tier: FillTarget,
        entries: Mapping[str, Entry],
        forms: Forms | None,
        out: AbstractSet[str] = frozenset(),
    ) -> Mapping[str, Entry]:
        """``entries`` (those of them not ``out``) as ``tier`` stores them: with its own forms
        of a write's values (:mod:`tiered_cache.forms`), if it has any."""
        if out:
            entries = {key: entry for key, entry in entries.items() if key not in out}
        return entries if forms is None else forms.entries(tier.index, entries)

    def _fill_tier(
        self,
        tier: FillTarget,
        entries: Mapping[str, Entry],
        written: bool,
        forms: Forms | None = None,
    ) -> Steps[None]:
        """Fill ``tier`` with ``entries``, no lease; ``written``: the fill of a write
        (:meth:`_failed_fill` if the tier failed it); ``forms``: as for :meth:`fill_steps`."""
        stored: bool = yield tier.set_many, (self._stored(tier, entries, forms),)
        if not stored:
            yield from self._failed_fill(tier, list(entries), written)

    def _failed_fill(self, tier: FillTarget, keys: Sequence[str], written: bool) -> Steps[None]:
        """What a fill ``tier`` failed for ``keys`` is followed by: the rule's one home, which
        every fill that failed goes through (plain, leased or sole, sync or asyncio, one key or
        a batch; :meth:`fill_one` runs it in plain calls). A write's (``written``) has the keys
        deleted from a shared tier, not left with their old value (see the module's notes),
        a delete that fails owed by the tier; a read's deletes nothing (the tier missed the
        key), nor does an in-process tier's (the write's invalidation dropped its copy)."""
        if written and keys and not tier.local:
            yield from deleting((tier,), keys)

    def _write_sole(
        self,
        tier: FillTarget,
        landing: dict[str, Entry],
        tokens: Mapping[str, str],
        written: bool = True,
        forms: Forms | None = None,
    ) -> Steps[set[str]]:
        """A sole write into the leasing tier (see :meth:`fill_steps`): the values written
        plainly, whoever holds their leases now. A leasing tier's write voids the key's lease
        (its contract: the conformance suite's ``..._lease_is_voided_by_deletes_and_writes``),
        the one ``tokens`` hold included: nothing to give back, unless the write failed (the
        tier may be up: a value too large for it resets the connection alone), when they go
        back as :meth:`_fill_leased`'s do. Until the write no load could take the leases, and
        one that held a lease before the write stole it fails its fill. A write that failed
        deletes the keys (:meth:`_failed_fill`: a sole write is always ``written``). Returns
        no key: none was confirmed by a lease (the write's own order confirms them)."""
        stored: bool = yield tier.set_many, (self._stored(tier, landing, forms),)
        if not stored:
            if tokens:
                yield tier.release_leases, (tokens,)
            yield from self._failed_fill(tier, list(landing), written)
        return set()

    def _fill_leased(
        self,
        tier: FillTarget,
        landing: dict[str, Entry],
        tokens: Mapping[str, str],
        written: bool = False,
        forms: Forms | None = None,
    ) -> Steps[set[str]]:
        """Fill the leasing tier: keys with a token under their lease, the others only if
        they need none (:meth:`needs_lease`); drop from ``landing`` the keys whose lease was
        lost or whose fill failed. Returns the keys the tier took under their leases (not
        those kept because it failed: nothing confirmed their order). ``written``: the fill of
        a write (:meth:`_failed_fill` for the keys the tier failed)."""
        plain = {
            key: entry
            for key, entry in landing.items()
            if key not in tokens and not self.needs_lease(tier, key)
        }
        stored = self._stored(tier, landing, forms)
        leased = {key: (stored[key], tokens[key]) for key in landing if key in tokens}
        if plain:
            yield from self._fill_tier(tier, plain, written, forms)
        if not leased:
            return set()
        confirmed: set[str] = set()
        failed = False
        unfilled: list[str] = []
        try:
            kept: set[str] = yield tier.fill_with_leases, (leased,)
        except CodecError:
            raise
        except PartialFill as exc:
            # Redis answered, so a writer may have come for the keys whose fill failed: keep
            # those out of the faster tiers too.
            tier.failed(exc)
            kept = confirmed = exc.kept
            unfilled = [key for key in leased if key not in kept]
        except Exception as exc:
            tier.failed(exc)
            kept = set(leased)  # the shared tier failed: nothing there to protect
            failed = True
        else:
            confirmed = kept
            self._metrics.fill(tier.index, len(kept))
            if len(kept) < len(leased):
                # Their leases were deleted by invalidations, or taken by writers, after our
                # read: the old values must not reach any tier.
                self._metrics.count("lease_lost", len(leased) - len(kept))
        if failed:
            # Yet it may be up (a value too large for it resets the connection alone): the
            # leases go back, or every other process waits lease_wait for a fill that never
            # comes. The give-back is token-checked: a fill that landed took its lease already.
            # Yielded after the except block, never in one (see fill_steps).
            yield tier.release_leases, ({key: token for key, (_, token) in leased.items()},)
            unfilled = list(leased)
        yield from self._failed_fill(tier, unfilled, written)
        for key in leased:
            if key not in kept:
                del landing[key]
        return confirmed


class FillTarget(Deletes, Protocol):
    """What a fill needs of a tier accessor: :class:`~tiered_cache.accessor.TierAccessor`, or
    the asyncio chain's, whose writes are coroutines of the same names (its deletes too,
    through :func:`~tiered_cache.deletes.deleting`)."""

    index: int
    leases: bool
    local: bool
    bypassed: bool

    def failed(self, exc: Exception) -> None: ...

    def set_many(self, entries: Mapping[str, Entry]) -> Any: ...

    def fill_with_leases(self, leased: Mapping[str, tuple[Entry, str]]) -> Any: ...

    def release_leases(self, tokens: Mapping[str, str]) -> Any: ...

    def can_lease(self, key: str) -> bool: ...


class ChainTier(FillTarget, Protocol):
    """Everything the shared steps (:mod:`tiered_cache.paths`, :mod:`tiered_cache.lease_wait`)
    use of a tier accessor: the methods that do I/O return a value in the sync accessor and a
    coroutine in the asyncio chain's."""

    name: str
    utf8_keys: bool
    bounded_for: float
    inline: bool

    def prepare_value(self, value: Any) -> Any: ...

    def get(self, key: str, count: bool = True) -> Any: ...

    def get_many(self, keys: Sequence[str], now: float, stale: dict[str, Entry]) -> Any: ...

    def hit(self, n: int = 1) -> None: ...

    def steal_lease(self, key: str, ttl: float) -> Any: ...

    def steal_leases(self, keys: Sequence[str], ttl: float) -> Any: ...

    def acquire_lease(self, key: str, ttl: float) -> Any: ...

    def acquire_leases(self, keys: Sequence[str], ttl: float) -> Any: ...
