"""One row of ``bench_hit_ratio.py``'s table, its L1 column replayed under several hash salts.

Python salts ``str`` hashes per process, and the memory tier's policy follows them (the
frequency sketch's counters, the LRU guard's sample): the table, run under one
``PYTHONHASHSEED``, shows one draw. This replays the named row's trace through the same tier
in one child process per salt and prints each draw beside the peers (computed once, in this
process: LRU, ARC, S3-FIFO and libcachesim's W-TinyLFU do not hash the keys; theine does, so
its figure is this process's draw), then the spread.

    python benchmarks/replay_row.py "recency-biased" 500 --hash-seeds 0-4
    python benchmarks/replay_row.py "OLTP 2nd half" 5000 --hash-seeds 0,7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_hit_ratio import DEFAULT_OLTP, PEERS, Trace, measure, traces
from timing import run_line

from tiered_cache.replay import replay


def find_trace(name: str, n_requests: int, oltp: Path | None) -> Trace:
    """The table's trace called ``name`` (OLTP is read only when asked for)."""
    source = oltp if name.startswith("OLTP") else None
    for trace in traces(n_requests, source, real=name.endswith("(real)")):
        if trace.name == name:
            return trace
    raise SystemExit(f"no trace named {name!r} in bench_hit_ratio.py's table")


def seeds(text: str) -> list[int]:
    """``"0-4"`` or ``"0,7,9"`` (or both, comma-separated)."""
    values: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        values.extend(range(int(low), int(high or low) + 1))
    return values


def l1_hits_under(seed: int, args: argparse.Namespace) -> int:
    """The L1 hits of the row, replayed by a child process under ``PYTHONHASHSEED=seed``."""
    command = [sys.executable, __file__, args.trace, str(args.size), "--l1-only"]
    command += ["--requests", str(args.requests)]
    if args.oltp is not None:
        command += ["--oltp", str(args.oltp)]
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("trace", help='a trace of the table, e.g. "recency 0.75 / 800"')
    parser.add_argument("size", type=int, help="the cache's entries")
    parser.add_argument("--hash-seeds", type=seeds, default=[0], help="e.g. 0-4 (default 0)")
    parser.add_argument("--requests", type=int, default=300_000, help="reads per synthetic trace")
    parser.add_argument("--oltp", type=Path, default=DEFAULT_OLTP, help="the OLTP trace")
    parser.add_argument("--l1-only", action="store_true", help="print this process's L1 hits")
    args = parser.parse_args()
    trace = find_trace(args.trace, args.requests, args.oltp)
    if args.l1_only:
        print(replay([(None, key) for key in trace.keys], args.size).hits)
        return
    print(run_line())
    total = len(trace.keys)
    row = measure(trace, args.size)  # the peers, and L1 under this process's salt
    peers = dict(zip(PEERS, row[4:9], strict=True))
    lru, best = peers["LRU"] or 0.0, max(value for value in peers.values() if value is not None)
    set_name = "tuned" if trace.tuned else "held out"
    print(f"{trace.name} ({set_name}) at {args.size:,} entries, {total:,} reads")
    print("  ".join(f"{name} {value * 100:.2f}" for name, value in peers.items() if value))
    print("| PYTHONHASHSEED | L1 | L1 - LRU | L1 - best | hits - LRU's |\n|---|---|---|---|---|")
    ratios = []
    for seed in args.hash_seeds:
        hits = l1_hits_under(seed, args)
        ratio = hits / total
        ratios.append(ratio)
        print(
            f"| {seed} | {ratio * 100:.2f} | {(ratio - lru) * 100:+.2f} | "
            f"{(ratio - best) * 100:+.2f} | {hits - round(lru * total):+,} |",
            flush=True,
        )
    low, middle, high = min(ratios), statistics.median(ratios), max(ratios)
    below = sum(ratio < lru for ratio in ratios)
    print(
        f"L1 min {low * 100:.2f} / median {middle * 100:.2f} / max {high * 100:.2f}; "
        f"below LRU under {below} of {len(ratios)} salts"
    )


if __name__ == "__main__":
    main()
