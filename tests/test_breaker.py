"""The circuit breaker: opens after consecutive failures, probes after the cool-down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from tiered_cache import TieredCache
from tiered_cache.accessor import TierAccessor
from tiered_cache.async_accessor import AsyncTierAccessor
from tiered_cache.async_breaker import guard_async
from tiered_cache.async_tier import AsyncTierBase
from tiered_cache.breaker import CircuitBreakerTier, guard
from tiered_cache.errors import CodecError, ConfigError, TierUnavailable
from tiered_cache.memory import MemoryTier
from tiered_cache.metrics import CacheMetrics
from tiered_cache.registry import Plugin, register, unregister
from tiered_cache.settings import BreakerSettings, TierSettings
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.logged import ours
from tiered_cache.tier import MISSING, Entry, MissingType, Tier, TierBase


class FlakyTier:
    """A memory tier that fails on demand and counts the calls that reach it."""

    def __init__(self, clock: FakeClock) -> None:
        self.name = "flaky"
        self.inner = MemoryTier(clock=clock)
        self.calls = 0
        self.error: BaseException | None = None
        self.gate: threading.Event | None = None
        self.closed = False

    def _enter(self) -> None:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(5.0)
        if self.error is not None:
            raise self.error

    def get(self, key: str) -> Entry | MissingType:
        self._enter()
        return self.inner.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        self._enter()
        return self.inner.get_many(keys)

    def set(self, key: str, entry: Entry) -> None:
        self._enter()
        self.inner.set(key, entry)

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self._enter()
        self.inner.set_many(entries)

    def delete(self, key: str) -> None:
        self._enter()
        self.inner.delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        self._enter()
        self.inner.delete_many(keys)

    def clear(self) -> None:
        self._enter()
        self.inner.clear()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def flaky(clock: FakeClock) -> FlakyTier:
    return FlakyTier(clock)


@pytest.fixture
def breaker(flaky: FlakyTier, clock: FakeClock) -> CircuitBreakerTier:
    return CircuitBreakerTier(flaky, failure_threshold=3, cool_down=10.0, clock=clock)


def trip(breaker: CircuitBreakerTier, flaky: FlakyTier, times: int = 3) -> None:
    flaky.error = ConnectionError("down")
    for _ in range(times):
        with pytest.raises(TierUnavailable):
            breaker.get("k")


def test_is_a_tier_with_the_inner_name(breaker: CircuitBreakerTier) -> None:
    assert isinstance(breaker, Tier)
    assert breaker.name == "flaky"
    assert breaker.state == "closed"


def test_closed_passes_calls_through(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    breaker.set("k", Entry("v", clock()))
    got = breaker.get("k")
    assert got is not MISSING
    assert got.value == "v"
    assert flaky.calls == 2


def test_failures_are_wrapped_as_tier_unavailable_and_chained(
    breaker: CircuitBreakerTier, flaky: FlakyTier
) -> None:
    original = TimeoutError("slow")
    flaky.error = original
    with pytest.raises(TierUnavailable, match="tier 'flaky': TimeoutError: slow") as info:
        breaker.get("k")
    assert info.value.__cause__ is original
    assert breaker.failures == 1
    assert breaker.state == "closed"


def test_opens_after_threshold_and_stops_touching_the_tier(
    breaker: CircuitBreakerTier, flaky: FlakyTier
) -> None:
    trip(breaker, flaky)
    assert breaker.state == "open"
    assert breaker.opened_count == 1
    assert flaky.calls == 3
    flaky.error = None  # even a healthy tier is not touched while the circuit is open
    for _ in range(100):
        with pytest.raises(TierUnavailable, match="circuit open") as info:
            breaker.get("k")
        assert info.value.__cause__ is None
    assert flaky.calls == 3


def test_a_success_resets_the_consecutive_count(
    breaker: CircuitBreakerTier, flaky: FlakyTier
) -> None:
    trip(breaker, flaky, times=2)
    flaky.error = None
    breaker.get("k")
    assert breaker.failures == 0
    trip(breaker, flaky, times=2)
    assert breaker.state == "closed"
    assert breaker.opened_count == 0


def test_probe_after_cool_down_closes_on_success(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    trip(breaker, flaky)
    clock.advance(9.9)
    with pytest.raises(TierUnavailable):
        breaker.get("k")
    assert flaky.calls == 3
    clock.advance(0.1)
    assert breaker.state == "half-open"
    flaky.error = None
    assert breaker.get("k") is MISSING  # the probe reached the tier
    assert flaky.calls == 4
    assert breaker.state == "closed"
    breaker.get("k")
    assert flaky.calls == 5


def test_failed_probe_reopens_for_another_cool_down(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    trip(breaker, flaky)
    clock.advance(10.0)
    with pytest.raises(TierUnavailable) as info:
        breaker.get("k")  # the probe fails
    assert isinstance(info.value.__cause__, ConnectionError)
    assert flaky.calls == 4
    assert breaker.state == "open"
    assert breaker.opened_count == 2
    clock.advance(9.0)
    with pytest.raises(TierUnavailable, match="circuit open"):
        breaker.get("k")
    assert flaky.calls == 4
    clock.advance(1.0)
    flaky.error = None
    breaker.get("k")
    assert breaker.state == "closed"


def test_only_one_probe_at_a_time(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    trip(breaker, flaky)
    clock.advance(10.0)
    flaky.error = None
    flaky.gate = threading.Event()
    results: list[Any] = []
    probe = threading.Thread(target=lambda: results.append(breaker.get("k")))
    probe.start()
    deadline = time.monotonic() + 10
    while flaky.calls < 4:  # the probe is inside the tier, held at the gate
        assert time.monotonic() < deadline, "the probe never reached the tier"
        threading.Event().wait(0.001)
    assert breaker.state == "half-open"
    with pytest.raises(TierUnavailable, match=r"failures; a probe is in flight$"):
        breaker.get("k")
    flaky.gate.set()
    probe.join(5.0)
    assert results == [MISSING]
    assert flaky.calls == 4
    assert breaker.state == "closed"


class Interrupted(BaseException):
    """Not an Exception, like KeyboardInterrupt, without interrupting pytest."""


#: Neither a success nor a failure of the tier: a value the caller should not have sent, and
#: an interrupt (a BaseException) that happened to arrive during the call.
NOT_THE_TIERS_FAULT = [CodecError, Interrupted]


@pytest.mark.parametrize("kind", NOT_THE_TIERS_FAULT)
def test_codec_errors_and_interrupts_pass_through_unchanged_and_do_not_count(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock, kind: type[BaseException]
) -> None:
    error = kind("value['x']: object of type object is not supported")
    flaky.error = error
    for _ in range(10):
        with pytest.raises(kind) as info:
            breaker.set("k", Entry(object(), clock()))
        assert info.value is error
    assert breaker.failures == 0
    assert breaker.state == "closed"


@pytest.mark.parametrize("kind", NOT_THE_TIERS_FAULT)
def test_codec_error_or_interrupt_during_probe_leaves_the_next_call_to_probe(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock, kind: type[BaseException]
) -> None:
    trip(breaker, flaky)
    clock.advance(10.0)
    flaky.error = kind("bad value")
    with pytest.raises(kind):
        breaker.set("k", Entry(object(), clock()))
    assert flaky.calls == 4  # the probe reached the tier
    assert breaker.state == "half-open"
    flaky.error = None
    assert breaker.get("k") is MISSING  # a new probe reaches the tier
    assert flaky.calls == 5
    assert breaker.state == "closed"
    assert breaker.opened_count == 1


def test_tier_unavailable_from_the_tier_is_counted_not_rewrapped(
    breaker: CircuitBreakerTier, flaky: FlakyTier
) -> None:
    error = TierUnavailable("inner circuit open")
    flaky.error = error
    with pytest.raises(TierUnavailable) as info:
        breaker.get("k")
    assert info.value is error
    assert breaker.failures == 1


OPERATIONS: dict[str, Callable[[CircuitBreakerTier], Any]] = {
    "get": lambda t: t.get("k"),
    "get_many": lambda t: t.get_many(["k"]),
    "set": lambda t: t.set("k", Entry("v", 0.0)),
    "set_many": lambda t: t.set_many({"k": Entry("v", 0.0)}),
    "delete": lambda t: t.delete("k"),
    "delete_many": lambda t: t.delete_many(["k"]),
    "clear": lambda t: t.clear(),
    "delete_prefix": lambda t: t.delete_prefix("k"),  # the flaky tier has none: clear()
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_operation_is_guarded(
    breaker: CircuitBreakerTier, flaky: FlakyTier, operation: str
) -> None:
    call = OPERATIONS[operation]
    flaky.error = OSError("down")
    for _ in range(3):
        with pytest.raises(TierUnavailable):
            call(breaker)
    assert breaker.state == "open"
    with pytest.raises(TierUnavailable, match="circuit open"):
        call(breaker)
    assert flaky.calls == 3


def test_close_reaches_the_tier_even_when_open(
    breaker: CircuitBreakerTier, flaky: FlakyTier
) -> None:
    trip(breaker, flaky)
    breaker.close()
    assert flaky.closed


def test_settings_and_explicit_arguments(flaky: FlakyTier, clock: FakeClock) -> None:
    from_settings = CircuitBreakerTier(
        flaky, BreakerSettings(failure_threshold=2, cool_down="30s"), clock=clock
    )
    assert (from_settings.failure_threshold, from_settings.cool_down) == (2, 30.0)
    overridden = CircuitBreakerTier(
        flaky, BreakerSettings(failure_threshold=2), failure_threshold=7, clock=clock
    )
    assert overridden.failure_threshold == 7
    defaults = CircuitBreakerTier(flaky, clock=clock)
    assert (defaults.failure_threshold, defaults.cool_down) == (5, 5.0)
    with pytest.raises(ValueError):
        CircuitBreakerTier(flaky, failure_threshold=0, clock=clock)


def test_logs_state_changes_not_calls(
    breaker: CircuitBreakerTier,
    flaky: FlakyTier,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="tiered_cache.breaker"):
        breaker.get("k")  # a success with the circuit closed changes nothing
        trip(breaker, flaky, times=3)
        for _ in range(50):
            with pytest.raises(TierUnavailable):
                breaker.get("k")
        clock.advance(10.0)
        flaky.error = None
        breaker.get("k")
    messages = [record.getMessage() for record in ours(caplog.records)]
    assert len(messages) == 2
    assert "circuit open after 3 consecutive failures" in messages[0]
    assert "circuit closed" in messages[1]


def test_concurrent_failures_open_the_circuit_once(
    breaker: CircuitBreakerTier, flaky: FlakyTier
) -> None:
    flaky.error = ConnectionError("down")
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(50):
            with contextlib.suppress(TierUnavailable):
                breaker.get("k")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.state == "open"
    assert breaker.opened_count == 1
    assert flaky.calls < 3 + 8  # only calls admitted before it opened reached the tier


def test_threshold_and_cool_down_are_checked_at_their_bounds(
    flaky: FlakyTier, clock: FakeClock
) -> None:
    # The rules of a config file's breaker table (tests/test_code_constructors.py has
    # each): a threshold of at least 1, a cool-down more than 0.
    with pytest.raises(ConfigError, match=r"^failure_threshold: .* greater than or equal to 1"):
        CircuitBreakerTier(flaky, failure_threshold=0, clock=clock)
    with pytest.raises(ConfigError, match=r"^cool_down: "):
        CircuitBreakerTier(flaky, cool_down=-0.5, clock=clock)
    with pytest.raises(ConfigError, match=r"^cool_down: .* greater than 0"):
        CircuitBreakerTier(flaky, cool_down=0.0, clock=clock)
    edge = CircuitBreakerTier(flaky, failure_threshold=1, cool_down=0.001, clock=clock)
    trip(edge, flaky, times=1)  # one failure is enough to open it
    assert edge.opened_count == 1
    assert edge.state == "open"
    clock.advance(0.001)
    assert edge.state == "half-open"  # and once the shortest cool-down is over, a call probes
    flaky.error = None
    assert edge.get("k") is MISSING
    assert edge.state == "closed"


@pytest.mark.parametrize("cool_down", [0.7, 2.9, 0.1, 5.0])
def test_a_cool_down_on_the_wall_clock_keeps_the_circuit_open_for_its_length(
    flaky: FlakyTier, cool_down: float
) -> None:
    """On the wall clock (the chain's by default; about 1.8e9 s, where a float's step is
    2**-22 s) ``opened_at + cool_down`` is rounded, up for a cool-down of 0.7 s or 2.9 s:
    more than its length seemed left the moment the circuit opened, which the rule of a
    clock stepped back took for a cool-down over. The circuit was half-open at once, and
    every call after the failures a probe."""
    clock = FakeClock()
    clock.set(1_765_000_000.0)
    edge = CircuitBreakerTier(flaky, failure_threshold=1, cool_down=cool_down, clock=clock)
    trip(edge, flaky, times=1)
    assert edge.state == "open"
    assert edge.breaker.trial_at() == clock() + cool_down
    clock.advance(cool_down / 2)
    assert edge.state == "open"
    clock.advance(cool_down)
    assert edge.state == "half-open"


class PrefixFlakyTier(FlakyTier, TierBase):
    """A flaky tier that can delete by prefix (declared: a TierBase), as the Redis tier can."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.prefixes: list[str] = []

    def delete_prefix(self, prefix: str) -> None:
        self._enter()
        self.prefixes.append(prefix)
        self.inner.delete_prefix(prefix)


KEYS = ["user:1", "user:2", "post:1"]


def fill(tier: FlakyTier, clock: FakeClock) -> None:
    tier.inner.set_many({key: Entry(key, clock()) for key in KEYS})


def test_delete_prefix_uses_the_tiers_own_when_it_has_one(clock: FakeClock) -> None:
    tier = PrefixFlakyTier(clock)
    breaker = CircuitBreakerTier(tier, failure_threshold=3, cool_down=10.0, clock=clock)
    fill(tier, clock)
    breaker.delete_prefix("user:")
    assert tier.prefixes == ["user:"]
    assert list(tier.inner.get_many(KEYS)) == ["post:1"]
    tier.error = OSError("down")
    with pytest.raises(TierUnavailable):
        breaker.delete_prefix("user:")
    assert breaker.failures == 1  # guarded like every other call


def test_delete_prefix_clears_a_tier_that_cannot_delete_by_prefix(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    fill(flaky, clock)
    breaker.delete_prefix("user:")
    assert flaky.inner.get_many(KEYS) == {}  # cleared whole: more than asked, never less
    assert flaky.calls == 1


@pytest.fixture
def flaky_kind(flaky: FlakyTier) -> Iterator[str]:
    """The flaky tier as a kind the settings can name, so the chain builds its breaker."""
    register(Plugin("flaky", TierSettings, lambda settings, context: flaky))
    yield "flaky"
    unregister("flaky")


def guarded_chain(kind: str, clock: FakeClock) -> TieredCache:
    breaker = {"failure_threshold": 3, "cool_down": 10.0}
    return TieredCache.from_config(tiers=[{"kind": kind, "breaker": breaker}], clock=clock)


def test_a_chain_invalidating_a_prefix_clears_a_guarded_tier_without_delete_prefix(
    flaky_kind: str, flaky: FlakyTier, clock: FakeClock
) -> None:
    with guarded_chain(flaky_kind, clock) as cache:
        assert cache.get("user:1", lambda: "old") == "old"
        assert cache.get("post:1", lambda: "post") == "post"
        cache.invalidate_prefix("user:")
        assert flaky.inner.get("user:1") is MISSING
        assert cache.get("user:1", lambda: "new") == "new"


def test_a_chain_whose_tier_probe_is_interrupted_probes_again(
    flaky_kind: str, flaky: FlakyTier, clock: FakeClock
) -> None:
    with guarded_chain(flaky_kind, clock) as cache:
        flaky.error = ConnectionError("down")
        for number in range(3):  # answered from the loader while the tier fails
            assert cache.get(f"k{number}", lambda: "loaded") == "loaded"
        reached = flaky.calls
        assert cache.get("k", lambda: "loaded") == "loaded"
        assert flaky.calls == reached  # the circuit is open: the tier is skipped
        clock.advance(10.0)
        flaky.error = Interrupted()
        with pytest.raises(Interrupted):
            cache.get("k", lambda: "loaded")
        assert flaky.calls == reached + 1
        flaky.error = None
        assert cache.get("k", lambda: "loaded") == "loaded"
        assert flaky.calls > reached + 1  # the next read probed the tier again
        assert flaky.inner.get("k") is not MISSING  # and, the circuit closed, filled it


def test_a_circuit_closed_by_a_probe_probes_again_after_the_next_trip(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    trip(breaker, flaky)
    clock.advance(10.0)
    flaky.error = None
    breaker.get("k")  # the probe closes the circuit
    trip(breaker, flaky)
    assert breaker.opened_count == 2
    clock.advance(10.0)
    flaky.error = None
    assert breaker.get("k") is MISSING  # a new probe, not "a probe is in flight"
    assert breaker.state == "closed"


def test_a_probe_failing_with_tier_unavailable_reopens_the_circuit(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    trip(breaker, flaky)
    clock.advance(10.0)
    flaky.error = TierUnavailable("still down")
    with pytest.raises(TierUnavailable, match="still down"):
        breaker.get("k")
    assert breaker.state == "open"
    assert breaker.opened_count == 2
    clock.advance(10.0)
    flaky.error = None
    assert breaker.get("k") is MISSING
    assert breaker.state == "closed"


def test_an_open_circuit_says_when_it_will_probe(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    trip(breaker, flaky)
    clock.advance(6.0)
    with pytest.raises(TierUnavailable, match=r"after 3 consecutive failures; next probe in 4s"):
        breaker.get("k")


def test_every_operation_reaches_the_tier_with_its_arguments(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    breaker.set_many({key: Entry(key.upper(), clock()) for key in KEYS})
    assert {key: entry.value for key, entry in breaker.get_many(KEYS).items()} == {
        "user:1": "USER:1",
        "user:2": "USER:2",
        "post:1": "POST:1",
    }
    breaker.delete("user:1")
    assert list(flaky.inner.get_many(KEYS)) == ["user:2", "post:1"]
    breaker.delete_many(["user:2"])
    assert list(flaky.inner.get_many(KEYS)) == ["post:1"]
    breaker.clear()
    assert flaky.inner.get_many(KEYS) == {}


def test_guard_keeps_the_settings_and_the_clock(flaky: FlakyTier, clock: FakeClock) -> None:
    guarded = guard(flaky, BreakerSettings(failure_threshold=2, cool_down=30.0), clock=clock)
    trip(guarded, flaky, times=2)
    assert guarded.state == "open"
    clock.advance(30.0)  # the fake clock, not the wall clock, ends the cool-down
    assert guarded.state == "half-open"


def test_stats_never_probe_a_tier_whose_circuit_is_open(
    breaker: CircuitBreakerTier, flaky: FlakyTier, clock: FakeClock
) -> None:
    """Reporting is not traffic: a stats scrape after the cool-down must not spend the probe
    (asking for hot keys through the breaker did, and closed it without touching the tier)."""
    trip(breaker, flaky)
    cache = TieredCache([breaker], clock=clock)
    clock.advance(10.0)
    assert cache.stats()["tiers"][0]["breaker"] == "half-open"
    assert cache.hot_keys() == []
    assert breaker.breaker.state == "half-open"  # the probe is left for a real call
    assert flaky.calls == 3
    with pytest.raises(TierUnavailable):
        breaker.get("k")  # the real probe reaches the tier, which is still down
    assert flaky.calls == 4
    assert breaker.breaker.state == "open"


class CountingLock:
    """A lock that counts how often it was taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> bool:
        self.taken += 1
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.__exit__(*exc_info)


def test_a_closed_circuit_takes_its_lock_only_to_count_failures_and_their_reset(
    breaker: CircuitBreakerTier, flaky: FlakyTier
) -> None:
    """Every L2 hit goes through the breaker: while all is well it decides without its lock
    (a flag and a count read); failures, and the success after them, still count under it."""
    lock = CountingLock()
    breaker.breaker._lock = lock  # type: ignore[assignment]
    for _ in range(3):
        breaker.get("k")
    assert lock.taken == 0
    trip(breaker, flaky, times=2)
    assert lock.taken == 2 and breaker.failures == 2
    flaky.error = None
    breaker.get("k")
    assert lock.taken == 3 and breaker.failures == 0
    breaker.get("k")
    assert lock.taken == 3


class AsyncFlaky:
    """An async face over :class:`FlakyTier` (its failures and its count of calls)."""

    def __init__(self, flaky: FlakyTier) -> None:
        self.name = flaky.name
        self.flaky = flaky

    async def get(self, key: str) -> Entry | MissingType:
        return self.flaky.get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return self.flaky.get_many(keys)

    async def set(self, key: str, entry: Entry) -> None:
        self.flaky.set(key, entry)

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        self.flaky.set_many(entries)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self.flaky.delete_many(keys)

    async def clear(self) -> None:
        self.flaky.clear()

    async def aclose(self) -> None:
        self.flaky.close()


def test_the_async_wrapper_is_the_same_breaker_awaited(flaky: FlakyTier, clock: FakeClock) -> None:
    """guard_async: every verb a coroutine, through the breaker's own state machine (opens
    after the threshold, then stops touching the tier; probes after the cool-down)."""

    async def scenario() -> None:
        guarded = guard_async(
            AsyncFlaky(flaky), BreakerSettings(failure_threshold=2, cool_down=10.0), clock=clock
        )
        assert guarded.name == "flaky"
        await guarded.set("k", Entry("v", 0.0))
        assert (await guarded.get("k")).value == "v"  # type: ignore[union-attr]
        flaky.error = ConnectionError("down")
        for _ in range(2):
            with pytest.raises(TierUnavailable):
                await guarded.get_many(["k"])
        assert guarded.state == "open" and guarded.opened_count == 1
        calls = flaky.calls
        with pytest.raises(TierUnavailable):
            await guarded.set_many({"k": Entry("w", 0.0)})
        assert flaky.calls == calls  # refused without touching the tier
        flaky.error = None
        clock.advance(10)
        await guarded.delete_many(["k"])  # the probe
        assert guarded.state == "closed"
        await guarded.aclose()
        assert flaky.closed

    asyncio.run(scenario())


class AsyncPrefixFlaky(AsyncFlaky, AsyncTierBase):
    """:class:`AsyncFlaky` declaring capabilities (an AsyncTierBase), as the Redis tier on
    redis.asyncio does: a delete by prefix, UTF-8 keys, one event loop, a check of values."""

    utf8_keys = True
    one_loop = True

    def __init__(self, flaky: PrefixFlakyTier) -> None:
        super().__init__(flaky)
        self.prefix_flaky = flaky

    async def delete_prefix(self, prefix: str) -> None:
        self.prefix_flaky.delete_prefix(prefix)

    def check_value(self, value: Any) -> None:
        if callable(value):
            raise CodecError("no functions")


def test_a_declared_capability_is_seen_through_the_breaker_on_both_faces(
    clock: FakeClock,
) -> None:
    """What a wrapped tier declares (tiered_cache.tier / async_tier.declared_capabilities,
    resolved once as the wrapper or the accessor is built) is what the breaker offers, sync
    and async, on its own and in a chain's accessor: a delete by prefix removes that prefix
    only (a wrapper hiding it would clear the whole tier: more than asked), and the async
    wrapper carries the tier's flags and check."""
    metrics = CacheMetrics(["flaky"])

    sync_tier = PrefixFlakyTier(clock)
    sync_guarded = CircuitBreakerTier(sync_tier, clock=clock)
    sync_accessor = TierAccessor(0, sync_guarded, metrics, clock)
    for delete in (
        sync_guarded.delete_prefix,
        sync_accessor.delete_prefix,
        sync_accessor.delete_prefix_owed,
    ):
        fill(sync_tier, clock)
        delete("user:")
        assert list(sync_tier.inner.get_many(KEYS)) == ["post:1"]
    assert sync_tier.prefixes == ["user:"] * 3

    async_tier = PrefixFlakyTier(clock)
    guarded = guard_async(AsyncPrefixFlaky(async_tier), clock=clock)
    assert (guarded.utf8_keys, guarded.one_loop) == (True, True)
    with pytest.raises(CodecError):
        guarded.check_value(lambda: None)

    async def scenario() -> None:
        accessor = AsyncTierAccessor(0, guarded, metrics, clock)
        assert (accessor.utf8_keys, accessor.one_loop) == (True, True)
        for delete in (guarded.delete_prefix, accessor.delete_prefix, accessor.delete_prefix_owed):
            fill(async_tier, clock)
            await delete("user:")
            assert list(async_tier.inner.get_many(KEYS)) == ["post:1"]

    asyncio.run(scenario())
    assert async_tier.prefixes == ["user:"] * 3


def test_a_wall_clock_stepped_back_leaves_no_cool_down_longer_than_it_is(
    flaky: FlakyTier,
) -> None:
    """Breakers built from settings run on the chain's clock, the wall clock by default:
    stepped back an hour (NTP) while a tier's circuit was open, the cool-down of 10 s had an
    hour and 10 s left. The tier was skipped all that time (Redis back, every memory miss went
    to the source), and a delete it owed was timed for that trial. A cool-down with more left than
    its length is over."""
    now = [1_000_000.0]
    breaker = CircuitBreakerTier(flaky, failure_threshold=3, cool_down=10.0, clock=lambda: now[0])
    trip(breaker, flaky)
    now[0] -= 3600.0
    assert breaker.state == "half-open"
    assert breaker.breaker.trial_at() == now[0]
    flaky.error = None
    assert breaker.get("k") is MISSING  # the probe reached the tier
    assert (flaky.calls, breaker.state) == (4, "closed")
