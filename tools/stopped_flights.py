"""Stops delivered at random into the reads of many threads: is a key's single-flight ever left
claimed by a caller that was stopped?

Each round builds a memory-tier chain over eight keys and runs ``--threads`` reader threads
for ``--seconds``: each reads, over and over, a ``get_many`` of three random keys (a batch
loader) or a ``get`` of one (a loader), while a writer thread invalidates every key every
0-1 ms (so reads keep missing) and a stopper thread, every 0-1 ms, raises ``Stop`` (a
``BaseException``, as ``KeyboardInterrupt`` or a task queue's time limit) in a random reader
that is inside a read, with ``PyThreadState_SetAsyncExc``: it lands at that thread's next
check for asynchronous exceptions, wherever the read is. One stop per read (a Ctrl-C); with
``--again``, a read may be stopped again while it handles its first stop (its landing of the
flights it leads included: no Python code survives that everywhere). Then the readers are
stopped and waited for (a guard of 5 s each, not a measure), and the round counts:

- ``stops``: stops raised inside a read (a stop that landed after the read ended is not
  counted);
- ``recursive``: reads that raised ``RecursiveLoad`` (a thread reading a key whose flight
  it was stopped while claiming);
- ``stuck``: readers still waiting after the guard (for a flight nobody will land);
- ``left``: flights still in the table once every reader ended or stuck (claims never landed).

A round with ``recursive`` or ``left`` is a round with a flight left claimed; one with
``stuck`` readers and neither, a round where a flight left the table and was never landed (a
stop inside the landing itself). The flights left are then landed by hand so that the round
ends.

Run: ``TIERED_CORE_PURE=1 .venv/bin/python tools/stopped_flights.py --rounds 8 --seed 1``; to
attack another tree's code, put its directory first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tiered_cache import MemoryTier, RecursiveLoad, TieredCache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from timing import run_line

KEYS = [f"k{i}" for i in range(8)]


class Stop(BaseException):
    """Raised into a reader from outside: not an ``Exception``, as ``KeyboardInterrupt``."""


def _stop(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(Stop))


def _batch(keys: Sequence[str]) -> dict[str, str]:
    return {key: f"v-{key}" for key in keys}


def _one() -> str:
    return "v"


def one_round(  # noqa: PLR0915
    seed: int, threads: int, seconds: float, *, again: bool = False
) -> dict[str, Any]:
    """One round; its counts (see the module's docstring)."""
    cache = TieredCache([MemoryTier(name="l1", max_entries=100, ttl=60)])
    flights = cache._loader.flights
    done = threading.Event()
    lock = threading.Lock()
    armed = [False] * threads
    idents = [0] * threads
    counts = {"stops": 0, "recursive": 0, "other": 0}
    others: dict[str, int] = {}

    def read(index: int, rng: random.Random) -> None:
        while not done.is_set():
            try:
                armed[index] = True
                try:
                    if rng.random() < 0.5:
                        cache.get_many(rng.sample(KEYS, 3), _batch)
                    else:
                        cache.get(rng.choice(KEYS), _one)
                finally:
                    armed[index] = False
            except Stop:
                with lock:
                    counts["stops"] += 1
            except RecursiveLoad:
                with lock:
                    counts["recursive"] += 1
            except Exception as exc:
                with lock:
                    others[type(exc).__name__] = others.get(type(exc).__name__, 0) + 1

    def reader(index: int) -> None:
        idents[index] = threading.get_ident()
        rng = random.Random(seed * 1000 + index)
        while True:
            try:
                read(index, rng)
                return
            except Stop:
                continue  # landed outside a read (in this loop's own lines): not counted

    def writer() -> None:
        rng = random.Random(seed)
        while not done.is_set():
            cache.invalidate_many(KEYS)
            time.sleep(rng.uniform(0, 0.001))

    def stopper() -> None:
        rng = random.Random(-seed)
        while not done.is_set():
            time.sleep(rng.uniform(0, 0.001))
            index = rng.randrange(threads)
            if armed[index] and idents[index]:
                armed[index] = again  # one stop per read, unless --again
                _stop(idents[index])

    readers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(threads)]
    helpers = [threading.Thread(target=f, daemon=True) for f in (writer, stopper)]
    for thread in readers + helpers:
        thread.start()
    time.sleep(seconds)
    done.set()
    for thread in helpers:
        thread.join()
    for thread in readers:
        thread.join(5.0)  # a guard, not a measure
    stuck = sum(thread.is_alive() for thread in readers)
    left = sorted(flights._flights)
    if left:  # land them by hand, so that stuck readers start over and end
        flights.land(dict(flights._flights), {}, Stop())
        for thread in readers:
            thread.join(5.0)
    return {**counts, "stuck": stuck, "left": left, "others": others}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument(
        "--again",
        action="store_true",
        help="stop a read again while it handles its stop (by default once per read)",
    )
    parser.add_argument(
        "--switch", type=float, default=1e-5, help="sys.setswitchinterval: threads interleave more"
    )
    args = parser.parse_args(argv)
    sys.setswitchinterval(args.switch)
    import tiered_cache

    # The run line's one owner (benchmarks/timing.py), then which tree's code was attacked
    # (another tree's is put first on PYTHONPATH).
    print(run_line())
    print(f"tiered_cache from {os.path.dirname(tiered_cache.__file__)}")
    claimed = unlanded = 0
    totals = {"stops": 0, "recursive": 0, "stuck": 0, "left": 0}
    for number in range(args.rounds):
        counts = one_round(args.seed + number, args.threads, args.seconds, again=args.again)
        left = bool(counts["recursive"] or counts["left"])
        claimed += left
        # Readers stuck with no flight left: a flight out of the table, never landed.
        unlanded += bool(counts["stuck"] and not left)
        for name in ("stops", "recursive", "stuck"):
            totals[name] += counts[name]
        totals["left"] += len(counts["left"])
        print(f"round {number}: {counts}")
    print(
        f"rounds {args.rounds}; with a flight left claimed {claimed}; with readers stuck on a"
        f" flight out of the table (none left claimed) {unlanded}; totals {totals}"
    )


if __name__ == "__main__":
    main()
