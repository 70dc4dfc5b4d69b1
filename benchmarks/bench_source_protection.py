"""Classic Redis cache-aside vs tiered-cache in front of a throttled DynamoDB table, viral tweet.

Both runs replay the same tweet workload (tiered_cache.workloads, with viral tweets) from the
same number of threads, each starting with a cold cache, against one moto server whose table is
throttled by ThrottleInjector's per-key token bucket (the provisioned read capacity of a hot
partition). The baseline is the pattern most services start with, written out below: GET from
Redis; on a miss GetItem (botocore's standard retries, real backoff) and SETEX for an hour.

Printed side by side: reads that reached DynamoDB (GetItem + BatchGetItem calls, counted by a
``before-parameter-build`` hook), throttled HTTP requests, errors callers saw, p50/p99 latency,
and the ratio classic / tiered of the DynamoDB reads of the viral tweets (the hot partitions).

    .venv/bin/python benchmarks/bench_source_protection.py [--requests 20000] [--threads 16]
        [--rounds 1]

With ``--rounds N`` the two runs alternate N times (classic first in odd rounds, tiered-cache
first in even ones), each from cold caches, and every figure is printed as the minimum / the
median over the rounds; the targets are judged on every round.

Starts its own moto server and redis-server on free loopback ports; exits 1 if a target is
missed (zero caller errors for tiered-cache; at least 10x fewer reads of the viral tweets).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from boto3.dynamodb.types import TypeDeserializer
from tiered_cache_dynamodb import DynamoDBSourceSettings, create_table, make_client
from tiered_cache_dynamodb.testing import MotoDynamoDB, ThrottleInjector
from timing import run_line

from tiered_cache import TieredCache
from tiered_cache.settings import CacheSettings
from tiered_cache.testing.servers import RedisServer
from tiered_cache.workloads import TweetWorkload, tweet_requests

TABLE = "bench-tweet"
WORKLOAD = TweetWorkload(
    rate=1000.0, initial_tweets=2000, tweets_per_second=20.0, viral_every=6.0, viral_half_life=20.0
)
#: A tweet posted during the run that takes at least this share of all reads is "viral".
VIRAL_SHARE = 0.02


@dataclass
class Result:
    """What one run measured."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    reads_per_key: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    throttled: int = 0

    @property
    def reads(self) -> int:
        return self.calls["GetItem"] + self.calls["BatchGetItem"]

    def viral_reads(self, viral: Sequence[str]) -> int:
        return sum(self.reads_per_key[key] for key in viral)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class ReadCounter:
    """Counts API calls (botocore retries are one call) and the tweet ids each call reads."""

    def __init__(self, client: Any, result: Result) -> None:
        self._result = result
        self._lock = threading.Lock()
        client.meta.events.register("before-parameter-build.dynamodb", self._on_params)

    def _on_params(self, params: dict[str, Any], **kwargs: Any) -> None:
        operation = str(kwargs.get("event_name", "")).rpartition(".")[2]
        if operation == "GetItem":
            ids = [params["Key"]["tweet_id"]["S"]]
        elif operation == "BatchGetItem":
            ids = [k["tweet_id"]["S"] for r in params["RequestItems"].values() for k in r["Keys"]]
        else:
            return
        with self._lock:
            self._result.calls[operation] += 1
            for tweet_id in ids:
                self._result.reads_per_key[f"tweet:{tweet_id}"] += 1


def replay(keys: Sequence[str], threads: int, get: Callable[[str], Any], result: Result) -> None:
    """Every key read once, from ``threads`` threads pulling the next request as they go."""
    counter = itertools.count()
    lock = threading.Lock()

    def worker() -> None:
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        while (index := next(counter)) < len(keys):
            started = time.perf_counter()
            try:
                get(keys[index])
            except Exception as exc:
                errors[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - started)
        with lock:
            result.latencies.extend(latencies)
            result.errors.update(errors)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    result.seconds = time.perf_counter() - started


def run_classic(
    keys: Sequence[str],
    threads: int,
    settings: DynamoDBSourceSettings,
    redis_url: str,
    throttle: Callable[[], ThrottleInjector],
) -> Result:
    """The baseline: Redis GET; on a miss GetItem and SETEX for an hour."""
    result = Result("classic cache-aside")
    client = make_client(settings)  # standard retry mode, 3 attempts: what an app has
    injector = throttle().register(client)
    ReadCounter(client, result)
    deserializer = TypeDeserializer()
    cache = redis.Redis.from_url(redis_url, max_connections=threads + 4)

    def get(key: str) -> Any:
        cached = cache.get(f"classic:{key}")
        if cached is not None:
            return json.loads(cached)
        response = client.get_item(
            TableName=TABLE, Key={"tweet_id": {"S": key.removeprefix("tweet:")}}
        )
        item = response.get("Item")
        value = None if item is None else {k: deserializer.deserialize(v) for k, v in item.items()}
        cache.set(f"classic:{key}", json.dumps(value, default=str), ex=3600)  # SETEX, 1 h
        return value

    try:
        replay(keys, threads, get, result)
    finally:
        cache.close()
        client.close()
    result.attempts, result.throttled = injector.attempts, injector.throttled
    return result


def run_tiered(
    keys: Sequence[str],
    threads: int,
    settings: DynamoDBSourceSettings,
    redis_url: str,
    throttle: Callable[[], ThrottleInjector],
) -> Result:
    """tiered-cache with its defaults: memory + redis + dynamodb, built from settings."""
    result = Result("tiered-cache")
    # One process: no invalidation bus to run (when this version of the settings has one).
    bus: dict[str, Any] = {"bus": {"kind": "off"}} if "bus" in CacheSettings.model_fields else {}
    cache = TieredCache.from_config(
        namespace="tiered",
        tiers=[{"kind": "memory"}, {"kind": "redis", "url": redis_url}],
        source={
            "kind": "dynamodb",
            "table": settings.table,
            "key": settings.key,
            "key_template": settings.key_template,
            "region": settings.region,
            "endpoint_url": settings.endpoint_url,
            "aws_access_key_id": settings.aws_access_key_id,
            "aws_secret_access_key": settings.aws_secret_access_key,
        },
        **bus,
    )
    source: Any = cache.source
    injector = throttle().register(source.client)
    ReadCounter(source.client, result)
    try:
        replay(keys, threads, cache.get, result)
        cache.wait_background(30)
    finally:
        cache.close()
    result.attempts, result.throttled = injector.attempts, injector.throttled
    return result


def populate(moto: MotoDynamoDB, keys: Sequence[str]) -> None:
    admin = moto.client()
    create_table(admin, TABLE, "tweet_id", read_capacity=10, write_capacity=10)
    ids = sorted({key.removeprefix("tweet:") for key in keys}, key=int)
    for start in range(0, len(ids), 25):
        admin.batch_write_item(
            RequestItems={
                TABLE: [
                    {
                        "PutRequest": {
                            "Item": {
                                "tweet_id": {"S": tweet_id},
                                "text": {"S": f"tweet {tweet_id} " + "x" * 200},
                                "likes": {"N": tweet_id},
                            }
                        }
                    }
                    for tweet_id in ids[start : start + 25]
                ]
            }
        )
    admin.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="reads per run")
    parser.add_argument("--threads", type=int, default=16, help="concurrent readers")
    parser.add_argument("--rcu", type=float, default=10.0, help="reads/s per key (hot partition)")
    parser.add_argument("--burst", type=float, default=10.0, help="token bucket depth per key")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="alternating pairs of runs")
    args = parser.parse_args(argv)
    print(run_line())
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    logging.getLogger("tiered_cache").setLevel(logging.ERROR)  # stale-serving warnings

    requests = list(tweet_requests(args.requests, args.seed, WORKLOAD))
    keys = [key for _, key in requests]
    reads = Counter(keys)
    viral = sorted(
        (
            key
            for key, n in reads.items()
            if int(key.removeprefix("tweet:")) >= WORKLOAD.initial_tweets
            and n >= VIRAL_SHARE * len(keys)
        ),
        key=lambda key: -reads[key],
    )

    def throttle() -> ThrottleInjector:
        return ThrottleInjector(per_key_rate=args.rcu, burst=args.burst)

    with MotoDynamoDB() as moto, RedisServer() as server:
        populate(moto, keys)
        settings = moto.settings(table=TABLE, key="tweet_id", key_template="tweet:{tweet_id}")
        flush = redis.Redis.from_url(server.url)
        runs: dict[str, list[Result]] = {"classic": [], "tiered": []}
        contenders = {"classic": run_classic, "tiered": run_tiered}
        for index in range(args.rounds):
            for name in list(contenders)[:: 1 if index % 2 == 0 else -1]:
                flush.flushdb()  # every run starts cold
                runs[name].append(
                    contenders[name](keys, args.threads, settings, server.url, throttle)
                )
        flush.close()

    print("Source protection: classic Redis cache-aside vs tiered-cache, DynamoDB (moto) throttled")
    print(
        f"  workload: {len(keys)} reads of {len(reads)} tweets (seed {args.seed}), "
        f"{args.threads} threads, cold caches; {args.rounds} alternating round(s)"
        + (": min / median" if args.rounds > 1 else "")
    )
    shares = ", ".join(f"{key} {reads[key] / len(keys):.0%}" for key in viral)
    print(f"  viral tweets (posted during the run, >= {VIRAL_SHARE:.0%} of reads): {shares}")
    print(
        f"  throttle: {args.rcu:g} reads/s per key, burst {args.burst:g} "
        "(ThrottleInjector token bucket); botocore standard retries, 3 attempts, real backoff"
    )
    print()
    rows: list[tuple[str, Callable[[Result], float], str]] = [
        ("DynamoDB reads (GetItem+BatchGetItem)", lambda r: r.reads, "{:.0f}"),
        ("  of which viral tweets", lambda r: r.viral_reads(viral), "{:.0f}"),
        ("HTTP attempts (retries included)", lambda r: r.attempts, "{:.0f}"),
        ("throttled requests", lambda r: r.throttled, "{:.0f}"),
        ("errors seen by callers", lambda r: sum(r.errors.values()), "{:.0f}"),
        ("p50 latency (us)", lambda r: r.percentile(0.50) * 1e6, "{:.0f}"),
        ("p99 latency (us)", lambda r: r.percentile(0.99) * 1e6, "{:.0f}"),
        ("mean latency (us)", lambda r: statistics.fmean(r.latencies) * 1e6, "{:.0f}"),
        ("wall time (s)", lambda r: r.seconds, "{:.1f}"),
    ]

    def spread(values: Sequence[float], form: str) -> str:
        if len(values) == 1:
            return form.format(values[0])
        return f"{form.format(min(values))} / {form.format(statistics.median(values))}"

    classic, tiered = runs["classic"], runs["tiered"]
    print(f"  {'':40} {'classic cache-aside':>20} {'tiered-cache':>16}")
    for label, show, form in rows:
        print(
            f"  {label:40} {spread([show(r) for r in classic], form):>20} "
            f"{spread([show(r) for r in tiered], form):>16}"
        )
    viral_ratios = [
        c.viral_reads(viral) / max(1, t.viral_reads(viral))
        for c, t in zip(classic, tiered, strict=True)
    ]
    all_ratios = [c.reads / max(1, t.reads) for c, t in zip(classic, tiered, strict=True)]
    print()
    print(
        f"  DynamoDB reads of the viral tweets, classic / tiered: {spread(viral_ratios, '{:.1f}x')}"
    )
    print(
        f"  DynamoDB reads of all tweets, classic / tiered:       {spread(all_ratios, '{:.2f}x')}"
    )
    for c, t in zip(classic, tiered, strict=True):
        if c.errors or t.errors:
            print(f"  caller errors: classic {dict(c.errors)}, tiered {dict(t.errors)}")
    zero_errors = not any(t.errors for t in tiered)
    fewer_reads = min(viral_ratios) >= 10.0
    print()
    verdict = {True: "MET", False: "MISSED"}
    print(f"  target: zero caller errors with tiered-cache ........ {verdict[zero_errors]}")
    print(f"  target: >= 10x fewer viral-tweet reads than baseline . {verdict[fewer_reads]}")
    return 0 if zero_errors and fewer_reads else 1


if __name__ == "__main__":
    sys.exit(main())
