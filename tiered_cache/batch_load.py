"""Loading a batch of keys and serving stale values when the source fails: written once as
steps (:mod:`tiered_cache.steps`) for the threaded and the asyncio loaders.

The leases of all the keys are asked for in one round trip; the keys this process got are
loaded at once, before it waits for the others' holders (so that two processes holding each
other's keys never wait on each other). Keys whose holder takes longer than ``lease_wait`` are
loaded without a lease, in one more batch. A key the source failed for is served its stale
value under fail-safe (and tier 0 rests the source for ``fail_safe_throttle``), else its error;
a throttle that reaches a caller rests the key (``throttle_backoff``, :mod:`.throttle_rest`).
Both rests are decided here, for every load path of both loaders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import PartialLoadError, SourceResting
from .fence import ChainTier, Fence
from .held_leases import HeldLeases, give_back_all
from .lease_wait import LeaseWait
from .logs import fields, key_hash, logger_for
from .metrics import CacheMetrics
from .protection import Protection
from .singleflight import Leading
from .stale_copy import StaleCopy
from .stamp import CheckedTtl
from .steps import Steps
from .throttle_rest import ThrottleRests
from .tier import MISSING, Entry
from .timed_slots import ServeStale

logger = logger_for("chain")

#: Called as each part of a batch is ready: ``(entries to serve, errors)``.
Ready = Callable[[Mapping[str, Entry], Mapping[str, BaseException]], None]
#: What the rests answered (:meth:`BatchLoad.rested`): ``(entries to serve, errors)``.
Answers = tuple[dict[str, Entry], dict[str, BaseException]]
#: Makes an entry: ``(value, now, load duration, ttl)`` (:class:`~tiered_cache.stamp.EntryMaker`).
MakeEntry = Callable[[Any, float, float, "CheckedTtl | None"], Entry]


#: A stale copy a read served, and the fence mark it was read under: a failed background
#: refresh rests the source on it (:meth:`BatchLoad.rest_source`) judged by that mark.
Stale = tuple[StaleCopy, int]


def _one(key: str, rested: Steps[Answers]) -> Steps[Entry]:
    served, errors = yield from rested
    if key in errors:
        raise errors[key]
    return served[key]


def calmed(stale: Entry, now: float, throttle: float) -> Entry | None:
    """``stale`` served as fresh for ``throttle`` seconds (never past its hard expiry), so a
    failing source is not asked again by every read; None if there is nothing to rest on."""
    if throttle <= 0 or now >= stale.hard_expiry:
        return None
    return stale.replace(soft_expiry=min(now + throttle, stale.hard_expiry))


@dataclass(frozen=True)
class BatchLoad:
    """The parts batch loads and fail-safe use. ``load_many(keys, loader, ttl)`` reads the
    source and returns entries (a plain function or a coroutine: the driver decides);
    ``sleep`` waits between looks at the leases."""

    tiers: Sequence[ChainTier]
    fence: Fence
    metrics: CacheMetrics
    protection: Protection
    clock: Callable[[], float]
    make_entry: MakeEntry
    load_many: Callable[..., Any]
    sleep: Callable[[float], Any]
    lease_wait: LeaseWait | None
    #: The keys the source throttled lately, with nothing stale to rest on.
    rests: ThrottleRests = field(init=False)

    def __post_init__(self) -> None:
        rests = ThrottleRests(self.protection.throttle_backoff, self.clock, self.fence.overtaken)
        object.__setattr__(self, "rests", rests)

    def rested(
        self, keys: Sequence[str], mark: int, stale: Mapping[str, StaleCopy]
    ) -> Steps[Answers] | None:
        """The one shape of the rest (:mod:`.throttle_rest`) that every load goes through,
        before anything else (a lease): None when no key of ``keys`` rests (load them all);
        else the steps that answer the resting ones without a request, each as
        :meth:`load_failed` answers its rest's error (its ``stale`` entry under fail-safe,
        else that error). Returns ``(entries to serve, errors)``; the other keys are loaded.
        """
        resting = self.rests.resting(keys)
        if not resting:
            return None
        self.metrics.count("loads_rested", len(resting))
        return self._answer_rests(resting, mark, stale)

    def _answer_rests(
        self, resting: Mapping[str, SourceResting], mark: int, stale: Mapping[str, StaleCopy]
    ) -> Steps[Answers]:
        served: dict[str, Entry] = {}
        errors: dict[str, BaseException] = {}
        for key, error in resting.items():
            try:
                served[key] = yield from self.load_failed(key, mark, stale.get(key), error)
            except SourceResting as exc:
                errors[key] = exc
        return served, errors

    def rested_one(self, key: str, mark: int, stale: StaleCopy | None) -> Steps[Entry] | None:
        """:meth:`rested` for a load of one key (both loaders' ``load``): None (load it), or
        the steps that serve its answer or raise its error."""
        rested = self.rested((key,), mark, {} if stale is None else {key: stale})
        return None if rested is None else _one(key, rested)

    def for_flights(
        self,
        leading: Leading[Any],
        mark: int,
        loader: Any,
        ttl: CheckedTtl | None,
        *,
        stale: Mapping[str, StaleCopy],
        held: HeldLeases,
    ) -> Steps[tuple[dict[str, Any], dict[str, BaseException]]]:
        """Get a value for every key of ``leading`` (the flights the caller leads): filled by
        another process's lease holder, or loaded here in batches and filled into the tiers.
        Each key's flight lands as soon as its value (or its error) is there; whatever stops
        the batch, ``leading`` lands the others as the caller's ``with`` block ends. The
        leases it takes are in ``held`` (the loader's, which its close() gives back).

        Returns ``(values, errors)``: a key the source failed for gets its stale value under
        fail-safe, else its error.
        """
        values: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}

        def ready(entries: Mapping[str, Entry], failed: Mapping[str, BaseException]) -> None:
            landed = {key: entry.value for key, entry in entries.items()}
            leading.land(landed, failed)
            values.update(landed)
            errors.update(failed)

        try:
            keys = list(leading.flights)
            rested = self.rested(keys, mark, stale)
            if rested is not None:
                ready(*(yield from rested))
                keys = [key for key in keys if key not in values and key not in errors]
            if keys:  # none when every key rests: no call of the source with no keys
                yield from self.run(keys, mark, loader, ttl, stale=stale, ready=ready, held=held)
        except BaseException:
            # Whatever stopped the batch from the step its leases' answer came back in (an
            # interrupt in the instant after it included): the leases it still holds go back.
            # (Its flights not landed yet are landed by ``leading``, their one owner.)
            if self.lease_wait is not None:
                yield from give_back_all((held,), self.lease_wait.tier)
            raise
        return values, errors

    def run(
        self,
        keys: list[str],
        mark: int,
        loader: Any,
        ttl: CheckedTtl | None,
        *,
        stale: Mapping[str, StaleCopy],
        ready: Ready,
        held: HeldLeases,
    ) -> Steps[None]:
        """Get every key of ``keys`` a value or an error, handing each part to ``ready``;
        the leases taken are in ``held`` until handed on (the caller gives back the rest)."""
        if self.lease_wait is None:
            ready(*(yield from self.load_and_fill(keys, mark, loader, ttl, stale, held=held)))
            return
        protection = self.protection
        pending = keys
        deadline: float | None = None
        while pending:
            tokens, filled, waiting = yield from self.lease_wait.batch(pending, mark, held)
            if filled:
                ready(filled, {})
            if tokens:
                if deadline is not None:  # holders that died left their leases to expire
                    self.metrics.count("lease_takeovers", sum(1 for t in tokens.values() if t))
                ready(
                    *(
                        yield from self.load_and_fill(
                            list(tokens), mark, loader, ttl, stale, held=held
                        )
                    )
                )
            if not waiting:
                return
            now = self.clock()
            if deadline is None:
                self.metrics.count("lease_waits", len(waiting))
                deadline = now + protection.lease_wait
            elif now >= deadline:
                self.metrics.count("lease_wait_expired", len(waiting))
                ready(
                    *(yield from self.load_and_fill(waiting, mark, loader, ttl, stale, held=held))
                )
                return
            pending = waiting
            yield self.sleep, (protection.lease_poll,)

    def load_and_fill(
        self,
        keys: list[str],
        mark: int,
        loader: Any,
        ttl: CheckedTtl | None,
        stale: Mapping[str, StaleCopy],
        *,
        held: HeldLeases,
    ) -> Steps[tuple[dict[str, Entry], dict[str, BaseException]]]:
        """Load ``keys`` in one batch and fill them into the tiers (under the leases of
        ``held`` among them; an interrupt leaves the ones not handed on to the caller's
        give-back).

        Returns ``(entries to serve, errors)``: what the source read (all of it, or what a
        :class:`~tiered_cache.PartialLoadError` carries), stale entries under fail-safe for
        the keys it failed, and the error of each key left.
        """
        holding = held.tokens()
        leases = {key: holding[key] for key in keys if key in holding}
        leasing = self.lease_wait.tier if self.lease_wait is not None else None
        failure: Exception | None = None
        try:
            loaded: dict[str, Entry] = yield self.load_many, (keys, loader, ttl)
        except PartialLoadError as exc:
            failure = exc
            loaded = self.entries(exc.found, keys, ttl, self.clock(), 0.0, complete=False)
        except Exception as exc:
            failure = exc
            loaded = {}
        errors: dict[str, BaseException] = {}
        served: dict[str, Entry] = dict(loaded)
        if failure is not None:
            unread = [key for key in keys if key not in loaded]
            given_back = {key: leases.pop(key) for key in unread if key in leases}
            if given_back and leasing is not None:
                yield leasing.release_leases, (given_back,)
                held.hand_on(given_back)
            for key in unread:
                if key in stale and self.protection.fail_safe:
                    served[key] = yield from self.fail_safe(key, mark, stale[key], failure)
                else:
                    errors[key] = failure
                    self.rests.note(key, mark, failure)
        filling = {k: t for k, t in leases.items() if k in loaded}
        try:
            yield from self.fence.fill_steps(mark, loaded, self.tiers, tokens=filling)
        except Exception:
            held.hand_on(filling)
            raise  # the fence gave back the leases it did not use
        # (Interrupted, a cancelled task included, before the fill may have gone out: the
        # caller gives back what is held; a lease a fill used no longer matches.)
        held.hand_on(filling)
        return served, errors

    def load_failed(
        self, key: str, mark: int, stale: StaleCopy | None, caught: BaseException
    ) -> Steps[Entry]:
        """What a caller whose load of one key stopped with ``caught`` gets (both loaders
        decide it here, once they gave the key's lease back): ``stale`` when the load was
        slower than the soft timeout (:class:`~tiered_cache.timed_slots.ServeStale`), or when
        the source failed and fail-safe is on; else ``caught`` raised (an interrupt or a
        cancellation always)."""
        if isinstance(caught, ServeStale):
            assert stale is not None
            self.metrics.count("stale_served_on_slow_load")
            return stale.entry
        if not isinstance(caught, Exception) or stale is None or not self.protection.fail_safe:
            self.rests.note(key, mark, caught)
            raise caught
        return (yield from self.fail_safe(key, mark, stale, caught))

    def fail_safe(self, key: str, mark: int, stale: StaleCopy, exc: Exception) -> Steps[Entry]:
        """Serve ``stale`` for a failed load, and rest the source (see :func:`calmed`)."""
        self.metrics.count("stale_served_on_error")
        logger.warning(
            "serving a stale value of key %s: its load failed (%s: %s)",
            key_hash(key),
            type(exc).__name__,
            exc,
            extra=fields("fail_safe", key=key),
        )
        yield from self.rest_source(key, mark, stale)
        return stale.entry

    def refresh_failure(self, key: str, exc: Exception, stale: Stale | None) -> Steps[None]:
        """A background refresh of ``key`` failed with ``exc`` (both loaders report it here):
        counted and said, the stale value stays; under fail-safe the source rests on
        ``stale`` (:meth:`rest_source`), judged by the mark it was read under."""
        self.metrics.count("refresh_failures")
        logger.warning(
            "background refresh of key %s failed (%s: %s); the stale value stays",
            key_hash(key),
            type(exc).__name__,
            exc,
            extra=fields("refresh_failed", key=key),
        )
        if stale is not None and self.protection.fail_safe:
            copy, read = stale
            yield from self.rest_source(key, read, copy)

    def rest_source(self, key: str, mark: int, stale: StaleCopy) -> Steps[None]:
        """For ``fail_safe_throttle`` seconds, ``stale`` is served as fresh by the fastest
        tier it may be written into (``Fence.rest_targets``, from the tier the read found it
        in), judged by the fence from ``mark``."""
        calm = calmed(stale.entry, self.clock(), self.protection.fail_safe_throttle)
        if calm is not None:
            targets = self.fence.rest_targets(stale.found_in)
            yield from self.fence.fill_steps(mark, {key: calm}, targets)

    def entries(
        self,
        values: Mapping[str, Any],
        keys: Sequence[str],
        ttl: CheckedTtl | None,
        now: float,
        duration: float,
        *,
        complete: bool = True,
    ) -> dict[str, Entry]:
        """Entries for ``keys`` from ``values``: of a complete read, a key left out is "not
        found"; of a partial read, only the keys it read have one. Every load the source
        answered goes through here or :meth:`entry`: its keys' rests are forgotten."""
        make = self.make_entry
        made = {
            key: make(values.get(key, MISSING), now, duration, ttl)
            for key in keys
            if complete or key in values
        }
        self.rests.answered(made)
        return made

    def entry(
        self, key: str, value: Any, now: float, duration: float, ttl: CheckedTtl | None
    ) -> Entry:
        """:meth:`entries` for a load of one key."""
        self.rests.answered((key,))
        return self.make_entry(value, now, duration, ttl)
