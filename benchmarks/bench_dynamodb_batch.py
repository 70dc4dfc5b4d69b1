"""How many BatchGetItem calls a load of 250 missing keys makes (must be 3), against moto.

The peer measured in the same run is the naive loop: one GetItem per key. The two alternate
for ``--rounds`` rounds; the script prints request counts (every round's), the seconds of each
(min / median) and the time ratio of the two; it exits non-zero if a round's batch count is
not 3.

    .venv/bin/python benchmarks/bench_dynamodb_batch.py [--keys 250] [--present 0] [--rounds 5]

To measure the chain instead of the bare source, pass its ``get_many`` to
:func:`count_requests` (the source's client is where the requests are counted).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from tiered_cache_dynamodb import DynamoDBSource, create_table
from tiered_cache_dynamodb.testing import MotoDynamoDB
from timing import Spread, run_line


def count_requests(
    client: Any, load: Callable[[Sequence[str]], Any], keys: Sequence[str]
) -> tuple[Counter[str], float, Any]:
    """Run ``load(keys)``; the API calls ``client`` made per operation, the seconds, the result."""
    calls: Counter[str] = Counter()

    def on_call(**kwargs: Any) -> None:
        calls[str(kwargs["event_name"]).rpartition(".")[2]] += 1

    client.meta.events.register("before-call.dynamodb", on_call)
    try:
        started = time.perf_counter()
        result = load(keys)
        elapsed = time.perf_counter() - started
    finally:
        client.meta.events.unregister("before-call.dynamodb", on_call)
    return calls, elapsed, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=250, help="keys to load (default 250)")
    parser.add_argument("--present", type=int, default=0, help="how many of them exist")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    print(run_line())

    with MotoDynamoDB() as moto:
        admin = moto.client()
        create_table(admin, "bench-tweet", "tweet_id")
        source = DynamoDBSource.from_settings(
            moto.settings(table="bench-tweet", key="tweet_id", key_template="tweet:{tweet_id}")
        )
        keys = [f"tweet:{i}" for i in range(args.keys)]
        for key in keys[: args.present]:
            source.store(key, {"tweet_id": key.removeprefix("tweet:"), "text": "hello"})
        source.load("tweet:warm-up")  # the one-off DescribeTable, and a warm connection

        contenders: dict[str, Callable[[Sequence[str]], Any]] = {
            "batch": source.load_many,
            "loop": lambda ks: [source.load(k) for k in ks],
        }
        calls: dict[str, list[Counter[str]]] = {name: [] for name in contenders}
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        found: list[int] = []
        for index in range(args.rounds):
            for name in list(contenders)[:: 1 if index % 2 == 0 else -1]:
                counted, elapsed, result = count_requests(source.client, contenders[name], keys)
                calls[name].append(counted)
                seconds[name].append(elapsed)
                if name == "batch":
                    found.append(len(result))
        source.close()
        admin.close()

    expected = math.ceil(args.keys / 100)
    batch_counts = sorted({c["BatchGetItem"] for c in calls["batch"]})
    loop_counts = sorted({c["GetItem"] for c in calls["loop"]})
    batch, loop = Spread.of(seconds["batch"]), Spread.of(seconds["loop"])
    print(
        f"load_many of {args.keys} keys ({args.present} present) against moto, {args.rounds} rounds"
    )
    print(f"  BatchGetItem calls:      {batch_counts} (expected {expected}, every round)")
    print(f"  items returned:          {sorted(set(found))}")
    print(f"  peer, GetItem per key:   {loop_counts} calls")
    print(
        f"  seconds, min / median:   batch {batch.low:.3f} / {batch.middle:.3f}, "
        f"loop {loop.low:.3f} / {loop.middle:.3f}"
    )
    print(
        f"  time ratio loop / batch: {loop.low / batch.low:.1f}x (min), "
        f"{loop.middle / batch.middle:.1f}x (median)"
    )
    if batch_counts != [expected] or set(found) != {args.present}:
        print("FAIL: unexpected number of BatchGetItem calls or items", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
