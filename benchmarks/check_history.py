"""The long history check: randomized schedules over real processes, a real Redis and faults.

Every schedule runs 2-4 worker processes (memory + Redis + bus chains, like the product's)
against one private redis-server and one versioned source, with slow loads, direct source
writes, every kind of invalidation and, in some schedules, a fault (Redis SIGSTOP/SIGCONT,
Redis killed and restarted empty, a bus connection cut at a TCP proxy). Each read is checked
against the source's history (tiered_cache/testing/history.py). Prints schedules run, reads
checked and violations; writes the failing schedules to a JSON file that ``--replay`` runs again.

Run: ``.venv/bin/python benchmarks/check_history.py --schedules 2000 --seed 1``
     ``.venv/bin/python benchmarks/check_history.py --replay history-failures.json``
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from tiered_cache.testing.history_run import (
    HistoryRig,
    Outcome,
    RunConfig,
    Summary,
    run_schedules,
    save_failures,
)
from tiered_cache.testing.history_schedule import ScheduleShape, generate, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=4, help="worker processes (2-4 per schedule)"
    )
    parser.add_argument("--fault-rate", type=float, default=ScheduleShape.fault_rate)
    parser.add_argument("--replay", help="run the schedules of this file instead of new ones")
    parser.add_argument("--repeat", type=int, default=1, help="with --replay: runs of each")
    parser.add_argument(
        "--failures", default="history-failures.json", help="where failing schedules go"
    )
    args = parser.parse_args()
    shape = ScheduleShape(workers=args.workers, fault_rate=args.fault_rate)
    config = replace(RunConfig(), workers=args.workers, shape=shape)
    if args.replay:
        schedules = [s for s in load(args.replay) for _ in range(args.repeat)]
    else:
        schedules = [generate(args.seed, index, shape) for index in range(args.schedules)]
    started = time.monotonic()

    def progress(outcome: Outcome, summary: Summary) -> None:
        for violation in outcome.violations:
            print(f"  VIOLATION in schedule {outcome.schedule.index}: {violation.detail}")
        if outcome.troubled:
            print(f"  troubled schedule {outcome.schedule.index}: {outcome.trouble}")
        if summary.schedules % 100 == 0:
            print(
                f"{summary.schedules} schedules, {summary.reads} reads, "
                f"{summary.violations} violations, {time.monotonic() - started:.0f} s",
                flush=True,
            )

    with HistoryRig(config) as rig:
        summary = run_schedules(rig, schedules, progress)
    elapsed = time.monotonic() - started
    print(f"schedules run:    {summary.schedules}")
    print(f"reads checked:    {summary.reads}")
    print(f"violations:       {summary.violations} (in {len(summary.failing)} schedules)")
    print(f"widened reads:    {summary.widened_reads} (checked against the fault bound)")
    print(f"troubled:         {summary.troubled} schedules (a failure nobody injected)")
    print(f"bounds:           bus delay {config.bus_delay} s, near a fault {config.fault_bound} s")
    print(f"paths exercised:  {_counts(summary.paths)}")
    print(f"failures counted: {_counts(summary.trouble)}")
    print(f"wall time:        {elapsed:.0f} s")
    if summary.failing:
        save_failures(args.failures, summary, config)
        print(f"failing schedules written to {args.failures}")
        return 1
    return 0


def _counts(counters: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counters.items())) or "none"


if __name__ == "__main__":
    sys.exit(main())
