"""Load generator: the tweet workload against the repository, and against classic cache-aside.

    python -m examples.tweets.loadgen [--duration 30] [--rate 1000] [--threads 8]
                                      [--baseline classic] [--json] [--plot FILE]

The reads come from :func:`tiered_cache.workloads.tweet_requests` (Zipf popularity decaying with
age, viral spikes). Every tweet the workload will read is written to the table first, so a miss
in every tier is a real ``GetItem``. Readers are threads paced to the workload's timestamps
(``--rate`` reads a second) as long as they keep up; latency is each read's own duration.

``--baseline classic`` then runs the same requests through the classic pattern: ``GET`` from
Redis; on a miss ``GetItem`` and ``SET ... EX`` (``SETEX``) for an hour, with its own DynamoDB
client (and, on the embedded DynamoDB, its own throttling emulation), and prints the two side by
side.

Redis round trips are the requests each pattern's redis-py client sent (a command, a pipeline
or a script call is one), counted where the client takes a connection from its pool. Redis
commands are what the server processed (``INFO stats``), commands run inside scripts included.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from tiered_cache import SourceThrottled
from tiered_cache.workloads import TweetWorkload, tweet_requests

from .embedded import HASH_KEY, Environment, environment
from .repository import Item, TweetRepository
from .round_trips import RoundTrips

if TYPE_CHECKING:
    import redis
    from mypy_boto3_dynamodb import DynamoDBClient
    from tiered_cache_dynamodb.testing import ThrottleInjector

THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
#: Tweet ids are uuids derived from the workload's tweet numbers, so reruns read the same items.
ID_NAMESPACE = uuid.UUID("6f1c3e2a-8d4b-4c1e-9a57-2b0f0c7d9e11")
#: Seconds between two samples of the counters (one point of the hit-share plot).
SAMPLE_EVERY = 0.5
DEFAULT_PLOT = Path("build") / "tweets-loadgen.png"
CLASSIC = "classic cache-aside"
TIERED = "tiered-cache"


@dataclass(frozen=True)
class LoadOptions:
    """What to run: see the command-line help."""

    duration: float = 30.0
    rate: float = 1000.0
    threads: int = 8
    seed: int = 1
    initial_tweets: int = 10_000
    tweets_per_second: float = 5.0
    viral_every: float = 10.0
    baseline: str | None = None
    plot: Path | None = DEFAULT_PLOT
    progress: bool = True


# -- the plan -------------------------------------------------------------------------------


def tweet_id_of(workload_key: str) -> str:
    """The tweet id a workload key (``tweet:123``) stands for."""
    return str(uuid.uuid5(ID_NAMESPACE, workload_key))


def plan_requests(options: LoadOptions) -> list[tuple[float, str]]:
    """``(offset in seconds, tweet id)`` for every read the run may make."""
    workload = TweetWorkload(
        rate=options.rate,
        tweets_per_second=options.tweets_per_second,
        initial_tweets=options.initial_tweets,
        max_live=options.initial_tweets + 10_000,
        viral_every=options.viral_every,
        viral_half_life=max(options.viral_every, 5.0),
    )
    count = max(1, math.ceil(options.duration * options.rate))
    ids: dict[str, str] = {}
    plan = []
    for offset, key in tweet_requests(count, options.seed, workload):
        tweet_id = ids.get(key)
        if tweet_id is None:
            tweet_id = ids[key] = tweet_id_of(key)
        plan.append((offset, tweet_id))
    return plan


def seed_table(client: DynamoDBClient, table: str, tweet_ids: Sequence[str]) -> None:
    """Write one tweet per id with BatchWriteItem (25 items a request)."""
    created = "2026-01-01T00:00:00.000+00:00"
    for start in range(0, len(tweet_ids), 25):
        requests: list[Any] = [
            {
                "PutRequest": {
                    "Item": {
                        HASH_KEY: {"S": tweet_id},
                        "text": {"S": f"Tweet {tweet_id[:8]} of the load generator."},
                        "created": {"S": created},
                    }
                }
            }
            for tweet_id in tweet_ids[start : start + 25]
        ]
        pending: dict[str, Any] = {table: requests}
        for attempt in itertools.count():
            response = client.batch_write_item(RequestItems=pending)
            pending = dict(response.get("UnprocessedItems") or {})
            if not pending:
                break
            time.sleep(min(1.0, 0.05 * 2**attempt))


# -- the two patterns -----------------------------------------------------------------------


class Pattern(Protocol):
    """A way to read a tweet, and cumulative counts of where reads were served from."""

    name: str
    round_trips: RoundTrips

    def read(self, tweet_id: str) -> Item | None: ...

    def served(self) -> dict[str, int]:
        """Cumulative reads served per place, in order (fastest first; 'dynamodb' last)."""
        ...


class TieredPattern:
    """Reads through :class:`TweetRepository` and its chain."""

    name = TIERED

    def __init__(self, repository: TweetRepository, round_trips: RoundTrips | None = None) -> None:
        """``round_trips``: a counter attached to the chain before its first read (the
        environment's); without one, a counter attached now, which does not see connections
        the chain took before (:mod:`.round_trips`)."""
        self.repository = repository
        self.read = repository.get
        if round_trips is None:
            round_trips = RoundTrips()
            round_trips.attach_chain(repository.cache)
        self.round_trips = round_trips

    def served(self) -> dict[str, int]:
        stats = self.repository.cache.stats()
        served = {tier["name"]: int(tier["hits"]) for tier in stats["tiers"]}
        # A read that waited for another caller's load shared that one GetItem.
        served["dynamodb"] = int(stats["keys_loaded"]) + int(stats["singleflight_waits"])
        return served

    def stats(self) -> dict[str, Any]:
        return self.repository.cache.stats()


class ClassicPattern:
    """Cache-aside as it is usually written: GET; on a miss GetItem, then SETEX for an hour."""

    name = CLASSIC

    def __init__(
        self,
        redis_client: redis.Redis,
        client: DynamoDBClient,
        table: str,
        *,
        prefix: str = "classic:tweet:",
        ttl: int = 3600,
    ) -> None:
        self._redis = redis_client
        self._client = client
        self._table = table
        self._prefix = prefix
        self._ttl = ttl
        self._lock = threading.Lock()
        self._hits = 0
        self._loads = 0
        self.round_trips = RoundTrips()
        self.round_trips.attach(redis_client)

    def read(self, tweet_id: str) -> Item | None:
        key = self._prefix + tweet_id
        raw = self._redis.get(key)
        if raw is not None:
            with self._lock:
                self._hits += 1
            value: Item | None = json.loads(raw)
            return value
        response = self._client.get_item(TableName=self._table, Key={HASH_KEY: {"S": tweet_id}})
        with self._lock:
            self._loads += 1
        item = response.get("Item")
        value = dict(item) if item is not None else None
        if value is not None:
            # SET ... EX is SETEX (one round trip); redis-py 8 deprecates its setex().
            self._redis.set(key, json.dumps(value), ex=self._ttl)
        return value

    def served(self) -> dict[str, int]:
        with self._lock:
            return {"redis": self._hits, "dynamodb": self._loads}


# -- running --------------------------------------------------------------------------------


class RedisCommands:
    """Commands a Redis server processed, less the ``INFO`` calls made to read the count."""

    def __init__(self, url: str | None) -> None:
        self._client: redis.Redis | None = None
        self._calls = 0
        if url is not None:
            import redis as redis_module

            self._client = redis_module.Redis.from_url(url, socket_timeout=1.0)

    def total(self) -> int | None:
        if self._client is None:
            return None
        self._calls += 1
        info = self._client.info("stats")
        return int(info["total_commands_processed"]) - self._calls

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@dataclass
class RunResult:
    """What one pattern did over one run."""

    name: str
    elapsed: float
    latencies_ns: list[int]
    errors: Counter[str]
    #: ``(seconds since start, cumulative served counts)``, every SAMPLE_EVERY seconds.
    timeline: list[tuple[float, dict[str, int]]]
    redis_commands: int | None
    redis_round_trips: int
    dynamodb_attempts: int | None
    throttled: int | None
    extra: dict[str, Any] = field(default_factory=dict)


class _Progress:
    """tqdm when it is installed, else one rewritten stderr line."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self._bar: Any = None
        self._label = label
        self._total = total
        self._enabled = enabled
        if enabled:
            try:
                # Through importlib: tqdm ships no type hints, and this keeps it optional.
                tqdm: Any = importlib.import_module("tqdm")
            except ImportError:
                pass
            else:
                self._bar = tqdm.tqdm(total=total, desc=label, unit="reads", file=sys.stderr)

    def update(self, done: int) -> None:
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        else:
            sys.stderr.write(f"\r{self._label}: {done}/{self._total} reads")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            # A run ends at its deadline, not at the planned count: end the bar at 100 %.
            self._bar.total = self._bar.n
            self._bar.refresh()
            self._bar.close()
        elif self._enabled:
            sys.stderr.write("\n")


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, SourceThrottled):
        return "throttled"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        return "throttled" if code in THROTTLING_CODES else code or "ClientError"
    return type(exc).__name__


class _Readers:
    """Threads reading ``plan`` through ``read``, paced to the plan's offsets until ``deadline``."""

    def __init__(
        self,
        read: Callable[[str], object],
        plan: Sequence[tuple[float, str]],
        threads: int,
        duration: float,
    ) -> None:
        self._read = read
        self._plan = plan
        self._next = itertools.count()
        self._done = itertools.count()  # next() on a count is atomic under the GIL
        self.finished = 0
        self.latencies: list[list[int]] = []
        self.errors: Counter[str] = Counter()
        self._errors_lock = threading.Lock()
        self.stop = threading.Event()
        self.start = time.perf_counter()
        self.deadline = self.start + duration
        self._threads = [
            threading.Thread(target=self._loop, name=f"loadgen-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _loop(self) -> None:
        latencies: list[int] = []
        self.latencies.append(latencies)
        read, plan, clock, now_ns = self._read, self._plan, time.perf_counter, time.perf_counter_ns
        while not self.stop.is_set():
            index = next(self._next)
            if index >= len(plan):
                return
            offset, tweet_id = plan[index]
            wait = self.start + offset - clock()
            if wait > 0:
                time.sleep(wait)
            if clock() >= self.deadline:
                return
            began = now_ns()
            try:
                read(tweet_id)
            except Exception as exc:
                with self._errors_lock:
                    self.errors[_error_kind(exc)] += 1
            latencies.append(now_ns() - began)
            self.finished = next(self._done) + 1


def run_pattern(
    pattern: Pattern,
    plan: Sequence[tuple[float, str]],
    options: LoadOptions,
    *,
    redis_url: str | None,
    throttle: ThrottleInjector | None = None,
) -> RunResult:
    """Read ``plan`` through ``pattern`` with ``options.threads`` paced threads."""
    if throttle is not None:
        throttle.reset_counts()
    commands = RedisCommands(redis_url)
    commands_before = commands.total()
    trips_before = pattern.round_trips.count
    expected = min(len(plan), int(options.duration * options.rate))
    progress = _Progress(pattern.name, expected, options.progress)
    timeline = [(0.0, pattern.served())]
    readers = _Readers(pattern.read, plan, options.threads, options.duration)
    try:
        while readers.alive():
            time.sleep(SAMPLE_EVERY)
            timeline.append((time.perf_counter() - readers.start, pattern.served()))
            progress.update(readers.finished)
            if time.perf_counter() > readers.deadline + 30:
                break  # a reader stuck in retries must not hang the demo
    finally:
        readers.join()
        progress.update(readers.finished)
        progress.close()
    elapsed = time.perf_counter() - readers.start
    timeline.append((elapsed, pattern.served()))
    commands_after = commands.total()
    commands.close()
    return RunResult(
        name=pattern.name,
        elapsed=elapsed,
        latencies_ns=[value for latencies in readers.latencies for value in latencies],
        errors=readers.errors,
        timeline=timeline,
        redis_commands=(
            None
            if commands_before is None or commands_after is None
            else commands_after - commands_before
        ),
        redis_round_trips=pattern.round_trips.count - trips_before,
        dynamodb_attempts=None if throttle is None else throttle.attempts,
        throttled=None if throttle is None else throttle.throttled,
    )


# -- reporting ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return float(sorted_values[rank])


def summarize(result: RunResult) -> dict[str, Any]:
    """The ``--json`` summary of one run."""
    reads = len(result.latencies_ns)
    ordered = sorted(result.latencies_ns)
    first, last = result.timeline[0][1], result.timeline[-1][1]
    served = {name: last[name] - first.get(name, 0) for name in last}
    served_by_source = served.pop("dynamodb", 0)
    # Requests DynamoDB answered, when the emulation counts them: a read that waited for another
    # caller's GetItem (single-flight) was served by the source but cost it nothing.
    dynamodb_reads = (
        served_by_source
        if result.dynamodb_attempts is None or result.throttled is None
        else result.dynamodb_attempts - result.throttled
    )
    per_1000 = 1000.0 / reads if reads else 0.0
    memory = served.get("memory", 0)
    return {
        "pattern": result.name,
        "reads": reads,
        "seconds": round(result.elapsed, 2),
        "reads_per_second": round(reads / result.elapsed, 1) if result.elapsed else 0.0,
        "hits": served,
        "served_by_source": served_by_source,
        "source_reads": dynamodb_reads,
        "dynamodb_requests": result.dynamodb_attempts,
        "throttled_requests": result.throttled,
        "caller_errors": sum(result.errors.values()),
        "errors": dict(result.errors),
        "redis_round_trips": result.redis_round_trips,
        "redis_commands": result.redis_commands,
        "latency_ms": {
            "p50": round(percentile(ordered, 0.50) / 1e6, 4),
            "p99": round(percentile(ordered, 0.99) / 1e6, 4),
            "max": round(ordered[-1] / 1e6, 3) if ordered else 0.0,
        },
        "per_1000_reads": {
            "served_from_memory": round(memory * per_1000, 1),
            "redis_round_trips": round(result.redis_round_trips * per_1000, 1),
            "redis_commands": (
                None
                if result.redis_commands is None
                else round(result.redis_commands * per_1000, 1)
            ),
            "dynamodb_reads": round(dynamodb_reads * per_1000, 1),
            "throttled_requests": (
                None if result.throttled is None else round(result.throttled * per_1000, 1)
            ),
        },
        "memory_share": round(memory / reads, 4) if reads else 0.0,
    }


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The summaries side by side, one column per pattern."""

    def cell(value: Any, unit: str = "") -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:,.3f}{unit}" if value < 10 else f"{value:,.1f}{unit}"
        return f"{value:,}{unit}"

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("reads", lambda s: cell(s["reads"])),
        ("reads per second", lambda s: cell(s["reads_per_second"])),
        ("served from process memory", lambda s: f"{s['memory_share']:.1%}"),
        ("hits per tier", lambda s: ", ".join(f"{k} {v:,}" for k, v in s["hits"].items())),
        ("DynamoDB reads (source reads)", lambda s: cell(s["source_reads"])),
        ("throttled DynamoDB requests", lambda s: cell(s["throttled_requests"])),
        ("caller errors", lambda s: cell(s["caller_errors"])),
        ("per 1,000 reads: memory hits", lambda s: cell(s["per_1000_reads"]["served_from_memory"])),
        (
            "per 1,000 reads: Redis round trips",
            lambda s: cell(s["per_1000_reads"]["redis_round_trips"]),
        ),
        (
            "per 1,000 reads: Redis commands",
            lambda s: cell(s["per_1000_reads"]["redis_commands"]),
        ),
        ("per 1,000 reads: DynamoDB reads", lambda s: cell(s["per_1000_reads"]["dynamodb_reads"])),
        ("latency p50", lambda s: cell(s["latency_ms"]["p50"], " ms")),
        ("latency p99", lambda s: cell(s["latency_ms"]["p99"], " ms")),
    ]
    header = ["", *(s["pattern"] for s in summaries)]
    body = [[label, *(render(s) for s in summaries)] for label, render in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(widths[i]) for i, text in enumerate(header))]
    lines.append("  ".join("-" * width for width in widths))
    for row in body:
        lines.append(
            "  ".join(
                text.ljust(widths[i]) if i == 0 else text.rjust(widths[i])
                for i, text in enumerate(row)
            )
        )
    return "\n".join(lines)


def plot(results: Sequence[RunResult], path: Path) -> Path:
    """Per-tier hit share over time for each run, and the latency distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = {"memory": "#2a9d8f", "redis": "#e76f51", "dynamodb": "#264653"}
    labels = {"memory": "process memory", "redis": "Redis", "dynamodb": "DynamoDB"}
    figure, axes = plt.subplots(
        len(results) + 1, 1, figsize=(10, 3.2 * (len(results) + 1)), constrained_layout=True
    )
    for axis, result in zip(axes, results, strict=False):
        times = [t for t, _ in result.timeline[1:]]
        names = list(result.timeline[-1][1])
        deltas: dict[str, list[float]] = {name: [] for name in names}
        for (_, before), (_, after) in itertools.pairwise(result.timeline):
            interval = {name: after[name] - before.get(name, 0) for name in names}
            total = sum(interval.values()) or 1
            for name in names:
                deltas[name].append(100.0 * interval[name] / total)
        axis.stackplot(
            times,
            *(deltas[name] for name in names),
            labels=[labels.get(name, name) for name in names],
            colors=[colors.get(name, "#999999") for name in names],
            alpha=0.9,
        )
        axis.set_xlim(0, max(times) if times else 1)
        axis.set_ylim(0, 100)
        axis.set_ylabel("share of reads (%)")
        axis.set_xlabel("seconds into the run")
        axis.set_title(f"{result.name}: where each read was served")
        axis.legend(loc="lower right", framealpha=0.9)
    axis = axes[-1]
    all_ns = [v for r in results for v in r.latencies_ns if v > 0]
    if all_ns:
        bins = np.logspace(math.log10(min(all_ns) / 1e3), math.log10(max(all_ns) / 1e3), 80)
        styles = ["#2a9d8f", "#e76f51", "#264653"]
        for style, result in zip(styles, results, strict=False):
            micros = np.array(result.latencies_ns, dtype=float) / 1e3
            ordered = sorted(result.latencies_ns)
            p50, p99 = percentile(ordered, 0.5) / 1e3, percentile(ordered, 0.99) / 1e3
            axis.hist(
                micros,
                bins=bins,
                histtype="step",
                linewidth=1.8,
                color=style,
                label=f"{result.name} (p50 {p50:,.0f} µs, p99 {p99:,.0f} µs)",
            )
            axis.axvline(p50, color=style, linestyle="--", linewidth=1)
            axis.axvline(p99, color=style, linestyle=":", linewidth=1)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("read latency (µs, log scale); dashed: p50, dotted: p99")
        axis.set_ylabel("reads")
        axis.set_title("latency distribution")
        axis.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# -- the whole thing ------------------------------------------------------------------------


def run_load(env: Environment, options: LoadOptions) -> dict[str, Any]:
    """Seed the table, run the tiered chain (and the baseline), plot; return the report."""
    log: Callable[[str], None] = (
        (lambda line: print(line, file=sys.stderr)) if options.progress else (lambda line: None)
    )
    plan = plan_requests(options)
    ids = list(dict.fromkeys(tweet_id for _, tweet_id in plan))
    log(f"seeding {len(ids):,} tweets into {env.table!r} for {len(plan):,} planned reads ...")
    seed_table(env.client, env.table, ids)
    repository = TweetRepository(env.cache, env.client, table=env.table)
    results = [
        run_pattern(
            TieredPattern(repository, env.round_trips),
            plan,
            options,
            redis_url=env.redis_url,
            throttle=env.throttle,
        )
    ]
    skipped = None
    if options.baseline == "classic":
        if env.redis_url is None:
            skipped = "the classic baseline needs Redis, and this run has none"
            log(skipped)
        else:
            import redis as redis_module

            client, throttle = env.new_client()
            redis_client = redis_module.Redis.from_url(
                env.redis_url, max_connections=options.threads * 2
            )
            try:
                pattern = ClassicPattern(redis_client, client, env.table)
                results.append(
                    run_pattern(pattern, plan, options, redis_url=env.redis_url, throttle=throttle)
                )
            finally:
                redis_client.close()
                client.close()
    summaries = [summarize(result) for result in results]
    report: dict[str, Any] = {
        "options": {
            "duration": options.duration,
            "rate": options.rate,
            "threads": options.threads,
            "seed": options.seed,
            "tweets_seeded": len(ids),
            "emulated_reads_per_item_per_second": env.emulated_read_rate,
        },
        "results": summaries,
    }
    if skipped:
        report["baseline_skipped"] = skipped
    if options.plot is not None:
        report["plot"] = str(plot(results, options.plot))
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.tweets.loadgen",
        description="Drive the tweet workload against the repository and report per tier.",
    )
    parser.add_argument("--config", help="TOML file with a [tiered_cache] table")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per pattern")
    parser.add_argument("--rate", type=float, default=1000.0, help="target reads per second")
    parser.add_argument("--threads", type=int, default=8, help="concurrent readers")
    parser.add_argument("--seed", type=int, default=1, help="the workload's random seed")
    parser.add_argument("--tweets", type=int, default=10_000, help="tweets at the start")
    parser.add_argument("--viral-every", type=float, default=10.0, help="mean s between virals")
    parser.add_argument("--baseline", choices=["classic"], help="also run this pattern")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG file to write")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> LoadOptions:
    return LoadOptions(
        duration=args.duration,
        rate=args.rate,
        threads=args.threads,
        seed=args.seed,
        initial_tweets=args.tweets,
        viral_every=args.viral_every,
        baseline=args.baseline,
        plot=None if args.no_plot else args.plot,
        progress=not args.no_progress,
    )


def print_report(report: dict[str, Any]) -> None:
    """The report for people: the table, and where the plot is."""
    print(format_table(report["results"]))
    if "baseline_skipped" in report:
        print(f"(baseline skipped: {report['baseline_skipped']})")
    if "plot" in report:
        print(f"plot: {Path(report['plot']).resolve()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_from(args)
    with environment(args.config) as env:
        if not args.json:
            print(env.describe())
        report = run_load(env, options)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
