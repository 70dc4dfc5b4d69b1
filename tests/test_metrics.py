"""The chain's counters: per-thread cells that add up to exact totals in a snapshot."""

from __future__ import annotations

import bisect
import math
import threading

from tiered_cache.metrics import EVENTS, LOAD_BUCKETS, CacheMetrics


def test_counts_from_many_threads_add_up_exactly() -> None:
    metrics = CacheMetrics(["memory", "redis"])
    start = threading.Barrier(8)

    def count() -> None:
        start.wait()
        for _ in range(1000):
            metrics.hit(1)
            metrics.miss(0)
            metrics.fill(0, 2)
            metrics.load(3, 0.004)
            metrics.waited()
            metrics.count("stale_served")
            metrics.count("not_listed_event", 2)
        metrics.error(1)
        metrics.skip(0)
        metrics.load_failure()
        metrics.l1_hits.add()

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    snapshot = metrics.snapshot()
    memory, redis = snapshot["tiers"]
    assert memory == {
        "name": "memory",
        "hits": 8,
        "misses": 8000,
        "fills": 16000,
        "errors": 0,
        "skips": 8,
    }
    assert redis == {
        "name": "redis",
        "hits": 8000,
        "misses": 0,
        "fills": 0,
        "errors": 8,
        "skips": 0,
    }
    assert snapshot["loads"] == 8000
    assert snapshot["keys_loaded"] == 24000
    assert snapshot["load_failures"] == 8
    assert snapshot["singleflight_waits"] == 8000
    assert snapshot["source_reads_saved"] == 8 + 8000 + 8000
    assert abs(snapshot["load_seconds"] - 8000 * 0.004) < 1e-6
    assert snapshot["stale_served"] == 8000
    assert snapshot["not_listed_event"] == 16000


def test_a_snapshot_lists_every_event_and_cumulative_buckets() -> None:
    metrics = CacheMetrics(["memory"])
    metrics.load(1, 0.001)  # exactly on a bound: counted in that bucket
    metrics.load(1, 0.003)
    metrics.load(1, 60.0)  # slower than the last bound: only in +Inf

    snapshot = metrics.snapshot()

    assert all(snapshot[event] == 0 for event in EVENTS)
    buckets = snapshot["load_seconds_buckets"]
    assert list(buckets) == [*map(repr, LOAD_BUCKETS), "+Inf"]
    assert buckets["0.001"] == 1
    assert buckets["0.0025"] == 1
    assert buckets["0.005"] == 2
    assert buckets["10.0"] == 2
    assert buckets["+Inf"] == 3


def test_a_load_lands_in_the_bucket_bisect_would_pick() -> None:
    # The histogram's walk (metrics._bucket) against bisect_left, the rule it stands for: on
    # every bound, either side of it, beyond the last, zero, negative, infinite and NaN.
    durations = [0.0, -1.0, 1e-9, 60.0, math.inf, -math.inf, math.nan]
    for bound in LOAD_BUCKETS:
        durations += [bound, math.nextafter(bound, 0.0), math.nextafter(bound, math.inf)]
    for seconds in durations:
        metrics = CacheMetrics(["memory"])
        metrics.load(1, seconds)
        buckets = list(metrics.snapshot()["load_seconds_buckets"].values())
        first = next(index for index, total in enumerate(buckets) if total)
        assert first == bisect.bisect_left(LOAD_BUCKETS, seconds), seconds


def test_a_load_timed_across_a_wall_clock_stepped_back_never_takes_from_the_sum() -> None:
    """A load is timed on the chain's clock, the wall clock by default: stepped back an hour
    (NTP) during a load, the load took -3600 s and the histogram's sum went down by an hour,
    which Prometheus's rate() reads as a counter reset (a spike in the mean load time)."""
    from tiered_cache import TieredCache
    from tiered_cache.memory import MemoryTier

    now = [1_000_000.0]

    def loader() -> str:
        now[0] -= 3600.0
        return "v"

    cache = TieredCache([MemoryTier(clock=lambda: now[0])], clock=lambda: now[0])
    cache.get("k", loader)
    stats = cache.stats()
    cache.close()
    assert (stats["load_seconds"], stats["load_seconds_buckets"]["0.001"]) == (0.0, 1)
