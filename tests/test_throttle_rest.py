"""The keys a throttled source rests (tiered_cache/throttle_rest.py), on a fake clock."""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Collection
from typing import Any

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.errors import SourceError, SourceResting, SourceThrottled
from tiered_cache.testing.clock import FakeClock
from tiered_cache.throttle_rest import ThrottleRests


def never_invalidated(mark: int, keys: Collection[str]) -> list[str]:
    return []


def resting(rests: ThrottleRests, keys: str) -> str:
    """The keys of ``keys`` (one letter each) that rest."""
    return "".join(rests.resting(keys))


def test_a_throttle_rests_its_key_alone_for_the_first_rest() -> None:
    clock = FakeClock()
    rests = ThrottleRests(2.0, clock, never_invalidated)
    throttle = SourceThrottled("ProvisionedThroughputExceededException")
    rests.note("a", 0, throttle)
    answer = rests.resting("ab")["a"]
    assert isinstance(answer, SourceResting)
    # Its cause: the throttle as it said (a copy without its frames: see the test below).
    assert (type(answer.__cause__), answer.__cause__.args) == (SourceThrottled, throttle.args)
    assert resting(rests, "ab") == "a"
    rests.note("b", 0, SourceError("down"))  # only throttles rest a key
    assert resting(rests, "b") == ""
    rests.note("a", 0, answer)  # a rest's own answer does not extend it
    clock.advance(0.2)  # a tenth of the back-off
    assert resting(rests, "a") == ""


def test_throttles_in_a_row_double_the_rest_up_to_the_backoff() -> None:
    """Rests of 1, 2, 4, 8, 10, 10 ticks (backoff 10); an answered load forgets the key, and
    a throttle more than the backoff after the key's last rest ended starts short too."""
    clock = FakeClock()
    rests = ThrottleRests(10.0, clock, never_invalidated)
    lengths = []
    for _ in range(6):
        rests.note("a", 0, SourceThrottled("throttled"))
        ticks = 0
        while resting(rests, "a"):
            clock.advance(1.0)
            ticks += 1
        lengths.append(ticks)
    assert lengths == [1, 2, 4, 8, 10, 10]
    rests.answered(["a"])
    rests.note("a", 0, SourceThrottled("throttled"))
    clock.advance(1.0)
    assert resting(rests, "a") == ""
    rests.note("a", 0, SourceThrottled("throttled"))  # in a row: two ticks
    clock.advance(1.0)
    assert resting(rests, "a") == "a"
    clock.advance(1.0 + 10.0 + 0.5)  # its rest ended more than the backoff ago
    rests.note("a", 0, SourceThrottled("throttled"))
    clock.advance(1.0)
    assert resting(rests, "a") == ""


def test_a_first_rest_as_long_as_the_backoff_never_grows_nor_shrinks() -> None:
    clock = FakeClock()
    rests = ThrottleRests(2.0, clock, never_invalidated, first=2.0)
    for _ in range(3):
        rests.note("a", 0, SourceThrottled("throttled"))
        clock.advance(1.5)
        assert resting(rests, "a") == "a"
        clock.advance(0.5)
        assert resting(rests, "a") == ""


def test_an_invalidation_since_the_failed_load_read_ends_the_rest() -> None:
    invalidated: set[str] = set()
    rests = ThrottleRests(
        2.0, FakeClock(), lambda mark, keys: [k for k in keys if k in invalidated]
    )
    rests.note("a", 7, SourceThrottled("throttled"))
    assert resting(rests, "a") == "a"
    invalidated.add("a")
    assert resting(rests, "a") == ""


def test_at_most_limit_keys_rest_the_oldest_forgotten_first() -> None:
    clock = FakeClock()
    rests = ThrottleRests(100.0, clock, never_invalidated, limit=3)
    for key in "abcde":
        rests.note(key, 0, SourceThrottled("throttled"))
        clock.advance(1.0)
    assert resting(rests, "abcde") == "cde"


def test_a_zero_backoff_rests_nothing() -> None:
    rests = ThrottleRests(0.0, FakeClock(), never_invalidated)
    rests.note("a", 0, SourceThrottled("throttled"))
    assert resting(rests, "a") == ""


class _Request:
    """What a service's handler holds while it reads (a request, its body)."""


def _throttled_deep_down() -> str:
    try:
        raise OSError("ProvisionedThroughputExceededException")  # the client's own error
    except OSError as exc:
        raise SourceThrottled("throttled") from exc


def _three_throttled_then_rested(
    load: Any,
) -> tuple[TieredCache, list[weakref.ref[_Request]], SourceResting]:
    """Three requests (keys a, b, c) each throttled by ``load``, then ``a`` read again in its
    rest: the cache, the requests still alive after a collection, and the rest's answer. The
    clock is fake: the rests last, so the last read is answered by one."""
    clock = FakeClock()
    cache = TieredCache([MemoryTier(max_entries=100, clock=clock)], clock=clock)
    requests: list[weakref.ref[_Request]] = []

    def handle(key: str) -> None:
        request = _Request()
        requests.append(weakref.ref(request))
        with pytest.raises(SourceThrottled):
            cache.get(key, load)

    for key in ("a", "b", "c"):
        handle(key)
    gc.collect()
    alive = [ref for ref in requests if ref() is not None]
    with pytest.raises(SourceResting) as rested:
        cache.get("a", load)
    return cache, alive, rested.value


def test_a_rest_keeps_no_frame_of_the_caller_that_was_throttled() -> None:
    """A rest kept the error its caller raised: the error's traceback, and its cause's, hold
    the frames it went through, and each frame its caller's, up to the service's handler: every
    throttled request's locals stayed alive for good (a rest past its backoff is forgotten
    only once 4,096 more keys rest). The answer still names the throttle and its cause."""
    cache, alive, rested = _three_throttled_then_rested(_throttled_deep_down)
    assert alive == []
    cause = rested.__cause__
    assert (type(cause), str(cause)) == (SourceThrottled, "throttled")
    assert (type(cause.__cause__), str(cause.__cause__)) == (
        OSError,
        "ProvisionedThroughputExceededException",
    )
    cache.close()


def _throttled_with_its_cause_as_an_argument() -> str:
    try:
        raise OSError("ProvisionedThroughputExceededException")
    except OSError as exc:
        raise SourceThrottled(exc) from None  # ``raise MyError(exc)``: the cause an argument


def _throttled_with_its_cause_as_an_attribute() -> str:
    try:
        raise OSError("ProvisionedThroughputExceededException")
    except OSError as exc:
        error = SourceThrottled("throttled")
        error.original = exc  # type: ignore[attr-defined]  # botocore keeps its kwargs so
        raise error from None


def _throttled_by_each_partition() -> str:
    failures: list[Exception] = []
    for _partition in range(2):
        try:
            raise OSError("ProvisionedThroughputExceededException")
        except OSError as exc:
            failures.append(exc)
    try:
        raise ExceptionGroup("every partition", failures)
    except ExceptionGroup as group:
        raise SourceThrottled("throttled") from group


class _ClientError(Exception):
    """botocore's way: the message made from keywords, which are kept (an error among them)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(f"could not connect: {kwargs['error']}")
        self.kwargs = kwargs


def _throttled_after_an_error_that_keeps_its_cause_in_keywords() -> str:
    try:
        try:
            raise OSError("ProvisionedThroughputExceededException")
        except OSError as exc:
            raise _ClientError(error=exc) from None
    except _ClientError:
        raise SourceThrottled("throttled") from None  # that error: its context


def _held_errors(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it holds (arguments, attributes, in a list, a tuple or a dict
    one level down; causes, contexts, a group's errors), each once."""
    found: dict[int, BaseException] = {}
    todo = [error]
    while todo:
        link = todo.pop()
        if id(link) in found:
            continue
        found[id(link)] = link
        values: list[Any] = [*link.args, *vars(link).values(), link.__cause__, link.__context__]
        values += [item for value in values if isinstance(value, list | tuple) for item in value]
        values += [item for value in values if isinstance(value, dict) for item in value.values()]
        todo += [value for value in values if isinstance(value, BaseException)]
    return list(found.values())


@pytest.mark.parametrize(
    "load",
    [
        _throttled_with_its_cause_as_an_argument,
        _throttled_with_its_cause_as_an_attribute,
        _throttled_by_each_partition,
        _throttled_after_an_error_that_keeps_its_cause_in_keywords,
    ],
)
def test_a_rest_keeps_no_frame_through_an_error_the_throttle_holds(load: Any) -> None:
    """The throttle's copy dropped the tracebacks of its causes and contexts only: an error
    held in its arguments (``raise SourceThrottled(exc)``), in an attribute, or inside an
    exception group (a fan-out over partitions) kept its traceback, and with it every frame up
    to the handler (3 of 3 requests kept, each way); so did one kept in a dict of a context's
    attribute (botocore's ``kwargs``: 3 of 3 with the first fix alone). Each is copied
    without its own."""
    cache, alive, rested = _three_throttled_then_rested(load)
    assert alive == []
    kept = rested.__cause__
    assert type(kept) is SourceThrottled
    said = [str(error) for error in _held_errors(kept) if isinstance(error, OSError)]
    assert said and set(said) == {"ProvisionedThroughputExceededException"}
    cache.close()


def test_a_wall_clock_stepped_back_leaves_no_rest_longer_than_it_is() -> None:
    """The chain's clock is the wall clock: stepped back an hour (NTP) after a throttle, a
    rest of a tenth of a second had an hour and a tenth left, and the key failed at once for
    all of it without a request (its message: '3.6e+03s left')."""
    now = [1_000_000.0]
    rests = ThrottleRests(1.0, lambda: now[0], never_invalidated)
    rests.note("a", 0, SourceThrottled("throttled"))
    now[0] -= 3600.0
    assert resting(rests, "a") == ""


def test_a_nan_backoff_rests_nothing() -> None:
    # Protection takes any float (the settings refuse NaN): NaN compared false with the rest's
    # end, and a throttled key rested for good.
    rests = ThrottleRests(math.nan, FakeClock(), never_invalidated)
    rests.note("a", 0, SourceThrottled("throttled"))
    assert resting(rests, "a") == ""


class _CountedKey(str):
    """A key that counts the hashes taken of it (each dictionary look-up takes one)."""

    hashes = 0

    def __hash__(self) -> int:
        _CountedKey.hashes += 1
        return str.__hash__(self)


def test_a_throttle_past_the_limit_does_not_look_at_every_resting_key() -> None:
    """Past ``limit`` keys, each throttle of one more key looked at every resting one to
    prune them: 4,096 look-ups (about 3 ms) for each throttled load of a storm over many keys,
    when the source is sick and the cache should cost least."""
    clock = FakeClock()
    rests = ThrottleRests(100.0, clock, never_invalidated, limit=100)
    for number in range(100):
        rests.note(_CountedKey(number), 0, SourceThrottled("throttled"))
    _CountedKey.hashes = 0
    for number in range(100, 1100):
        rests.note(_CountedKey(number), 0, SourceThrottled("throttled"))
    assert _CountedKey.hashes < 10 * 1000  # 1,000 throttles: a few look-ups each
    assert 75 <= len(rests.resting([_CountedKey(n) for n in range(1100)])) <= 100
