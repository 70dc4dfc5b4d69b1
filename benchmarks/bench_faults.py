"""Fault benchmark (#11): four processes under Redis stalls, Redis deaths, bus cuts, throttling.

Three parts, each on real parts (a private ``redis-server``, moto's DynamoDB server, four
``spawn`` worker processes) with the project's fault injectors:

1. **History under faults**: the history checker's rig (tiered_cache/testing/history_run.py)
   plays seeded schedules in which every schedule has one fault (Redis SIGSTOP/SIGCONT, Redis
   killed and restarted empty, one worker's bus cut at its TCP FaultProxy). Every read is
   checked against the source's versions at the documented bound; "reads older than the bound"
   are the checker's ``stale`` violations.
2. **Redis outage**: the same four workers read the tweet workload (tiered_cache/workloads.py)
   while Redis is stopped (SIGSTOP) for ``--outage`` seconds; source loads per key read, per
   process, are compared with ``max_stale_when_disconnected`` (at most one load per key per
   that many seconds).
3. **DynamoDB throttled**: four processes, each a memory + Redis chain in front of moto's
   DynamoDB whose reads botocore throttles (``ThrottleInjector``), read the tweet workload.

Prints caller errors (target 0), reads older than the bound (target 0) and loads per key
during the outage (target <= 1 per key per ``max_stale_when_disconnected``, per process).
Part 3 also prints what the chains counted after the warm-up (refreshes started,
``singleflight_waits``, stale values served, loads), how long the four read loops ran (each is
due to end after ``--throttle-seconds``) and the reads that began more than 50 ms after their
slot (a reader held up by a wait).

``--parts 3`` runs part 3 alone, on a private ``redis-server`` of its own (parts 1 and 2
share the history rig's).

Run: ``flock /tmp/bench.lock .venv/bin/python benchmarks/bench_faults.py [--quick] [--parts 3]``
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, replace
from datetime import timedelta
from multiprocessing import get_context
from typing import Any

from timing import run_line

from tiered_cache import TieredCache
from tiered_cache.settings import CacheSettings
from tiered_cache.testing.history_run import HistoryRig, RunConfig, Summary
from tiered_cache.testing.history_schedule import Op, ScheduleShape, generate
from tiered_cache.testing.servers import RedisServer
from tiered_cache.workloads import TweetWorkload, tweet_requests

#: The setting that bounds source loads while the bus is down (#11, landed by "bus").
SETTING = "max_stale_when_disconnected"
#: A small timeline, so that keys repeat within a few seconds of reads.
WORKLOAD = TweetWorkload(rate=100.0, initial_tweets=300, tweets_per_second=2.0)
#: Part 3: a read that begins this many seconds after its slot is late.
LATE = 0.05
#: Part 3: the chains' counters reported, as counted after the warm-up.
COUNTED = ("refreshes", "singleflight_waits", "stale_served", "loads")


def setting_value() -> float | None:
    """The default of ``max_stale_when_disconnected`` in seconds, None when no model has it."""
    models: list[Any] = [CacheSettings]
    while models:
        model = models.pop()
        for name, field in model.model_fields.items():
            if name == SETTING:
                default = field.get_default(call_default_factory=True)
                if isinstance(default, timedelta):
                    return default.total_seconds()
                return None if default is None else float(default)
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
                models.append(field.annotation)
    return None


# -- part 1: the history checker, a fault in every schedule


def history_under_faults(rig: HistoryRig, schedules: int, seed: int) -> dict[str, Any]:
    """Run seeded schedules that each inject one fault; errors, violations, faults by kind."""
    shape = rig.config.shape
    summary = Summary()
    errors = 0
    faults: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for index in range(schedules):
        schedule = generate(seed, index, shape)
        faults.update(fault.kind for fault in schedule.faults)
        outcome = rig.run(schedule)
        summary.add(outcome)
        errors += sum(1 for record in outcome.records if record["error"])
        kinds.update(violation.kind for violation in outcome.violations)
    return {"summary": summary, "errors": errors, "faults": faults, "kinds": kinds}


# -- part 2: the tweet workload through the rig's workers while Redis is stopped


def redis_outage(rig: HistoryRig, outage: float, seed: int) -> dict[str, Any]:
    """Warm each worker on its tweet keys, stop Redis for ``outage`` s while they keep reading;
    source loads per key read, per worker, and caller errors."""
    tag = f"outage-{uuid.uuid4().hex[:6]}:"
    reads_per_worker = int(WORKLOAD.rate * outage)
    plans: list[list[str]] = []
    for index in range(len(rig.workers)):
        trace = tweet_requests(reads_per_worker, seed + index, WORKLOAD, prefix=f"{tag}tweet:")
        plans.append([key for _, key in trace])
    keys = sorted({key for plan in plans for key in plan})
    for key in keys:
        rig.store.store(key, f"v:{key}", f"init:{key}")
    # Warm: every key a worker will read is in its memory and in Redis before the outage.
    _run_all(
        rig,
        [[Op(f"warm.{i}", i, 0.0, "get_many", sorted(set(plan)))] for i, plan in enumerate(plans)],
    )
    before = [int(worker.ask("stats")["loads"]) for worker in rig.workers]
    pid = rig.redis.pid
    assert pid is not None
    t0 = time.monotonic() + 0.05
    stopper = threading.Thread(target=_stop_redis, args=(pid, t0, outage), daemon=True)
    stopper.start()
    step = outage / reads_per_worker
    records = _run_all(
        rig,
        [
            [Op(f"out.{i}.{n}", i, round(n * step, 4), "get", [key]) for n, key in enumerate(plan)]
            for i, plan in enumerate(plans)
        ],
        t0,
    )
    stopper.join()
    after = [int(worker.ask("stats")["loads"]) for worker in rig.workers]
    wrong = sum(
        1 for record in records for key, value in record["reads"].items() if value != f"v:{key}"
    )
    per_key = [
        (new - old) / len(set(plan)) for old, new, plan in zip(before, after, plans, strict=True)
    ]
    hottest = max(Counter(plan).most_common(1)[0][1] for plan in plans)
    rig.store.forget(keys)
    return {
        "reads": len(records),
        "errors": sum(1 for record in records if record["error"]),
        "wrong": wrong,
        "per_key": per_key,
        "keys": [len(set(plan)) for plan in plans],
        "hottest": hottest,
    }


def _stop_redis(pid: int, t0: float, outage: float) -> None:
    pause = t0 - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(outage)
    finally:
        os.kill(pid, signal.SIGCONT)


def _run_all(rig: HistoryRig, ops: list[list[Op]], t0: float | None = None) -> list[dict[str, Any]]:
    start = time.monotonic() + 0.02 if t0 is None else t0
    for index, mine in enumerate(ops):
        rig.workers[index].conn.send(("run", ([asdict(op) for op in mine], start)))
    records: list[dict[str, Any]] = []
    for worker in rig.workers:
        records += worker.receive(timeout=120)
    return records


# -- part 3: DynamoDB throttled under four processes


def throttled_worker(
    index: int, redis_url: str, source: dict[str, Any], seconds: float, rate: float
) -> dict[str, float]:
    """One process: a memory + Redis chain on the throttled DynamoDB table, reading tweets."""
    from tiered_cache_dynamodb import DynamoDBSource
    from tiered_cache_dynamodb.testing import ThrottleInjector

    logging.disable(logging.WARNING)
    cache = TieredCache.from_config(
        namespace=source["table"],
        ttl=1.0,
        protection={"max_stale": 30.0},
        tiers=[{"kind": "memory"}, {"kind": "redis", "url": redis_url, "timeout": "1s"}],
        source=source,
    )
    plan = [key for _, key in tweet_requests(int(WORKLOAD.rate * seconds), index, WORKLOAD)]
    errors = 0
    # Warm before the throttle starts, as a running service would be.
    cache.get_many(sorted(set(plan)))
    assert isinstance(cache.source, DynamoDBSource)
    injector = ThrottleInjector(rate=rate, rng=random.Random(index)).register(cache.source.client)
    warm = cache.stats()
    late = 0
    started = time.monotonic()
    for number, key in enumerate(plan):
        pause = started + number / WORKLOAD.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        elif pause < -LATE:
            late += 1
        try:
            cache.get(key)
        except Exception:
            errors += 1
    read_loop = time.monotonic() - started
    cache.wait_background(10)
    stats = cache.stats()
    cache.close()
    return {
        "reads": len(plan),
        "errors": errors,
        "attempts": injector.attempts,
        "throttled": injector.throttled,
        "read_loop": read_loop,
        "late": late,
        **{name: int(stats[name]) - int(warm[name]) for name in COUNTED},
    }


def dynamodb_throttled(redis_url: str, seconds: float, rate: float) -> dict[str, float]:
    """Four processes read the tweet workload from a table whose reads are throttled."""
    from tiered_cache_dynamodb.tables import create_table
    from tiered_cache_dynamodb.testing import MotoDynamoDB

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    totals: dict[str, float] = {}
    with MotoDynamoDB() as moto:
        client = moto.client()
        table = f"faults-{uuid.uuid4().hex[:8]}"
        create_table(client, table, "tweet_id")
        total = WORKLOAD.initial_tweets + int(WORKLOAD.tweets_per_second * seconds * 4) + 50
        for tweet_id in range(total):
            client.put_item(
                TableName=table,
                Item={"tweet_id": {"S": str(tweet_id)}, "text": {"S": f"tweet {tweet_id}"}},
            )
        source = {
            "kind": "dynamodb",
            "table": table,
            "key": "tweet_id",
            "key_template": "tweet:{tweet_id}",
            **moto.settings_kwargs(),
        }
        context = get_context("spawn")
        with context.Pool(4) as pool:
            results = pool.starmap(
                throttled_worker, [(i, redis_url, source, seconds, rate) for i in range(4)]
            )
        for result in results:
            for name, value in result.items():
                totals[name] = totals.get(name, 0) + value
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=40, help="history schedules (part 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--outage", type=float, default=4.0, help="Redis stopped, s (part 2)")
    parser.add_argument("--throttle-seconds", type=float, default=8.0, help="part 3 length, s")
    parser.add_argument("--throttle-rate", type=float, default=0.5, help="reads throttled")
    parser.add_argument(
        "--quick", action="store_true", help="8 schedules, a 2 s outage, 3 s of throttling"
    )
    parser.add_argument(
        "--parts", choices=("all", "3"), default="all", help="3: part 3 alone, on its own Redis"
    )
    args = parser.parse_args()
    if args.quick:
        args.schedules, args.outage, args.throttle_seconds = 8, 2.0, 3.0
    print(run_line())
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    started = time.monotonic()
    shape = ScheduleShape(workers=4, fault_rate=1.0)
    config = replace(RunConfig(), workers=4, shape=shape)
    history: dict[str, Any] | None = None
    outage: dict[str, Any] | None = None
    if args.parts == "all":
        with HistoryRig(config) as rig:
            history = history_under_faults(rig, args.schedules, args.seed)
            outage = redis_outage(rig, args.outage, args.seed)
            throttled = dynamodb_throttled(rig.redis.url, args.throttle_seconds, args.throttle_rate)
    else:
        with RedisServer() as server:
            throttled = dynamodb_throttled(server.url, args.throttle_seconds, args.throttle_rate)
    elapsed = time.monotonic() - started

    errors = int(throttled["errors"])
    if history is not None and outage is not None:
        print_history_and_outage(args, config, history, outage)
        errors += history["errors"] + outage["errors"]
    print(
        f"part 3, DynamoDB reads throttled at {args.throttle_rate:.0%} "
        f"for {args.throttle_seconds:g} s (4 processes)"
    )
    print(
        f"  reads {throttled['reads']:.0f}, caller errors {throttled['errors']:.0f}, "
        f"DynamoDB requests {throttled['attempts']:.0f}, throttled {throttled['throttled']:.0f}"
    )
    counted = ", ".join(f"{name} {throttled[name]:.0f}" for name in COUNTED)
    print(f"  after the warm-up: {counted}")
    print(
        f"  read loops {throttled['read_loop']:.1f} s in all (on time: "
        f"{4 * args.throttle_seconds:g} s), reads begun over {LATE * 1000:g} ms late "
        f"{throttled['late']:.0f}"
    )
    print()
    print(_verdict("caller errors", errors, 0))
    if history is not None and outage is not None:
        print(
            _verdict("reads older than the documented bound", history["kinds"].get("stale", 0), 0)
        )
        limit = setting_value()
        worst = max(outage["per_key"])
        name = f"source loads per key per process during the {args.outage:g} s Redis outage"
        if limit is None:
            print(
                f"{name}: {worst:.2f} (target <= 1 per key per {SETTING}): NOT met / setting absent"
            )
        else:
            print(
                _verdict(f"{name} ({SETTING} = {limit:g} s)", worst, max(1.0, args.outage / limit))
            )
    print(f"wall time {elapsed:.0f} s")
    return 0


def print_history_and_outage(
    args: argparse.Namespace, config: RunConfig, history: dict[str, Any], outage: dict[str, Any]
) -> None:
    """What parts 1 and 2 saw."""
    summary: Summary = history["summary"]
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(history["faults"].items()))
    print("part 1, history under faults (4 processes, one fault per schedule)")
    print(
        f"  schedules {summary.schedules} ({faults}), reads checked {summary.reads}, "
        f"checked at the fault bound {summary.widened_reads}"
    )
    print(f"  bounds: bus delay {config.bus_delay} s, near a fault {config.fault_bound:g} s")
    print(
        f"  caller errors {history['errors']}, violations {summary.violations} "
        f"({dict(history['kinds']) or 'none'})"
    )
    print(f"part 2, tweet workload while Redis is stopped {args.outage:g} s (4 processes)")
    print(
        f"  reads {outage['reads']}, keys per process {outage['keys']}, "
        f"hottest key read {outage['hottest']} times in one process"
    )
    print(f"  caller errors {outage['errors']}, values the source never held {outage['wrong']}")
    per_key = ", ".join(f"{value:.2f}" for value in outage["per_key"])
    print(f"  source loads per key read during the outage, per process: {per_key} (mean)")


def _verdict(name: str, value: float, target: float) -> str:
    verdict = "met" if value <= target else "NOT met"
    return f"{name}: {value:g} (target <= {target:g}): {verdict}"


if __name__ == "__main__":
    sys.exit(main())
