"""Instructions per miss, counted by valgrind: a figure the shared machine's load cannot move.

A miss here is ``cache.get(new_key, loader)`` on a full one-tier chain (the default policy,
20,000 entries) or theine's ``get`` + ``set`` of a new key on a full ``theine.Cache``. Each
contender runs under ``valgrind --tool=callgrind`` twice, with 1,000 and 3,000 misses after
the same warm-up, and the difference of the two totals over 2,000 is printed: start-up and
warm-up cancel out. ``PYTHONHASHSEED=0`` makes the runs repeatable (the policy's sketch and
admission depend on the keys' hashes). Instructions are not time (a cache miss costs more
than an add), but they follow the interpreted frames and the allocations a miss pays, and a
change of a few percent shows where timings on a loaded machine drift by twenty.

``--entries 10 50`` also counts a small memory tier's own miss at each size, the way the
seventh round of issue 12 measured it (docs/benchmarks/hit-ratio.md): ``get`` of a new key and
its ``set``, after 20,000 reads of other new keys; and, per key, a ``get_many`` of 100 keys and
the ``set_many`` of them, 1,000 keys cycled (what ``bench_redis.py``'s chain asks of its 10-entry
memory tier). Each beside the same with ``adaptive_window=false`` (the policy of every cache
under 100 entries before 8d1b006).

Run: ``.venv/bin/python tools/miss_instructions.py [--entries N ...]`` (valgrind installed;
about 2 minutes, and 2 more per size). ``TIERED_CORE_PURE=1`` counts the pure-Python core.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import run_line  # noqa: E402

ENTRIES = 20_000
#: Misses of the short and the long run; their difference is what is counted.
SHORT, LONG = 1_000, 3_000

CHAIN = """
import sys
sys.path.insert(0, {benchmarks!r})
from bench_memory_tier import memory_cache
def loader(): return 1
cache = memory_cache({entries})
for i in range({entries}): cache.get(f"w{{i}}", loader)
get = cache.get
for key in [f"new:{{i}}" for i in range(int(sys.argv[1]))]: get(key, loader)
"""

THEINE = """
import sys, theine
cache = theine.Cache({entries})
for i in range({entries}): cache.set(f"w{{i}}", 1)
def loader(): return 1
get, put = cache.get, cache.set
for key in [f"new:{{i}}" for i in range(int(sys.argv[1]))]:
    _, found = get(key)
    if not found: put(key, loader())
"""


#: A small tier's miss: its own ``get`` and ``set`` (no chain), after 20,000 reads.
TIER = """
import sys, time
from tiered_cache import MemoryTier
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.tier import Entry
policy = TinyLfuPolicy({entries}, adaptive={adaptive})
tier = MemoryTier(policy=policy, max_entries={entries}, ttl=300)
now = time.time()
entry = Entry(1, now, now + 3600)
get, put = tier.get, tier.set
for i in range(20_000):
    key = f"w{{i}}"
    get(key); put(key, entry)
for key in [f"new:{{i}}" for i in range(int(sys.argv[1]))]:
    get(key); put(key, entry)
"""

#: The same tier's batches: ``sys.argv[1]`` counts the misses of both runs, as above, and a
#: batch is 100 of them (the per-miss figure is per key).
BATCHES = """
import sys, time
from tiered_cache import MemoryTier
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.tier import Entry
policy = TinyLfuPolicy({entries}, adaptive={adaptive})
tier = MemoryTier(policy=policy, max_entries={entries}, ttl=300)
now = time.time()
entry = Entry(1, now, now + 3600)
keys = [f"tweet:{{i}}" for i in range(1000)]
chunks = [keys[i : i + 100] for i in range(0, 1000, 100)]
fills = [dict.fromkeys(chunk, entry) for chunk in chunks]
get_many, set_many = tier.get_many, tier.set_many
for r in range(300 + int(sys.argv[1]) // 100):  # 30,000 reads first: past the first aging
    get_many(chunks[r % 10]); set_many(fills[r % 10])
"""


def instructions(program: str, misses: int) -> int:
    """Every instruction the program ran (valgrind's total), with ``misses`` misses."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            program,
            str(misses),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no total:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_miss(program: str) -> float:
    return (instructions(program, LONG) - instructions(program, SHORT)) / (LONG - SHORT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, nargs="*", default=[], help="small tier sizes")
    args = parser.parse_args()
    # The counted programs run this interpreter in this environment: the core this process
    # runs (said by the run line) is theirs.
    print(run_line())
    benchmarks = str(ROOT / "benchmarks")
    ours = per_miss(CHAIN.format(benchmarks=benchmarks, entries=ENTRIES))
    peer = per_miss(THEINE.format(entries=ENTRIES))
    print(f"cache.get(key, loader) miss, full {ENTRIES:,}: {ours:,.0f} instructions")
    print(f"theine get + set miss, full {ENTRIES:,}:     {peer:,.0f} instructions")
    print(f"ratio: {ours / peer:.2f}x")
    for entries in args.entries:
        for label, program in (("get + set of a new key", TIER), ("get_many + set_many", BATCHES)):
            adaptive, fixed = (
                per_miss(program.format(entries=entries, adaptive=adaptive))
                for adaptive in (True, False)
            )
            print(
                f"tier {label}, {entries} entries: {adaptive:,.0f} instructions "
                f"(adaptive_window=false: {fixed:,.0f})"
            )


if __name__ == "__main__":
    main()
