"""The asyncio chain's miss, against another checkout of the project measured in the same run.

A change to the miss path of the asyncio face (the loader's task for a read's load, say) is
judged against the checkout it changes: a frozen clone with its own ``.venv``, given as
``--peer``. Each round runs this script's measure once in each checkout (a fresh process of
that checkout's interpreter, in turns whose order rotates), and prints, for each figure, the
minimum and median of the rounds and the ratio of ours to the peer's, round by round:

- one miss at a time, a loader that answers at once (``await cache.get(new_key, loader)``
  over a memory tier, the default protection): microseconds a miss;
- 100 misses at once of a loader that awaits ``asyncio.sleep(0)``: microseconds a miss;
- the event loop's lag while 100 coroutines miss a source answering in 50 ms (a probe
  sleeping 1 ms in a loop, as ``bench_async.py``'s lag row; target <= 5 ms): the worst lag
  of each of ``LAGS`` runs, their median and maximum taken in the process.

Run: ``.venv/bin/python benchmarks/bench_async_miss.py --peer /tmp/base [--rounds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from timing import ROOT, Spread, core_in, head, paired, run_line

#: Misses a pass of the one-at-a-time figure; passes a measure (the least disturbed counts).
MISSES = 2000
PASSES = 5
#: Runs of the lag scenario a measure.
LAGS = 9
#: What each measure reports, in that order.
FIGURES = {
    "immediate": "one miss at a time, loader answering at once (us a miss)",
    "gathered": "100 misses at once, loader awaiting sleep(0) (us a miss)",
    "lag_median": "loop lag, 100 misses of a 50 ms source: median of runs (ms)",
    "lag_max": "loop lag, 100 misses of a 50 ms source: worst of runs (ms)",
}


def chain() -> Any:
    from tiered_cache import AsyncTieredCache, MemoryTier

    return AsyncTieredCache([MemoryTier(max_entries=1_000_000)])


async def immediate() -> float:
    """Microseconds a miss, one at a time (the best of PASSES passes)."""
    cache = chain()

    async def load() -> int:
        return 1

    best = float("inf")
    for index in range(PASSES):
        keys = [f"i{index}:{n}" for n in range(MISSES)]
        started = time.perf_counter()
        for key in keys:
            await cache.get(key, load)
        best = min(best, (time.perf_counter() - started) / MISSES)
    await cache.aclose()
    return best * 1e6


async def gathered() -> float:
    """Microseconds a miss, 100 at once of a loader that suspends once (best of passes)."""
    cache = chain()

    async def load() -> int:
        await asyncio.sleep(0)
        return 1

    best = float("inf")
    for index in range(PASSES * 4):
        keys = [f"g{index}:{n}" for n in range(100)]
        started = time.perf_counter()
        await asyncio.gather(*(cache.get(key, load) for key in keys))
        best = min(best, (time.perf_counter() - started) / len(keys))
    await cache.aclose()
    return best * 1e6


async def lag() -> float:
    """The worst lateness (ms) of a probe sleeping 1 ms while 100 coroutines miss 100 keys
    of a source answering in 50 ms (``bench_async.py``'s own row, async source)."""
    from bench_async import loop_lag

    return await loop_lag("async") * 1000


async def measure() -> dict[str, float]:
    lags = [await lag() for _ in range(LAGS)]
    return {
        "immediate": await immediate(),
        "gathered": await gathered(),
        "lag_median": statistics.median(lags),
        "lag_max": max(lags),
    }


def run_in(tree: Path) -> dict[str, float]:
    """One measure in a fresh process of ``tree``'s interpreter (its own package)."""
    python = tree / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), __file__, "--measure"], capture_output=True, text=True, check=True
    )
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, help="a checkout with its .venv (the baseline)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(asyncio.run(measure())))
        return
    if args.peer is None:
        parser.error("--peer is required")
    print(run_line())
    peer = args.peer.resolve()
    print(f"peer: {peer} (commit {head(peer)}, {core_in(peer)})")
    trees = {"ours": ROOT, "peer": peer}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    names = list(trees)
    for index in range(args.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(run_in(trees[name]))
    print(f"\n{args.rounds} rounds, each checkout once a round in turns (min / median of rounds)")
    print(f"{'figure':62} {'ours':>15} {'peer':>15} {'ours/peer':>11}")
    for figure, title in FIGURES.items():
        ours = [run[figure] for run in samples["ours"]]
        theirs = [run[figure] for run in samples["peer"]]
        mine, base, ratio = Spread.of(ours), Spread.of(theirs), paired(ours, theirs)
        print(
            f"{title:62} {mine.low:6.2f} / {mine.middle:6.2f} {base.low:6.2f} / "
            f"{base.middle:6.2f} {ratio.low:4.2f} / {ratio.middle:4.2f}"
        )


if __name__ == "__main__":
    main()
