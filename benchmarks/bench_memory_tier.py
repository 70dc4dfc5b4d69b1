"""The in-process tier's costs against peers in the same run (issue 14's in-process targets).

Ratios printed (tiered-cache / peer; target in brackets):

- ``cache.get`` L1 hit vs ``cachetools.LRUCache.get`` (<= 1.0);
- a ``@cache.cached`` function hit vs a ``functools.lru_cache`` hit (<= 3.0);
- ``cache.get(key, loader)`` of a new key on a full cache of 100,000 entries, default policy,
  vs theine ``get`` + ``set`` (<= 1.5);
- ``cache.set`` of a new key on a full cache of 100,000 entries vs theine ``set`` (<= 1.5);
- memory per entry at 1,000,000 small entries vs ``cachetools.TTLCache`` (<= 1.2), counted
  with ``tracemalloc`` (bytes, not time; the policy's frequency sketch included).

Times are the process's CPU time (``time.process_time``) per operation. Every contender runs
once per round, in a new random order each round, so that a slow moment of the shared machine
falls on all of them alike; the minimum (the least disturbed round) and the median are printed,
and the ratio is of the minimums. theine is a benchmark dependency
(``pip install -r benchmarks/requirements.txt``); without it its rows say so.

    python benchmarks/bench_memory_tier.py [--rounds N] [--entries N] [--skip-memory]
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable

import cachetools
from timing import run_line

from tiered_cache import TieredCache

try:
    import theine
except ImportError:  # pragma: no cover - reported in the output
    theine = None

#: Keys read round-robin by the hit contenders.
HIT_KEYS = [f"tweet:{i}" for i in range(1000)]
#: Entries of the full caches the miss and set contenders write new keys into.
FULL = 100_000
#: New keys per contender per round.
BATCH = 5_000


def memory_cache(max_entries: int) -> TieredCache:
    """A chain with one memory tier built from settings: the default policy, a 5 minute TTL."""
    tiers = [{"kind": "memory", "max_entries": max_entries, "ttl": "5m"}]
    return TieredCache.from_config(tiers=tiers, namespace="bench", ttl="5m")


def timed_rounds(
    contenders: dict[str, Callable[[int], None]], rounds: int
) -> dict[str, list[float]]:
    """CPU seconds per operation of each contender, one value per round. A contender is called
    with the round's number and runs ``BATCH`` (or its own fixed number of) operations; it
    returns nothing and is timed whole."""
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    shuffle = random.Random(5).shuffle
    for number in range(rounds):
        shuffle(order)
        for name in order:
            started = time.process_time()
            contenders[name](number)
            timings[name].append(time.process_time() - started)
    return timings


def hit_contenders() -> dict[str, Callable[[int], None]]:
    """L1 hits through the chain and the decorator, and their peers, warmed up."""
    cache = memory_cache(10_000)
    lru: cachetools.LRUCache[str, object] = cachetools.LRUCache(maxsize=10_000)
    for key in HIT_KEYS:
        lru[key] = {"tweet_id": key}
        for _ in range(3):  # several reads: a frequency-based admission keeps the key
            cache.get(key, lambda key=key: {"tweet_id": key})  # type: ignore[misc]

    @cache.cached(key="tweet:{tweet_id}")
    def decorated(tweet_id: str) -> dict[str, str]:
        return {"tweet_id": tweet_id}

    @functools.lru_cache(maxsize=10_000)
    def plain(tweet_id: str) -> dict[str, str]:
        return {"tweet_id": tweet_id}

    ids = [str(i) for i in range(len(HIT_KEYS))]
    for tweet_id in ids:
        for _ in range(3):
            decorated(tweet_id)
            plain(tweet_id)
    get, lru_get = cache.get, lru.get

    def chain_hits(_: int) -> None:
        for key in HIT_KEYS:
            get(key)

    def lru_hits(_: int) -> None:
        for key in HIT_KEYS:
            lru_get(key)

    def decorated_hits(_: int) -> None:
        for tweet_id in ids:
            decorated(tweet_id)

    def lru_cache_hits(_: int) -> None:
        for tweet_id in ids:
            plain(tweet_id)

    return {
        "cache.get (L1 hit)": chain_hits,
        "cachetools.LRUCache.get": lru_hits,
        "@cache.cached hit": decorated_hits,
        "functools.lru_cache hit": lru_cache_hits,
    }


def write_contenders(rounds: int) -> dict[str, Callable[[int], None]]:
    """Misses with a loader, and sets, of new keys on full caches, and theine's."""
    cache_for_misses = memory_cache(FULL)
    cache_for_sets = memory_cache(FULL)
    for key in (f"warm:{i}" for i in range(FULL)):
        cache_for_misses.get(key, lambda: 1)
        cache_for_sets.set(key, 1)
    # New keys for every round, made beforehand: making them is not what is measured.
    fresh = {
        name: [[f"{name}:{n}:{i}" for i in range(BATCH)] for n in range(rounds)]
        for name in ("miss", "set", "theine-miss", "theine-set")
    }
    assert cache_for_misses.stats()["tiers"][0]["entries"] == FULL
    get, put = cache_for_misses.get, cache_for_sets.set

    def loader() -> int:
        return 1

    def chain_misses(number: int) -> None:
        for key in fresh["miss"][number]:
            get(key, loader)

    def chain_sets(number: int) -> None:
        for key in fresh["set"][number]:
            put(key, 1)

    contenders: dict[str, Callable[[int], None]] = {
        "cache.get(key, loader) miss, full": chain_misses,
        "cache.set new key, full": chain_sets,
    }
    if theine is not None:
        peer_for_misses = theine.Cache(FULL)
        peer_for_sets = theine.Cache(FULL)
        for key in (f"warm:{i}" for i in range(FULL)):
            peer_for_misses.set(key, 1)
            peer_for_sets.set(key, 1)
        peer_get, peer_set, peer_put = peer_for_misses.get, peer_for_misses.set, peer_for_sets.set

        def theine_misses(number: int) -> None:
            for key in fresh["theine-miss"][number]:
                _, ok = peer_get(key)
                if not ok:
                    peer_set(key, loader())

        def theine_sets(number: int) -> None:
            for key in fresh["theine-set"][number]:
                peer_put(key, 1)

        contenders["theine get + set miss, full"] = theine_misses
        contenders["theine set new key, full"] = theine_sets
    return contenders


def print_times(timings: dict[str, list[float]], operations: dict[str, int]) -> None:
    print(f"{'contender':<38} {'min ns':>8} {'median ns':>10}")
    for name, values in timings.items():
        per = operations[name]
        low, middle = min(values) / per * 1e9, statistics.median(values) / per * 1e9
        print(f"{name:<38} {low:8.0f} {middle:10.0f}")


def ratio(
    timings: dict[str, list[float]], ours: str, peer: str, target: float, operations: dict[str, int]
) -> None:
    if peer not in timings:
        print(f"{ours} / {peer}: peer not installed (pip install -r benchmarks/requirements.txt)")
        return
    low = (min(timings[ours]) / operations[ours]) / (min(timings[peer]) / operations[peer])
    middle = (statistics.median(timings[ours]) / operations[ours]) / (
        statistics.median(timings[peer]) / operations[peer]
    )
    verdict = "met" if low <= target else "NOT met"
    print(f"{ours} / {peer}: {low:.2f}x min, {middle:.2f}x median (target <= {target}): {verdict}")


def bytes_per_entry(fill: Callable[[list[str], list[int]], object], entries: int) -> float:
    """Bytes ``tracemalloc`` sees allocated by ``fill`` for ``entries`` keys and values made
    beforehand (so that they are not counted: both contenders hold the same ones)."""
    keys = [f"key:{i:07d}" for i in range(entries)]
    values = list(range(entries))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = fill(keys, values)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    return (after - before) / entries


def fill_chain(keys: list[str], values: list[int]) -> object:
    cache = memory_cache(len(keys))
    get = cache.get
    for key, value in zip(keys, values, strict=True):
        get(key, lambda value=value: value)  # type: ignore[misc]
    assert cache.stats()["tiers"][0]["entries"] == len(keys)
    return cache


def fill_ttl_cache(keys: list[str], values: list[int]) -> object:
    cache: cachetools.TTLCache[str, int] = cachetools.TTLCache(maxsize=len(keys), ttl=300)
    for key, value in zip(keys, values, strict=True):
        cache[key] = value
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument(
        "--entries", type=int, default=1_000_000, help="entries for the memory figure"
    )
    parser.add_argument("--skip-memory", action="store_true", help="no memory figure")
    args = parser.parse_args()
    print(run_line())
    started = time.perf_counter()
    peer = "theine not installed"
    if theine is not None:
        peer = f"theine {importlib.metadata.version('theine')}"
    print(f"peers: cachetools {cachetools.__version__}, {peer}; {args.rounds} interleaved rounds")

    hits = hit_contenders()
    writes = write_contenders(args.rounds)
    operations = {name: len(HIT_KEYS) for name in hits} | {name: BATCH for name in writes}
    timings = timed_rounds(hits | writes, args.rounds)
    print_times(timings, operations)
    print()
    ratio(timings, "cache.get (L1 hit)", "cachetools.LRUCache.get", 1.0, operations)
    ratio(timings, "@cache.cached hit", "functools.lru_cache hit", 3.0, operations)
    ratio(
        timings, "cache.get(key, loader) miss, full", "theine get + set miss, full", 1.5, operations
    )
    ratio(timings, "cache.set new key, full", "theine set new key, full", 1.5, operations)

    if not args.skip_memory:
        ours = bytes_per_entry(fill_chain, args.entries)
        theirs = bytes_per_entry(fill_ttl_cache, args.entries)
        verdict = "met" if ours <= 1.2 * theirs else "NOT met"
        print(
            f"memory per entry at {args.entries:,} entries: {ours:.0f} B vs "
            f"cachetools.TTLCache {theirs:.0f} B: {ours / theirs:.2f}x (target <= 1.2): {verdict}"
        )
    print(f"\n(ran in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
