"""Instructions per L2 hit, counted by valgrind: the client's work, which load cannot move.

An L2 hit is ``chain.get(key)`` on the chain of ``benchmarks/bench_redis.py`` (a 10-entry
memory tier, the default policy, in front of the Redis tier: cycling 1,000 keys makes every read
an L1 miss, an L2 hit and a copy-up into the full L1); the peer is redis-py ``GET`` +
``json.loads`` of the same tweet, on a client with the same socket options. Both are built by
``bench_redis.connect``, so this counts exactly what the bench times. ``redis-server`` runs
outside valgrind (started here, filled once); each contender runs under ``valgrind
--tool=callgrind`` twice, with 1 and 3 passes over the 1,000 keys after one warm-up pass
(valgrind instruments it only from the end of the warm-up on: ``callgrind_control``), and the
difference of the two totals over 2,000 is printed: the exit cancels out too.
``PYTHONHASHSEED=0`` makes the runs repeatable.

Instructions are the client's user-space work only: the kernel's side of a round trip (two
``poll`` and a ``sendto``/``recvfrom`` each way, the same for both contenders) and the wait
for the server are not in them, so the ratio here is larger than the timed one, whose
denominator carries the round trip.

``--parts`` also counts the steps in between (the raw ``GET`` alone, the tier's read alone,
the tier's ``get``), so that the chain's cost splits into the wire, the decode and the chain.

``--batch`` counts the chain's ``get_many`` of 100 keys (``bench_redis.BATCHES``) instead, per
key, beside the parts ``benchmarks/bench_get_many_parts.py`` times (the tier's ``get_many``
alone, its MGET alone, its decode alone, the memory tier's look-up of the 100 keys and its
taking of the 100 entries), and what the parts leave of the chain's count: its own code.
``--annotate FILE`` keeps the chain's long run's callgrind profile in ``FILE`` and prints its
top functions by inclusive count (``callgrind_annotate``: C functions; the interpreter's
frames show as ``_PyEval_EvalFrameDefault``).

Run: ``.venv/bin/python tools/l2_instructions.py [--parts | --batch] [--annotate FILE]``
(valgrind installed; about 2 minutes, 5 with ``--parts`` or ``--batch``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bench_redis import connect, fill  # noqa: E402
from timing import run_line  # noqa: E402

from tiered_cache.testing.servers import RedisServer  # noqa: E402

#: Passes over the 1,000 keys of the short and the long run; their difference is counted.
SHORT, LONG = 1, 3
READS_PER_PASS = 1_000

#: What each contender does per key (``bench`` is ``bench_redis.connect``'s).
READS = {
    "chain get": "bench.chain.get",
    "raw GET + json.loads": "lambda key, get=bench.raw.get, loads=json.loads: "
    "loads(get(RAW_PREFIX + key))",
    # The steps in between (--parts).
    "raw GET": "lambda key, get=bench.raw.get: get(RAW_PREFIX + key)",
    "tier wire GET": "lambda key, read=bench.tier._read_path().get, "
    "name=bench.tier.redis_key: read(name(key))",
    "tier get": "bench.tier.get",
}
PARTS = ("raw GET", "tier wire GET", "tier get")

#: What each contender does per batch of 100 (``i``: the batch's index in ``BATCHES``; the
#: parts' inputs are ``BATCH_SETUP``'s, as ``bench_get_many_parts.py`` makes them).
BATCH_READS = {
    "chain get_many(100)": "lambda i: bench.chain.get_many(BATCHES[i])",
    "tier get_many(100)": "lambda i: bench.tier.get_many(BATCHES[i])",
    "redis MGET": "lambda i: reads.mget(names[i])",
    "redis decode": "lambda i: decode(BATCHES[i], replies[i], time.time())",
    "memory get_many": "lambda i: memory.get_many(BATCHES[(i + 3) % len(BATCHES)])",
    "memory set_many": "lambda i: memory.set_many(entries[(i + 5) % len(BATCHES)])",
}
#: The parts of the chain's batch, which together leave its own code.
BATCH_PARTS = ("redis MGET", "redis decode", "memory get_many", "memory set_many")
BATCH_SETUP = """
memory, tier = bench.chain.tiers[0], bench.tier
reads = tier._read_path()
names = [[tier.redis_key(key) for key in batch] for batch in BATCHES]
replies = [reads.mget(batch) for batch in names]
decode = tier._stored.decode_many
entries = [decode(batch, values, time.time()) for batch, values in zip(BATCHES, replies)]
"""

PROGRAM = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
from bench_redis import BATCHES, KEYS, RAW_PREFIX, connect
bench = connect({url!r})
{setup}
read = {read}
def one_pass():
    for item in {items}:
        read(item)
one_pass()
print("ready", flush=True)  # the tool turns valgrind's instrumentation on, then says go
sys.stdin.readline()
for _ in range(int(sys.argv[1])):
    one_pass()
assert bench.chain.stats()["loads"] == 0, "every chain read must have been a hit"
bench.close()
"""


def instructions(program: str, passes: int, out: str = "/dev/null") -> int:
    """The instructions the program ran in ``passes`` passes and its exit (valgrind's total):
    valgrind starts it uninstrumented (start-up and the warm-up pass run several times
    faster) and instruments it from the moment the program says it is ready."""
    child = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            program,
            str(passes),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert child.stdin is not None and child.stdout is not None
    if child.stdout.readline().strip() == "ready":
        subprocess.run(
            ["callgrind_control", "--instr=on", str(child.pid)], capture_output=True, check=True
        )
        child.stdin.write("go\n")
        child.stdin.flush()
    _, errors = child.communicate()
    found = re.search(r"Collected : (\d+)", errors)
    if child.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed:\n{errors[-3000:]}")
    return int(found.group(1))


def per_read(program: str, annotate: str | None = None) -> float:
    """Instructions per key (a pass reads the 1,000 keys, one by one or in batches)."""
    long = instructions(program, LONG, annotate or "/dev/null")
    short = instructions(program, SHORT)
    return (long - short) / ((LONG - SHORT) * READS_PER_PASS)


def program(name: str, url: str) -> str:
    """The program that reads as contender ``name`` does (a key, or a batch, per call)."""
    if name in BATCH_READS:
        setup, read, items = BATCH_SETUP, BATCH_READS[name], "range(len(BATCHES))"
    else:
        setup, read, items = "", READS[name], "KEYS"
    return PROGRAM.format(benchmarks=str(BENCHMARKS), url=url, setup=setup, read=read, items=items)


def top_functions(profile: str, lines: int = 40) -> str:
    """``callgrind_annotate``'s inclusive top functions of ``profile``."""
    done = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=99", profile],
        capture_output=True,
        text=True,
        check=True,
    )
    return "\n".join(done.stdout.splitlines()[: lines + 20])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--parts", action="store_true", help="count the steps in between too")
    what.add_argument("--batch", action="store_true", help="count get_many(100) and its parts")
    parser.add_argument("--annotate", metavar="FILE", help="keep the chain's callgrind profile")
    args = parser.parse_args()
    # The counted programs run this interpreter in this environment: the core this process
    # runs (said by the run line) is theirs.
    print(run_line())
    if args.batch:
        names = ["chain get_many(100)", "tier get_many(100)", *BATCH_PARTS]
    else:
        names = ["chain get", "raw GET + json.loads", *(PARTS if args.parts else ())]
    counts: dict[str, float] = {}
    with RedisServer() as server:
        bench = connect(server.url)
        fill(bench)
        bench.close()
        for name in names:
            counted = args.annotate if name == names[0] else None
            counts[name] = per_read(program(name, server.url), counted)
    unit = "key" if args.batch else "read"
    for name in names:
        print(f"{name:<24}{counts[name]:>10,.0f} instructions per {unit}")
    if args.batch:
        whole = counts["chain get_many(100)"]
        tier = counts["tier get_many(100)"]
        own = whole - sum(counts[part] for part in BATCH_PARTS)
        print(f"{'chain over the tier':<24}{whole - tier:>10,.0f} instructions per key")
        print(f"{'chain own (no parts)':<24}{own:>10,.0f} instructions per key")
    else:
        ours, peer = counts["chain get"], counts["raw GET + json.loads"]
        print(f"ratio chain get / raw GET + json.loads: {ours / peer:.2f}x")
    if args.annotate:
        print(top_functions(args.annotate))


if __name__ == "__main__":
    main()
