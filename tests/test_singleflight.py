"""Single-flight inside a process: many threads missing one key cause one load."""

from __future__ import annotations

import threading
import time

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.singleflight import SingleFlight


def start_together(count: int, target: object) -> list[threading.Thread]:
    barrier = threading.Barrier(count)

    def run() -> None:
        barrier.wait()
        target()  # type: ignore[operator]

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        flight = cache._flights.in_flight("tweet:42")
        if flight is not None and flight.waiters >= 199:
            break
        time.sleep(0.005)
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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        flight = cache._flights.in_flight("k")
        if flight is not None and flight.waiters >= 19:
            break
        time.sleep(0.005)
    release.set()
    for thread in threads:
        thread.join()
    assert calls == 1
    assert len(errors) == 20
    assert cache.get("k", lambda: "recovered") == "recovered"


def test_flight_is_released_after_an_exception() -> None:
    flights = SingleFlight()
    with pytest.raises(ValueError):
        flights.run("k", lambda flight: (_ for _ in ()).throw(ValueError("x")))
    assert flights.in_flight("k") is None
    assert flights.run("k", lambda flight: 5) == (5, False)
