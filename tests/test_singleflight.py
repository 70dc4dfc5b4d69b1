"""Single-flight inside a process: many threads missing one key cause one load."""

from __future__ import annotations

import errno
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest

from tiered_cache import MemoryTier, PartialBatchError, TieredCache
from tiered_cache.compiled import compiled_core
from tiered_cache.errors import handed_on
from tiered_cache.singleflight import Flight, SingleFlight
from tiered_cache.testing.interrupts import Interrupted, interrupting
from tiered_cache.testing.polling import until
from tiered_cache.testing.pure_core import on_the_pure_core

T = TypeVar("T")


def start_together(count: int, target: object) -> list[threading.Thread]:
    barrier = threading.Barrier(count)

    def run() -> None:
        barrier.wait()
        target()  # type: ignore[operator]

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def parked(cache: TieredCache, key: str, waiters: int) -> None:
    """Wait until ``waiters`` threads wait on ``key``'s flight, counted by the cache."""

    def counted() -> bool:
        flight = cache._loader.flights.in_flight(key)
        return flight is not None and flight.waiters >= waiters

    until(counted, f"{waiters} threads waiting on the flight of {key!r}")


def in_a_thread(fn: Callable[[], T]) -> T:
    """``fn()`` called on a thread of its own (another caller than the test's thread)."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(fn()))
    thread.start()
    thread.join(timeout=10)
    return results[0]


def held_open(result: str) -> tuple[threading.Event, threading.Event, Callable[[object], str]]:
    """``(release, inside, work)``: a flight's work that sets ``inside`` when it starts and
    returns ``result`` once ``release`` is set."""
    release, inside = threading.Event(), threading.Event()

    def work(flight: object) -> str:
        inside.set()
        release.wait(timeout=10)
        return result

    return release, inside, work


def test_200_threads_missing_one_key_run_the_loader_exactly_once() -> None:
    cache = TieredCache([MemoryTier(max_entries=10)])
    calls = 0
    calls_lock = threading.Lock()
    release = threading.Event()
    results: list[object] = []

    def loader() -> dict[str, str]:
        nonlocal calls
        with calls_lock:
            calls += 1
        # Hold the load open until every thread has had the chance to miss and queue up.
        release.wait(timeout=10)
        return {"tweet_id": "42"}

    def reader() -> None:
        results.append(cache.get("tweet:42", loader))

    threads = start_together(200, reader)
    # Wait until the other 199 threads are parked on the flight, counted by the cache.
    parked(cache, "tweet:42", 199)
    release.set()
    for thread in threads:
        thread.join()
    assert calls == 1
    assert len(results) == 200
    assert all(result == {"tweet_id": "42"} for result in results)
    # the 199 that waited were counted, and every later read is an L1 hit
    assert cache.stats()["singleflight_waits"] == 199
    assert cache.get("tweet:42", loader) == {"tweet_id": "42"}
    assert calls == 1


def test_a_failing_load_raises_in_every_waiter_and_caches_nothing() -> None:
    cache = TieredCache([MemoryTier(max_entries=10)])
    release = threading.Event()
    calls = 0
    errors: list[BaseException] = []

    def loader() -> str:
        nonlocal calls
        calls += 1
        release.wait(timeout=10)
        raise LookupError("source failed")

    def reader() -> None:
        try:
            cache.get("k", loader)
        except LookupError as exc:
            errors.append(exc)

    threads = start_together(20, reader)
    parked(cache, "k", 19)
    release.set()
    for thread in threads:
        thread.join()
    assert calls == 1
    assert len(errors) == 20
    # The 19 waited for another's load as when it succeeds (the asyncio chain and get_many
    # counted them; a failing load's waiters were not, and an outage showed no coalescing).
    assert cache.stats()["singleflight_waits"] == 19
    assert cache.get("k", lambda: "recovered") == "recovered"


def test_the_waiters_of_a_failed_load_each_raise_an_error_of_their_own() -> None:
    """Every waiter raised the leader's exception object itself. Each raise set its
    ``__context__`` to what that waiter was handling and added the waiter's frames to its
    ``__traceback__``: the leader's caller, and every other waiter, then saw them as theirs
    (and threads raced to set them)."""
    flights = SingleFlight()
    release, inside = threading.Event(), threading.Event()

    def fails(flight: object) -> str:
        inside.set()
        release.wait(timeout=10)
        raise LookupError("source failed")

    led: list[LookupError] = []
    waited: list[LookupError] = []

    def lead() -> None:
        with pytest.raises(LookupError) as raised:
            flights.run("k", fails)
        led.append(raised.value)

    def wait_while_handling_its_own() -> None:
        try:
            raise KeyError("the waiter's own")
        except KeyError:
            with pytest.raises(LookupError) as raised:
                flights.run("k", fails)
            waited.append(raised.value)

    leader = threading.Thread(target=lead)
    leader.start()
    assert inside.wait(timeout=10)
    waiter = threading.Thread(target=wait_while_handling_its_own)
    waiter.start()
    until(lambda: getattr(flights.in_flight("k"), "waiters", 0) == 1, "the waiter joined")
    release.set()
    leader.join(timeout=10)
    waiter.join(timeout=10)
    ((leaders,), (waiters,)) = (led, waited)
    assert leaders.__context__ is None
    frames = [frame.name for frame in traceback.extract_tb(leaders.__traceback__)]
    assert "wait_while_handling_its_own" not in frames
    # The waiter's: the same error (type, message, where the load raised it), and its own.
    assert (type(waiters), waiters.args) == (LookupError, ("source failed",))
    assert isinstance(waiters.__context__, KeyError)
    frames = [frame.name for frame in traceback.extract_tb(waiters.__traceback__)]
    assert frames[0] == "wait_while_handling_its_own"
    assert frames[-1] == "fails"


def test_a_waiters_copy_of_an_error_says_what_it_says() -> None:
    """The copy a waiter raises (:func:`~tiered_cache.errors.handed_on`) is made without the
    class's own ``__init__``, which may build its message from other arguments."""

    class NotFound(LookupError):
        def __init__(self, key: str) -> None:
            super().__init__(f"no item {key!r}")
            self.key = key

    found = handed_on(NotFound("k"))
    assert (type(found), str(found), found.key) == (NotFound, "no item 'k'", "k")
    refused = handed_on(ConnectionRefusedError(111, "refused"))
    assert (type(refused), refused.errno, refused.strerror) == (
        ConnectionRefusedError,
        111,
        "refused",
    )


def test_flight_is_released_after_an_exception() -> None:
    flights = SingleFlight()
    with pytest.raises(ValueError):
        flights.run("k", lambda flight: (_ for _ in ()).throw(ValueError("x")))
    assert flights.in_flight("k") is None
    assert flights.run("k", lambda flight: 5) == (5, False)


def test_concurrent_get_many_of_the_same_cold_keys_loads_each_key_once() -> None:
    """20 threads ask for overlapping cold batches, and single gets join in: every key is
    loaded once, by whichever caller got to it first."""
    cache = TieredCache([MemoryTier(max_entries=100)])
    loaded: list[str] = []
    lock = threading.Lock()
    release = threading.Event()

    def load_batch(keys: Sequence[str]) -> dict[str, str]:
        with lock:
            loaded.extend(keys)
        release.wait(timeout=10)
        return {key: key.upper() for key in keys}

    results: list[dict[str, str]] = []
    singles: list[str] = []

    def batch_reader(index: int) -> None:
        keys = [f"k{(index + offset) % 6}" for offset in range(3)]
        results.append(cache.get_many(keys, load_batch))

    def single_reader() -> None:
        singles.append(cache.get("k0", lambda: "never loaded: k0 is in flight"))

    readers = [threading.Thread(target=batch_reader, args=(i,)) for i in range(20)]
    readers.append(threading.Thread(target=single_reader))
    for reader in readers[:-1]:
        reader.start()
    deadline = time.monotonic() + 10
    while len(set(loaded)) < 6 and time.monotonic() < deadline:
        time.sleep(0.005)
    readers[-1].start()
    while time.monotonic() < deadline:
        flight = cache._loader.flights.in_flight("k0")
        if flight is None or flight.waiters >= 1:
            break
        time.sleep(0.005)
    release.set()
    for reader in readers:
        reader.join()
    assert sorted(loaded) == [f"k{i}" for i in range(6)]  # each key once
    assert len(results) == 20
    for result in results:
        assert all(value == key.upper() for key, value in result.items())
    assert singles == ["K0"]


def causes(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def test_a_get_many_that_joins_a_failing_batch_raises_its_error() -> None:
    """A batch that waits for a key another caller's batch is loading must get that load's
    error, never ``None`` as if the source had no such item (which would then look like a
    legitimate "not found" to the caller)."""
    cache = TieredCache([MemoryTier(max_entries=10)])
    error = LookupError("source failed")
    first_started = threading.Event()
    second_claimed = threading.Event()
    release = threading.Event()

    def failing_batch(keys: Sequence[str]) -> dict[str, str]:
        first_started.set()
        release.wait(timeout=10)
        raise error

    def second_batch(keys: Sequence[str]) -> dict[str, str]:
        # Called for "c" only, which nobody else loads: by now "a" was found in flight.
        second_claimed.set()
        return {key: key.upper() for key in keys}

    outcomes: dict[str, object] = {}

    def read(name: str, keys: list[str], loader: object) -> None:
        try:
            outcomes[name] = cache.get_many(keys, loader)  # type: ignore[arg-type]
        except BaseException as exc:
            outcomes[name] = exc

    first = threading.Thread(target=read, args=("first", ["a", "b"], failing_batch))
    first.start()
    assert first_started.wait(timeout=10)
    second = threading.Thread(target=read, args=("second", ["a", "c"], second_batch))
    second.start()
    # The second batch joins "a" before it loads "c"; a core that waits first would never
    # call it, so do not insist, just give it the time.
    second_claimed.wait(timeout=2)
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    first_error = outcomes["first"]
    assert isinstance(first_error, PartialBatchError)  # the whole batch failed, per key
    assert first_error.errors == {"a": error, "b": error}
    assert first_error.values == {}
    joined = outcomes["second"]
    assert isinstance(joined, PartialBatchError), f"the joined batch returned {joined!r}"
    # Per key: the joined key carries the load's own error (a copy, its own); the key it led
    # was served.
    assert (LookupError, error.args) in [(type(cause), cause.args) for cause in causes(joined)]
    assert [(type(got), got.args) for got in joined.errors.values()] == [(LookupError, error.args)]
    assert list(joined.errors) == ["a"] and joined.values == {"c": "C"}
    # Nothing of the failed load was kept: the next read loads again.
    assert cache.get_many(["a"], lambda keys: {"a": "recovered"}) == {"a": "recovered"}


def test_a_flight_counts_each_caller_that_joined_it() -> None:
    flights = SingleFlight()
    led, joined, behind = flights.claim(["a", "b"], tag=7)
    assert (list(led), joined, behind) == (["a", "b"], {}, {})
    assert led["a"].waiters == 0
    # Other callers (threads): the thread that leads "a" would be refused (RecursiveLoad).
    again, joined, _ = in_a_thread(lambda: flights.claim(["a", "c"]))
    assert (list(again), list(joined)) == (["c"], ["a"])
    asked: list[tuple[str, int]] = []

    def may_not_join(key: str, tag: int) -> bool:
        asked.append((key, tag))
        return False

    _, _, behind = in_a_thread(lambda: flights.claim(["a"], tag=9, may_join=may_not_join))
    assert list(behind) == ["a"]  # may not be joined: waited for all the same
    assert asked == [("a", 7)]  # asked of the key and the tag its flight was led with
    assert led["a"].waiters == 2  # two batches wait for "a"
    assert led["b"].waiters == 0
    release, inside, slow = held_open("x")
    leader = threading.Thread(target=lambda: flights.run("k", slow))
    leader.start()
    assert inside.wait(timeout=10)
    follower = threading.Thread(target=lambda: flights.run("k", slow))
    follower.start()
    flight = flights.in_flight("k")
    assert flight is not None
    deadline = time.monotonic() + 10
    while flight.waiters < 1:
        assert time.monotonic() < deadline, "the second caller never joined"
        time.sleep(0.005)
    assert flight.waiters == 1
    release.set()
    leader.join(timeout=10)
    follower.join(timeout=10)
    flights.land(led, {}, None)
    flights.land(again, {}, None)


def test_an_interrupted_leader_hands_its_flight_to_its_waiter() -> None:
    """An interruption (``KeyboardInterrupt``, a cancelled task) is the leader's own: a
    thread waiting for its flight starts over and leads it, it does not raise it."""
    flights = SingleFlight()
    inside = threading.Event()
    outcome: list[object] = []

    def interrupted(flight: Flight) -> str:
        inside.set()
        until(lambda: flight.waiters > 0, "the other thread joined this flight")
        raise KeyboardInterrupt

    def leader() -> None:
        try:
            flights.run("k", interrupted)
        except KeyboardInterrupt:
            outcome.append("leader interrupted")

    def waiter() -> None:
        inside.wait(timeout=10)
        try:
            outcome.append(flights.run("k", lambda flight: "reloaded"))
        except BaseException as exc:
            outcome.append(type(exc).__name__)

    threads = [threading.Thread(target=leader), threading.Thread(target=waiter)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(map(str, outcome)) == ["('reloaded', False)", "leader interrupted"]


class OwnHash(str):
    """A str subclass with a hash of its own (Python code inside the flight table's dict)."""

    def __hash__(self) -> int:
        return hash(str(self))


@pytest.mark.parametrize("key", ["k", OwnHash("k")], ids=["str", "str subclass"])
def test_a_leader_alone_makes_no_latch_and_a_waiter_is_woken_by_its_landing(key: str) -> None:
    # A miss leads its flight without the table's lock (str keys) and without latches; the
    # first caller that joins makes their list, each waiter its own latch, and the leader's
    # landing lets go of every one.
    flights = SingleFlight()
    seen: list[Flight] = []
    assert flights.run(key, lambda flight: seen.append(flight) or "alone") == ("alone", False)
    assert seen[0]._latches is None and seen[0].waiters == 0
    assert flights.in_flight(key) is None
    release, inside, slow = held_open("shared")
    results: list[tuple[object, bool]] = []
    leader = threading.Thread(target=lambda: results.append(flights.run(key, slow)))
    leader.start()
    assert inside.wait(timeout=10)
    flight = flights.in_flight(key)
    assert flight is not None and flight._latches is None  # nobody waits yet
    followers = [
        threading.Thread(target=lambda: results.append(flights.run(key, slow))) for _ in range(3)
    ]
    for follower in followers:
        follower.start()
    deadline = time.monotonic() + 10
    while flight._latches is None or len(flight._latches) < 3:
        assert time.monotonic() < deadline, "the callers never waited"
        time.sleep(0.005)
    assert flight.waiters == 3  # a latch for each of the three
    release.set()
    for thread in (leader, *followers):
        thread.join(timeout=10)
    assert (
        sorted(results, key=lambda result: result[1])
        == [("shared", False)] + [("shared", True)] * 3
    )
    assert flights.in_flight(key) is None


def test_a_waiter_that_gives_up_raises_load_timeout_without_the_wait_as_its_context() -> None:
    # Its message names the key and the wait it gave up after.
    # ``raise LoadTimeout(...) from None``: the internal WaitExpired of the wait is not shown
    # as "during handling of the above exception". Compiled with mypyc (the core), ``raise
    # ... from`` lost its clause: the LoadTimeout came out chained to that WaitExpired.
    from tiered_cache import LoadTimeout

    flights = SingleFlight()
    release, inside, slow = held_open("late")
    leader = threading.Thread(target=lambda: flights.run("k", slow))
    leader.start()
    assert inside.wait(timeout=10)
    try:
        with pytest.raises(LoadTimeout) as raised:
            flights.run("k", slow, wait=0.01)
    finally:
        release.set()
        leader.join(timeout=10)
    assert raised.value.__suppress_context__ and raised.value.__cause__ is None
    assert str(raised.value).startswith("waited 0.01s for another caller's load of 'k' ")


def test_a_waiter_interrupted_as_the_flight_lands_leaves_it_open_for_the_others() -> None:
    """A waiter interrupted (Ctrl-C's KeyboardInterrupt, a task queue's signal-raised time
    limit) just as the flight it waits for lands must not keep the others from its outcome.
    The latch was a lock each waiter took and passed on; on the pure-Python core the
    interrupt is raised as the lock's acquire returns -- taken, never passed on -- and every
    other waiter of the flight waited for ever (no hard timeout, the default) or timed out.
    Compiled, no signal handler runs between the two calls: run on the sources too."""
    if compiled_core():
        on_the_pure_core(
            test_a_waiter_interrupted_as_the_flight_lands_leaves_it_open_for_the_others
        )
    flights = SingleFlight()
    release, inside, slow = held_open("shared")
    sent = threading.Event()
    outcome: list[object] = []
    with interrupting() as interrupt:

        def lead() -> None:
            flights.run("k", slow)
            interrupt()  # as the flight lands: its latch is being passed to the waiter
            sent.set()

        leader = threading.Thread(target=lead)
        leader.start()
        assert inside.wait(timeout=10)
        flight = flights.in_flight("k")
        assert flight is not None
        flight.join()  # another waiter, which waits once the first was interrupted

        def land_once_both_joined() -> None:
            until(lambda: flight.waiters >= 2, "both waiters joined")
            release.set()

        releaser = threading.Thread(target=land_once_both_joined)
        releaser.start()
        try:
            outcome.append(flights.run("k", slow))
            sent.wait(timeout=10)  # the interrupt is raised here at the latest
        except Interrupted:
            outcome.append("interrupted")
        leader.join(timeout=10)
        releaser.join(timeout=10)
    assert outcome[-1] == "interrupted"
    assert flight.wait(timeout=10) == "shared"  # WaitExpired: the latch was kept


# The messages below are what a caller reads in its traceback: each names what it is about
# (the key, the wait, the interruption's type), so they are compared whole.


def test_a_caller_behind_a_flight_it_may_not_join_gives_up_after_its_wait() -> None:
    """A caller behind a flight it may not take (an invalidation came since it started) waits
    for it to end no longer than its ``wait``, as a caller that joins does, and does not load
    meanwhile. Waiting behind it without a limit, a hung load held every such caller for ever
    (seen failing with ``settle(None)``: the test's thread waited until the leader ended)."""
    from tiered_cache import LoadTimeout

    flights = SingleFlight()
    release, inside, slow = held_open("old")
    leader = threading.Thread(target=lambda: flights.run("k", slow, tag=1))
    leader.start()
    assert inside.wait(timeout=10)
    tags: list[int] = []

    def may_join(key: str, tag: int) -> bool:
        tags.append(tag)
        return False

    loads: list[str] = []
    try:
        with pytest.raises(LoadTimeout) as raised:
            flights.run("k", lambda flight: loads.append("second"), may_join=may_join, wait=0.05)
        ended_before = release.is_set()
    finally:
        release.set()
        leader.join(timeout=10)
    assert not ended_before and loads == [] and tags == [1]
    assert str(raised.value) == (
        "waited 0.05s for another caller's load of 'k' (the hard timeout, and the lease wait "
        "with leases); that load goes on"
    )


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("one", [True, False], ids=["land_one", "land"])
def test_the_waiters_of_an_interrupted_leader_are_told_which_interruption(
    interruption: type[BaseException], one: bool
) -> None:
    """The waiters of a leader interrupted by a ``BaseException`` are given a
    :class:`LeaderGone` (the interruption is the leader's own) that names it: the asyncio
    chain's waiters and a batch's joiners read it from their flight."""
    from tiered_cache.singleflight import LeaderGone

    flights = SingleFlight()
    led = in_a_thread(lambda: flights.claim(["k"])[0])
    _, joined, _ = flights.claim(["k"])
    if one:
        flights.land_one("k", led["k"], None, interruption())
    else:
        flights.land(led, {"k": "never"}, interruption())
    with pytest.raises(LeaderGone) as raised:
        joined["k"].wait(timeout=10)
    assert str(raised.value) == (
        f"the caller leading this flight was interrupted ({interruption.__name__})"
    )
    assert flights.in_flight("k") is None


def test_a_batch_that_claims_a_key_it_leads_names_that_key() -> None:
    from tiered_cache import RecursiveLoad

    flights = SingleFlight()
    led, _, _ = flights.claim(["a", "b"])
    with pytest.raises(RecursiveLoad) as raised:
        flights.claim(["c", "b"])
    assert str(raised.value) == (
        "the load of 'b' read 'b' again (its loader, or something it calls, reads the key it "
        "loads): it would wait for itself for ever"
    )
    assert flights.in_flight("c") is None  # nothing of the refused claim stays
    flights.land(led, {}, None)


def test_a_miss_leaves_nothing_in_the_flight_table() -> None:
    """Every flight leaves the table when it lands: a table that kept one entry per miss
    (its flight, under any key) would grow for as long as the process runs."""
    flights = SingleFlight()
    for number in range(3):
        assert flights.run(f"k{number}", lambda flight, n: n, number) == (number, False)
    assert flights._flights == {}


def test_a_refresh_does_not_join_a_readers_flight_it_waits_behind_it() -> None:
    """A background refresh takes no reader's outcome (a reader's flight may end with the
    stale value the refresh is to renew): beside a reader's flight it is told to wait behind
    it, then ask again, and leads once the reader's flight has landed."""
    from tiered_cache.singleflight import BEHIND, LEAD

    flights = SingleFlight()
    led = in_a_thread(lambda: flights.claim(["k"])[0])
    flight, role = flights.lead_after("k", tag=1)
    assert (flight, role) == (led["k"], BEHIND)
    flights.land(led, {"k": "read"}, None)
    flight.settle(timeout=10)
    again, role = flights.lead_after("k", tag=2)
    assert role == LEAD and again.tag == 2
    flights.land_one("k", again, "refreshed", None)


def test_the_waiters_of_a_failed_refresh_are_told_what_it_failed_with() -> None:
    from tiered_cache.singleflight import RefreshFailed, refresh_failed

    failed = refresh_failed(ConnectionError("down"))
    assert isinstance(failed, RefreshFailed)
    assert str(failed) == "the background refresh loading this key failed (ConnectionError)"


def test_a_refresh_marks_the_flight_it_leads_and_a_reader_does_not() -> None:
    from tiered_cache.singleflight import LEAD

    flights = SingleFlight()
    flight, role = flights.lead_after("k", tag=1)
    assert (role, flight.refresh) == (LEAD, True)
    flights.land_one("k", flight, "refreshed", None)
    led = flights.claim(["k"])[0]
    assert led["k"].refresh is False
    flights.land(led, {"k": "read"}, None)
    assert Flight().refresh is False


def test_a_reader_that_finds_a_refresh_reads_beside_it_and_joins_only_with_nothing_to_serve() -> (
    None
):
    """``run(..., beside=...)``: a refresh's flight is not joined at first; the caller's
    ``beside`` runs with the caller's own flight (its tag) and the same arguments, and its
    value is served unshared; ``MISSING`` from it: the caller joins the refresh's flight."""
    from tiered_cache.tier import MISSING

    flights = SingleFlight()
    refresh, _ = flights.lead_after("k", tag=1)  # the readers: threads of their own
    called: list[tuple[int, str]] = []

    def served(flight: Flight, arg: str) -> str:
        called.append((flight.tag, arg))
        return "stale"

    def loaded(flight: Flight, arg: str) -> str:
        raise AssertionError("a reader beside a refresh loads nothing")

    assert in_a_thread(lambda: flights.run("k", loaded, "a", tag=5, beside=served)) == (
        "stale",
        False,
    )
    assert (called, refresh.waiters) == ([(5, "a")], 0)

    def nothing(flight: Flight, arg: str) -> object:
        called.append((flight.tag, arg))
        return MISSING

    results: list[tuple[object, bool]] = []
    reader = threading.Thread(
        target=lambda: results.append(flights.run("k", loaded, "b", tag=6, beside=nothing))
    )
    reader.start()
    deadline = time.monotonic() + 10
    while refresh.waiters < 1:
        assert time.monotonic() < deadline, "the reader never joined the refresh"
        time.sleep(0.001)
    flights.land_one("k", refresh, "refreshed", None)
    reader.join(10)
    assert results == [("refreshed", True)]
    assert called == [(5, "a"), (6, "b")]


def test_a_readers_flight_is_joined_without_a_read_beside_it() -> None:
    from tiered_cache.singleflight import BESIDE, JOIN

    flights = SingleFlight()
    led = in_a_thread(lambda: flights.claim(["k"])[0])
    flight, role = flights.join_or_lead("k", tag=2, beside=True)
    assert (flight, role) == (led["k"], JOIN)
    flights.land(led, {"k": "read"}, None)
    refresh, _ = in_a_thread(lambda: flights.lead_after("k", tag=3))
    assert flights.join_or_lead("k", tag=4, beside=True) == (refresh, BESIDE)
    assert refresh.waiters == 0  # not joined
    assert flights.join_or_lead("k", tag=4) == (refresh, JOIN)
    assert refresh.waiters == 1
    flights.land_one("k", refresh, "refreshed", None)


def test_a_batch_joins_a_refreshs_flight_as_any_other() -> None:
    """A batch claims only keys it found nothing to serve for: a background refresh's
    flight of one is joined (its outcome taken), never read beside nor waited behind."""
    flights = SingleFlight()
    refresh, _ = in_a_thread(lambda: flights.lead_after("k", tag=3))
    led, joined, behind = flights.claim(["k", "j"], tag=4)
    assert (list(led), joined, behind) == (["j"], {"k": refresh}, {})
    assert refresh.waiters == 1
    flights.land_one("k", refresh, "refreshed", None)
    flights.land(led, {"j": "loaded"}, None)
    assert refresh.wait(10) == "refreshed"


class _Refused(ConnectionError):
    """A source's error of its own on an OSError: its __init__ takes a host, and the errno
    and message it passes on live in OSError's C fields, not in ``__dict__``."""

    def __init__(self, host: str) -> None:
        super().__init__(errno.ECONNREFUSED, f"refused by {host}")
        self.host = host


class _TimedOut(TimeoutError):
    """An OSError subclass given a message alone (botocore's ``ReadTimeoutError`` is one,
    through requests' ``IOError``): its arguments are left to its ``__init__`` too."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"read timed out after {seconds}s")
        self.seconds = seconds


class _Coded(LookupError):
    """An error that keeps its field in a slot, not in ``__dict__``."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


def _missing_file() -> OSError:
    try:
        open(os.path.join(os.path.dirname(__file__), "no-such-file.txt"))  # noqa: SIM115
    except OSError as exc:
        return exc
    raise AssertionError("the file exists")


def _led_and_waited(
    error: Callable[[], BaseException],
) -> tuple[BaseException | None, BaseException | None]:
    """The error a flight's leader raised from its load, and the one its waiter raised (None:
    it raised nothing within the guard's 10 s)."""
    flights = SingleFlight()
    release, inside = threading.Event(), threading.Event()

    def fails(flight: object) -> str:
        inside.set()
        release.wait(timeout=10)
        raise error()

    raised: dict[str, BaseException] = {}

    def call(who: str) -> None:
        try:
            flights.run("k", fails)
        except Exception as exc:
            raised[who] = exc

    leader = threading.Thread(target=call, args=("leader",))
    leader.start()
    assert inside.wait(timeout=10)
    waiter = threading.Thread(target=call, args=("waiter",))
    waiter.start()
    until(lambda: getattr(flights.in_flight("k"), "waiters", 0) == 1, "the waiter joined")
    release.set()
    leader.join(timeout=10)
    waiter.join(timeout=10)
    return raised.get("leader"), raised.get("waiter")


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (_missing_file, ("errno", "strerror", "filename")),
        (lambda: _Refused("db1"), ("errno", "strerror", "host")),
        (lambda: _TimedOut(3), ("args", "seconds")),
        (lambda: _Coded(7), ("code",)),
        (lambda: ImportError("no module", name="plugin", path="/p"), ("name", "path")),
        (lambda: AttributeError("no attribute", name="size", obj=None), ("name",)),
    ],
    ids=[
        "file-not-found",
        "oserror-subclass",
        "oserror-subclass-message",
        "slots",
        "import-error",
        "attribute-error",
    ],
)
def test_a_waiters_copy_keeps_the_fields_kept_outside_its_dict(
    error: Callable[[], BaseException], fields: Sequence[str]
) -> None:
    """A copy (:func:`~tiered_cache.errors.handed_on`) made from the arguments and
    ``__dict__`` alone lost what an exception keeps in C fields or slots: a loader's
    ``open()`` failing gave its waiters "[Errno 2] No such file or directory" without the
    file's name, an OSError subclass with an ``__init__`` of its own gave them errno None and
    an empty message, and a slot was not there at all."""
    led, waited = _led_and_waited(error)
    assert waited is not led
    assert (type(waited), str(waited)) == (type(led), str(led))
    assert [getattr(waited, name, "MISSING") for name in fields] == [
        getattr(led, name) for name in fields
    ]


@dataclass(frozen=True)
class _NotFound(LookupError):
    """A frozen dataclass error: its ``__setattr__`` refuses every attribute, dunders too."""

    key: str


class _Sealed(LookupError):
    """An error sealed once made: its ``__setattr__`` refuses every attribute after."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no item {key!r}")
        object.__setattr__(self, "sealed", True)

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, "sealed", False):
            raise AttributeError(f"{type(self).__name__} is sealed")
        super().__setattr__(name, value)


@pytest.mark.parametrize(
    "error", [lambda: _NotFound("k"), lambda: _Sealed("k")], ids=["frozen-dataclass", "sealed"]
)
def test_an_error_whose_class_refuses_attributes_reaches_the_leader_and_its_waiters(
    error: Callable[[], BaseException],
) -> None:
    """The copy (:func:`~tiered_cache.errors.handed_on`) set the cause, context and traceback
    outside the guard that hands on an error it cannot copy: a frozen dataclass error (its
    ``__setattr__`` refuses them) raised ``FrozenInstanceError`` in the flight's landing. The
    leader got that instead of its load's error, and the waiter, its flight out of the table
    and never woken, waited for ever. Such an error is now handed on as it is."""
    led, waited = _led_and_waited(error)
    assert (type(led), type(waited)) == (type(error()), type(error()))
    assert str(waited) == str(led)
