"""A circuit breaker around a tier: stop paying a timeout per call to a tier that is down.

After ``failure_threshold`` consecutive failures the circuit opens: every call raises
:class:`~tiered_cache.errors.TierUnavailable` at once, without touching the tier, for
``cool_down`` seconds. Then one call is let through as a probe (half-open): its success closes the
circuit, its failure opens it again for another ``cool_down``. This is the breaker FusionCache puts
around its distributed tier; it lives in the chain rather than in each adapter.

:class:`CircuitBreaker` is the policy: the chain's accessor of a tier consults it on every call,
so the tier's capabilities stay the tier's own. :class:`GuardedTier` puts a tier and its breaker
together (as ``build`` does from the settings), with the tier's own face:
:class:`CircuitBreakerTier` for a sync tier, and
:class:`~tiered_cache.async_breaker.AsyncCircuitBreakerTier` (coroutines, the same breaker
awaited) for an async one; the chain takes the two apart again.

A :class:`~tiered_cache.errors.CodecError` is the caller's fault (a value the tier cannot hold),
not the tier's, so it passes through unchanged and is not counted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar, cast

from .async_tier import AsyncTier
from .errors import CircuitOpen, CodecError, TierCallFailed, TierUnavailable
from .forking import restart_after_fork
from .hit import HitCount
from .leases import LeasingTier
from .settings import BreakerSettings, overridden
from .steps import Steps
from .tier import (
    UNDECLARED,
    Entry,
    MissingType,
    Tier,
    TierBase,
    declared_capabilities,
    declared_delete_prefix,
)
from .units import DurationLike

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half-open"]
T = TypeVar("T")
#: A sync or an async tier (:class:`GuardedTier` wraps either).
TierT = TypeVar("TierT", bound=Tier | AsyncTier)


class CircuitBreaker:
    """A thread-safe circuit breaker: the state machine, consulted around each call.

    Args:
        name: the guarded tier's name, for messages.
        settings: ``failure_threshold`` and ``cool_down``; explicit arguments win over it.
        failure_threshold: consecutive failures that open the circuit (at least 1).
        cool_down: seconds an open circuit rejects calls before letting one probe through
            (more than 0), or text such as ``"5s"``.
        clock: seconds; the chain's clock, so tests drive the breaker with a fake one.
        what: what it guards, for messages: ``"tier"`` (``tier 'redis': circuit open``), or
            e.g. ``"bus"`` for the invalidation bus's publish.

    ``failure_threshold`` and ``cool_down`` are checked by the rules of a config file's
    ``breaker`` table (:class:`~tiered_cache.settings.BreakerSettings`): one they refuse
    raises :class:`~tiered_cache.ConfigError` naming it (``cool_down: ...``).
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        failure_threshold: int | None = None,
        cool_down: DurationLike | None = None,
        clock: Callable[[], float] = time.monotonic,
        what: str = "tier",
    ) -> None:
        # The arguments meet the rules of a config file's breaker table (a threshold of at
        # least 1, a cool-down more than 0 and finite): taken here, NaN never kept the
        # circuit open for a moment, and 0 let every call after the threshold probe. One
        # model, the settings', holds what the breaker runs with.
        self.settings = settings = overridden(
            settings or BreakerSettings(),
            failure_threshold=failure_threshold,
            cool_down=cool_down,
        )
        self.name = name
        self._what = what
        self.failure_threshold = settings.failure_threshold
        self.cool_down = settings.cool_down
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open = False
        self._opened_at = 0.0
        self._probing = False
        self._opened_count = 0
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """The parent's threads are not in a forked child: the lock one of them held at the
        fork would stay held (every guarded call of the child would wait for ever), and a
        probe one of them was making would never end (the circuit would refuse every call
        for good). A new lock; the next call probes."""
        self._lock = threading.Lock()
        self._probing = False

    @property
    def state(self) -> State:
        """``"closed"``, ``"open"``, or ``"half-open"`` (cool-down over: the next call probes)."""
        with self._lock:
            if not self._open:
                return "closed"
            if self._probing or not self._left(self._clock()):
                return "half-open"
            return "open"

    @property
    def refusing(self) -> bool:
        """A call now would be refused (open within its cool-down, or its probe in flight);
        looking changes nothing, unlike a call, which may become the probe."""
        with self._lock:
            if not self._open:
                return False
            return self._probing or self._left(self._clock()) > 0

    def trial_at(self) -> float | None:
        """When (on :attr:`clock`) the circuit lets a call through again: the end of its
        cool-down while it is open (now once that passed, and while a probe is in flight: that
        probe's outcome decides), None while it is closed (any call goes through)."""
        with self._lock:
            if not self._open:
                return None
            now = self._clock()
            return now + self._left(now)

    def end_cool_down(self) -> None:
        """An open circuit lets its next call through now, as the probe (a probe in flight
        still refuses it): the owed deletes' last try, when no later one can come
        (:meth:`tiered_cache.owed_timer.PaymentTimer.last`)."""
        with self._lock:
            if self._open:
                # Over whatever the clock reads (``now - cool_down`` is rounded too).
                self._opened_at = -math.inf

    @property
    def clock(self) -> Callable[[], float]:
        """The clock of its cool-down (a timer waiting for the next trial reads it)."""
        return self._clock

    @property
    def opened_count(self) -> int:
        """How many times the circuit has opened (re-opening after a failed probe counts)."""
        return self._opened_count

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far (reset by a success)."""
        return self._failures

    def call(self, operation: Callable[..., T], *arguments: Any) -> T:
        """Run ``operation(*arguments)`` unless the circuit is open (then raise
        :class:`TierUnavailable`); count its failure or success.

        A closed circuit with no failure counted (every L2 hit) takes no lock (see
        :meth:`_admit` and :meth:`_record_success`).
        """
        probe = self._admit() if self._open else False  # _admit's and _record_success's
        try:  # first tests, inlined: two calls fewer per guarded call
            result = operation(*arguments)
        except BaseException as exc:
            raise self._judge(probe, exc)  # noqa: B904 -- _judge chains the cause itself
        if probe or self._failures:
            self._record_success(probe)
        return result

    def counted(self, operation: Callable[..., T], *arguments: Any) -> T:
        """Run ``operation(*arguments)`` whatever the circuit's state (never refused), its
        outcome counted as :meth:`call` counts one: a failure toward opening the circuit, raised
        as :class:`TierUnavailable`. For an in-process tier's deletes
        (``TierAccessor._quietly``): made past an open circuit, since they do no I/O, yet a
        tier whose deletes keep failing is a failing tier."""
        try:
            result = operation(*arguments)
        except BaseException as exc:
            raise self._judge(False, exc)  # noqa: B904 -- _judge chains the cause itself
        if self._failures:
            self._record_success(False)
        return result

    async def acall(self, operation: Callable[[], Awaitable[T]]) -> T:
        """:meth:`call` for a coroutine (the asyncio chain's tiers); the same state machine."""
        probe = self._admit()
        try:
            result = await operation()
        except BaseException as exc:
            raise self._judge(probe, exc)  # noqa: B904 -- _judge chains the cause itself
        self._record_success(probe)
        return result

    def guarding(self, function: Callable[..., Any], arguments: tuple[Any, ...]) -> Steps[Any]:
        """:meth:`call` as a step (:mod:`tiered_cache.steps`), for a decision that a sync or
        an async driver runs: ``function(*arguments)`` is yielded, and counted by the same
        state machine. Raises :class:`~tiered_cache.errors.CircuitOpen` without yielding
        when the circuit refuses the call."""
        probe = self._admit()
        try:
            result = yield function, arguments
        except BaseException as exc:
            raise self._judge(probe, exc)  # noqa: B904 -- _judge chains the cause itself
        self._record_success(probe)
        return result

    def _judge(self, probe: bool, exc: BaseException) -> BaseException:
        """Count a call that raised ``exc``; what to raise instead. A CodecError (the caller's
        value) and an interrupt are neither success nor failure; any other error is the
        tier's, raised as :class:`TierUnavailable`. (A key a tier cannot encode never gets
        here: the chain refuses it at its face, :func:`tiered_cache.keys.check_keys`.)"""
        if isinstance(exc, CodecError) or not isinstance(exc, Exception):
            self._release(probe)
            return exc
        self._record_failure(probe)
        if isinstance(exc, TierUnavailable):
            return exc
        wrapped = TierCallFailed(f"{self._what} {self.name!r}: {type(exc).__name__}: {exc}")
        wrapped.__cause__ = exc
        return wrapped

    def _admit(self) -> bool:
        """Let a call through (True if it is the probe) or raise :class:`CircuitOpen`."""
        if not self._open:
            # Closed: nothing to decide or record, so no lock. Reading the flag is one step
            # under the GIL; a circuit opening meanwhile is the same race as with the lock,
            # which was released before the call anyway.
            return False
        with self._lock:
            if not self._open:
                return False
            left = self._left(self._clock())
            if self._probing or left > 0:
                raise CircuitOpen(
                    f"{self._what} {self.name!r}: circuit open after {self.failure_threshold} "
                    f"consecutive failures; "
                    + ("a probe is in flight" if self._probing else f"next probe in {left:.3g}s")
                )
            self._probing = True
            return True

    def _left(self, now: float) -> float:
        """Seconds of the open circuit's cool-down left at ``now`` (under the lock). The clock
        may be the chain's, the wall clock: stepped back (NTP), more than the cool-down's
        length would be left (an hour back, an hour more, the tier skipped all that time);
        such a cool-down is over.

        Reckoned from the time elapsed, never from ``opened_at + cool_down``: on the wall
        clock (about 1.8e9 s, a float's step there 2**-22 s) that sum is rounded, up for
        some cool-downs (0.7 s, 2.9 s), so that more than the cool-down's length was left the
        moment the circuit opened: taken for a clock stepped back, the cool-down was over at
        once, and every call after the failures was a probe."""
        elapsed = now - self._opened_at
        return self.cool_down - elapsed if 0 <= elapsed < self.cool_down else 0.0

    def _release(self, probe: bool) -> None:
        # Neither success nor failure (a CodecError, an interrupt): the next call probes instead.
        if probe:
            with self._lock:
                self._probing = False

    def _record_success(self, probe: bool) -> None:
        if not probe and not self._failures:
            # Nothing to reset (every call while all is well): no lock. The count is read
            # after the call succeeded: a failure recorded before this read is reset, as
            # under the lock; one recorded after it came later than this success.
            return
        with self._lock:
            self._failures = 0
            if probe:
                self._probing = False
                self._open = False
                closed = True
            else:
                closed = False
        if closed:
            log.info("%s %r: circuit closed (probe succeeded)", self._what, self.name)

    def _record_failure(self, probe: bool) -> None:
        with self._lock:
            self._failures += 1
            if probe:
                self._probing = False
            elif self._open or self._failures < self.failure_threshold:
                # A call admitted before the circuit opened (another thread tripped it) does
                # not extend the cool-down.
                return
            self._open = True
            self._opened_at = self._clock()
            self._opened_count += 1
            failures = self._failures
        log.warning(
            "%s %r: circuit open after %d consecutive failures; skipping it for %gs",
            self._what,
            self.name,
            failures,
            self.cool_down,
        )


class GuardedTier(Generic[TierT]):
    """A tier and the :class:`CircuitBreaker` guarding it, whatever the face of its calls:
    what :class:`CircuitBreakerTier` (sync) and
    :class:`~tiered_cache.async_breaker.AsyncCircuitBreakerTier` (coroutines) share. A chain's
    accessor takes any of them apart into the tier and the breaker it consults.

    Args:
        tier: the tier to protect.
        settings, failure_threshold, cool_down, clock: as for :class:`CircuitBreaker`.
    """

    def __init__(
        self,
        tier: TierT,
        settings: BreakerSettings | None = None,
        *,
        failure_threshold: int | None = None,
        cool_down: DurationLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tier = tier
        self.name = tier.name
        self.breaker = CircuitBreaker(
            tier.name,
            settings,
            failure_threshold=failure_threshold,
            cool_down=cool_down,
            clock=clock,
        )
        self.failure_threshold = self.breaker.failure_threshold
        self.cool_down = self.breaker.cool_down
        self._declare(tier)

    def _declare(self, tier: TierT) -> None:
        """Resolve the wrapped tier's declared capabilities, once, as it is wrapped
        (:func:`~tiered_cache.tier.declared_capabilities`): the wrapper hides none of them and
        asks nothing per call."""

    @property
    def tier(self) -> TierT:
        """The wrapped tier."""
        return self._tier

    @property
    def state(self) -> State:
        """The breaker's state (see :attr:`CircuitBreaker.state`)."""
        return self.breaker.state

    @property
    def opened_count(self) -> int:
        """How many times the circuit has opened."""
        return self.breaker.opened_count

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far (reset by a success)."""
        return self.breaker.failures


class CircuitBreakerTier(GuardedTier[Tier], TierBase):
    """A sync tier and the :class:`CircuitBreaker` guarding it (same protocol, name, and
    declared capabilities: ``local``, ``utf8_keys``, the verbs of
    :class:`~tiered_cache.tier.TierBase`).

    Used on its own, every call of the :class:`~tiered_cache.Tier` protocol goes through the
    breaker, and so does every declared verb that calls the tier (``peek``, ``get_at``,
    ``replace``, ``delete_prefix``, ``hot_keys``); ``check_value`` and ``prepare_value`` are
    the tier's own, plain calls (nothing to guard); no ``hit_reader`` (its one call would
    pass the breaker). In a chain, the tier's accessor takes the two apart (the tier, and the
    breaker it consults). Composed as
    :class:`~tiered_cache.async_breaker.AsyncCircuitBreakerTier` is: not a ``TierBase``, the
    wrapper declared nothing, and ``declared_capabilities(guard(memory))`` said shared, with
    no ``check_value`` (tests/test_breaker_declares.py).

    Args:
        tier: the tier to protect.
        settings, failure_threshold, cool_down, clock: as for :class:`CircuitBreaker`.
    """

    def _declare(self, tier: Tier) -> None:
        #: The wrapped tier's declared capabilities, resolved once.
        self._declared = declared = declared_capabilities(tier)
        self.local = declared.local
        self.utf8_keys = declared.utf8_keys
        #: The tier's declared ``delete_prefix``, else its ``clear``.
        self._delete_prefix = declared_delete_prefix(tier)
        # The defaults' verbs that call the tier, bound to a tier that declares none (as the
        # chain's accessor binds them).
        self._peek: Callable[[str], Entry | MissingType] = (
            tier.get if declared is UNDECLARED else declared.peek
        )
        self._get_at: Callable[[str, float], Entry | MissingType] = (
            (lambda key, now: tier.get(key)) if declared is UNDECLARED else declared.get_at
        )
        self._replace: Callable[[str, Entry], None] = (
            (lambda key, entry: TierBase.replace(cast(TierBase, tier), key, entry))
            if declared is UNDECLARED
            else declared.replace
        )

    def _call(self, operation: Callable[[], T]) -> T:
        return self.breaker.call(operation)

    # -- the declared capabilities (TierBase), the wrapped tier's

    def peek(self, key: str) -> Entry | MissingType:
        return self._call(lambda: self._peek(key))

    def get_at(self, key: str, now: float) -> Entry | MissingType:
        return self._call(lambda: self._get_at(key, now))

    def hit_reader(
        self, clock: Callable[[], float], margin: float, hits: HitCount
    ) -> Callable[[Any], Any] | None:
        """None: every read goes through the breaker."""
        return None

    def replace(self, key: str, entry: Entry) -> None:
        self._call(lambda: self._replace(key, entry))

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        return self._call(lambda: self._declared.hot_keys(n))

    def check_value(self, value: Any) -> None:
        """The wrapped tier's own check (a plain call: nothing to guard)."""
        self._declared.check_value(value)

    def prepare_value(self, value: Any) -> Any:
        """The wrapped tier's own form of ``value`` (the Redis tier's payload)."""
        return self._declared.prepare_value(value)

    # -- the Tier protocol

    def get(self, key: str) -> Entry | MissingType:
        return self._call(lambda: self._tier.get(key))

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return self._call(lambda: self._tier.get_many(keys))

    def set(self, key: str, entry: Entry) -> None:
        self._call(lambda: self._tier.set(key, entry))

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self._call(lambda: self._tier.set_many(entries))

    def delete(self, key: str) -> None:
        self._call(lambda: self._tier.delete(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        self._call(lambda: self._tier.delete_many(keys))

    def clear(self) -> None:
        self._call(self._tier.clear)

    def delete_prefix(self, prefix: str) -> None:
        """The tier's declared ``delete_prefix`` (:class:`~tiered_cache.tier.TierBase`), else
        its ``clear`` (more than asked, never less), through the breaker."""
        self._call(lambda: self._delete_prefix(prefix))

    def close(self) -> None:
        """Close the wrapped tier, whatever the state of the circuit."""
        self._tier.close()


class LeasingCircuitBreakerTier(CircuitBreakerTier):
    """:class:`CircuitBreakerTier` around a tier that declares leases: used on its own, the
    lease calls go through the breaker too (in a chain, the accessor takes it apart anyway)."""

    leases = True

    @property
    def _leasing(self) -> LeasingTier:
        return cast(LeasingTier, self._tier)  # guard wraps only a leasing tier here

    def can_lease(self, key: str) -> bool:
        return self._leasing.can_lease(key)  # no round trip: nothing to guard

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        return self._call(lambda: self._leasing.acquire_lease(key, ttl))

    def steal_lease(self, key: str, ttl: float) -> str:
        return self._call(lambda: self._leasing.steal_lease(key, ttl))

    def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        return self._call(lambda: self._leasing.steal_leases(keys, ttl))

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        return self._call(lambda: self._leasing.fill_with_lease(key, entry, token))

    def release_lease(self, key: str, token: str) -> None:
        self._call(lambda: self._leasing.release_lease(key, token))

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        return self._call(lambda: self._leasing.acquire_leases(keys, ttl))

    def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> set[str]:
        return self._call(lambda: self._leasing.fill_with_leases(entries))

    def release_leases(self, tokens: Mapping[str, str]) -> None:
        self._call(lambda: self._leasing.release_leases(tokens))


def guard(
    tier: Tier,
    settings: BreakerSettings | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> CircuitBreakerTier:
    """``tier`` with a circuit breaker (the chain consults it around every call to the tier);
    a tier that declares leases keeps them (:class:`LeasingCircuitBreakerTier`)."""
    if declared_capabilities(tier).leases:
        return LeasingCircuitBreakerTier(tier, settings, clock=clock)
    return CircuitBreakerTier(tier, settings, clock=clock)
