"""A circuit breaker around a tier: stop paying a timeout per call to a tier that is down.

After ``failure_threshold`` consecutive failures the circuit opens: every call raises
:class:`~tiered_cache.errors.TierUnavailable` at once, without touching the tier, for
``cool_down`` seconds. Then one call is let through as a probe (half-open): its success closes the
circuit, its failure opens it again for another ``cool_down``. This is the breaker FusionCache puts
around its distributed tier; it wraps the tier rather than living in each adapter.

A :class:`~tiered_cache.errors.CodecError` is the caller's fault (a value the tier cannot hold),
not the tier's, so it passes through unchanged and is not counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypeVar

from .errors import CodecError, TierUnavailable
from .leases import LeasingTier
from .reporting import ReportValue, report_of
from .settings import BreakerSettings
from .tier import Entry, MissingType, Tier

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half-open"]
T = TypeVar("T")


class CircuitBreakerTier:
    """Wraps ``tier`` (same protocol and name) in a thread-safe circuit breaker.

    Args:
        tier: the tier to protect.
        settings: ``failure_threshold`` and ``cool_down``; explicit arguments win over it.
        failure_threshold: consecutive failures that open the circuit.
        cool_down: seconds an open circuit rejects calls before letting one probe through.
        clock: seconds; the chain's clock, so tests drive the breaker with a fake one.
    """

    def __init__(
        self,
        tier: Tier,
        settings: BreakerSettings | None = None,
        *,
        failure_threshold: int | None = None,
        cool_down: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = settings or BreakerSettings()
        self._tier = tier
        self.name = tier.name
        self.failure_threshold = (
            failure_threshold if failure_threshold is not None else settings.failure_threshold
        )
        self.cool_down = cool_down if cool_down is not None else settings.cool_down
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.cool_down < 0:
            raise ValueError("cool_down cannot be negative")
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open = False
        self._opened_at = 0.0
        self._probing = False
        self._opened_count = 0

    @property
    def tier(self) -> Tier:
        """The wrapped tier."""
        return self._tier

    @property
    def state(self) -> State:
        """``"closed"``, ``"open"``, or ``"half-open"`` (cool-down over: the next call probes)."""
        with self._lock:
            if not self._open:
                return "closed"
            if self._probing or self._clock() - self._opened_at >= self.cool_down:
                return "half-open"
            return "open"

    @property
    def opened_count(self) -> int:
        """How many times the circuit has opened (re-opening after a failed probe counts)."""
        return self._opened_count

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far (reset by a success)."""
        return self._failures

    def report(self) -> dict[str, ReportValue]:
        """The wrapped tier's report, the circuit's state and how often it opened."""
        return {**report_of(self._tier), "breaker": self.state, "breaker_opened": self.opened_count}

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
        """The wrapped tier's ``delete_prefix`` if it has one, else its ``clear`` (safe)."""
        delete_prefix = getattr(self._tier, "delete_prefix", None)
        if callable(delete_prefix):
            self._call(lambda: delete_prefix(prefix))
        else:
            self._call(self._tier.clear)

    def close(self) -> None:
        """Close the wrapped tier, whatever the state of the circuit."""
        self._tier.close()

    # -- the state machine

    def _call(self, operation: Callable[[], T]) -> T:
        probe = self._admit()
        try:
            result = operation()
        except CodecError:
            self._release(probe)
            raise
        except TierUnavailable:
            self._record_failure(probe)
            raise
        except Exception as exc:
            self._record_failure(probe)
            raise TierUnavailable(f"tier {self.name!r}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._release(probe)
            raise
        self._record_success(probe)
        return result

    def _admit(self) -> bool:
        """Let a call through (True if it is the probe) or raise :class:`TierUnavailable`."""
        with self._lock:
            if not self._open:
                return False
            waited = self._clock() - self._opened_at
            if self._probing or waited < self.cool_down:
                raise TierUnavailable(
                    f"tier {self.name!r}: circuit open after {self.failure_threshold} "
                    f"consecutive failures; "
                    + (
                        "a probe is in flight"
                        if self._probing
                        else f"next probe in {self.cool_down - waited:.3g}s"
                    )
                )
            self._probing = True
            return True

    def _release(self, probe: bool) -> None:
        # Neither success nor failure (a CodecError, an interrupt): the next call probes instead.
        if probe:
            with self._lock:
                self._probing = False

    def _record_success(self, probe: bool) -> None:
        with self._lock:
            self._failures = 0
            if probe:
                self._probing = False
                self._open = False
                closed = True
            else:
                closed = False
        if closed:
            log.info("tier %r: circuit closed (probe succeeded)", self.name)

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
            "tier %r: circuit open after %d consecutive failures; skipping it for %gs",
            self.name,
            failures,
            self.cool_down,
        )


class LeasingCircuitBreakerTier(CircuitBreakerTier):
    """A circuit breaker around a tier that offers leases: the lease calls are guarded too."""

    def __init__(
        self,
        tier: LeasingTier,
        settings: BreakerSettings | None = None,
        *,
        failure_threshold: int | None = None,
        cool_down: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            tier, settings, failure_threshold=failure_threshold, cool_down=cool_down, clock=clock
        )
        self._leasing = tier

    def can_lease(self, key: str) -> bool:
        return self._leasing.can_lease(key)  # no round trip: nothing to guard

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        return self._call(lambda: self._leasing.acquire_lease(key, ttl))

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
    """``tier`` in a circuit breaker that keeps its optional capabilities (leases)."""
    if isinstance(tier, LeasingTier):
        return LeasingCircuitBreakerTier(tier, settings, clock=clock)
    return CircuitBreakerTier(tier, settings, clock=clock)
