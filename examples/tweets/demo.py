"""The main job (``make demo``): the classic example, then a minute of load, then the report.

    python -m examples.tweets.demo [--config FILE] [--duration 60] [--plot FILE]

Runs on the embedded default unless configured (see :mod:`examples.tweets.embedded`). The load
time is split evenly between tiered-cache and the classic Redis cache-aside baseline, which read
the same requests; without Redis only tiered-cache runs, for the whole time.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from . import classic, loadgen
from .app import cache_report
from .embedded import environment


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.tweets.demo", description=__doc__)
    parser.add_argument("--config", help="TOML file with a [tiered_cache] table")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load in all")
    parser.add_argument("--rate", type=float, default=500.0, help="target reads per second")
    parser.add_argument("--threads", type=int, default=8, help="concurrent readers")
    parser.add_argument("--plot", type=Path, default=loadgen.DEFAULT_PLOT, help="PNG to write")
    parser.add_argument("--json", type=Path, help="also write the load report as JSON here")
    args = parser.parse_args(argv)

    started = time.monotonic()
    with environment(args.config) as env:
        print("== environment")
        print(env.describe())
        print()
        print("== the classic example: create a tweet, get it twice")
        classic.run(env)
        print()
        baseline = "classic" if env.redis_url is not None else None
        per_pattern = args.duration / 2 if baseline else args.duration
        print(
            f"== load: the tweet workload at {args.rate:g} reads/s with {args.threads} threads, "
            f"{per_pattern:g} s per pattern"
        )
        options = loadgen.LoadOptions(
            duration=per_pattern,
            rate=args.rate,
            threads=args.threads,
            initial_tweets=5_000,
            baseline=baseline,
            plot=args.plot,
        )
        report = loadgen.run_load(env, options)
        print()
        print("== report")
        loadgen.print_report(report)
        operator = cache_report(env.cache.stats())
        hot = ", ".join(
            f"{entry['key']} ({entry['reads_per_second']:.0f}/s)"
            for entry in operator["hot_keys"][:3]
        )
        print(f"hottest keys now: {hot or 'none'}")
        print(
            f"DynamoDB reads saved by the chain so far: {operator['source_reads_saved']:,} "
            f"({operator['read_capacity_units_saved']:,.0f} read capacity units)"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.json.resolve()}")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
