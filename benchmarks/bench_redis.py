"""The cost of an L2 (Redis) hit through the Redis tier, against raw redis-py in the same run.

Prints a table of contenders and their ratio to the raw baseline (target: an L2 hit once through
the chain <= 1.35x the raw ``GET`` + ``json.loads``):

- ``get``: ``RedisTier.get`` (header + codec decode) vs redis-py ``GET`` + ``json.loads`` of the
  same tweet stored as plain JSON;
- ``get_many(100)``: ``RedisTier.get_many`` of 100 keys vs one raw ``MGET`` + ``json.loads`` each.

It starts its own private ``redis-server`` (never the machine's 6379). Each contender is a
function in ``CONTENDERS``; the chain's measurement is one more entry there (see ``chain_get``).
The figure per contender is the best of several repeats (the least disturbed by other work).

Run: ``.venv/bin/python benchmarks/bench_redis.py [--codec json|msgpack]``
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import redis
from tiered_cache_redis import RedisTier, make_client

from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import Entry

KEYS = [f"tweet:{i}" for i in range(1000)]
BATCH = 100
NUMBER = 2
REPEAT = 15


def tweet(i: int) -> dict[str, object]:
    """A tweet as a repository returns it: strings and ints (plain JSON can hold it exactly)."""
    return {
        "tweet_id": str(i),
        "author_id": str(1000 + i % 97),
        "text": "Just setting up my twttr " * 4,
        "likes": i * 7,
        "retweets": i % 13,
        "lang": "en",
        "created_at": "2024-05-01T12:00:00Z",
        "tags": ["cache", "redis", "dynamodb"],
    }


@dataclass
class Bench:
    """What every contender reads through: the raw client and the tier, same server and data."""

    raw: redis.Redis
    tier: RedisTier
    raw_prefix: str


def raw_get(bench: Bench) -> Callable[[], object]:
    get, loads, prefix = bench.raw.get, json.loads, bench.raw_prefix

    def run() -> None:
        for key in KEYS:
            loads(get(prefix + key))  # type: ignore[arg-type]

    return run


def tier_get(bench: Bench) -> Callable[[], object]:
    get = bench.tier.get

    def run() -> None:
        for key in KEYS:
            get(key)

    return run


def raw_mget(bench: Bench) -> Callable[[], object]:
    mget, loads, prefix = bench.raw.mget, json.loads, bench.raw_prefix
    batches = [[prefix + k for k in KEYS[i : i + BATCH]] for i in range(0, len(KEYS), BATCH)]

    def run() -> None:
        for names in batches:
            [loads(v) for v in mget(names)]  # type: ignore[arg-type]

    return run


def tier_get_many(bench: Bench) -> Callable[[], object]:
    get_many = bench.tier.get_many
    batches = [KEYS[i : i + BATCH] for i in range(0, len(KEYS), BATCH)]

    def run() -> None:
        for keys in batches:
            get_many(keys)

    return run


# (row label, baseline factory, contender factory, reads per pass). The chain's L2 hit goes here
# as ("get via chain", raw_get, chain_get, len(KEYS)) once a chain with an empty L1 is available.
CONTENDERS: list[
    tuple[str, Callable[[Bench], Callable[[], object]], Callable[[Bench], Callable[[], object]]]
] = [
    ("get", raw_get, tier_get),
    (f"get_many({BATCH})", raw_mget, tier_get_many),
]


def per_key_us(baseline: Callable[[], object], contender: Callable[[], object]) -> list[float]:
    """Microseconds per key read of each: best of REPEAT interleaved runs of NUMBER passes.

    Interleaving makes both sides see the same background load on a shared machine.
    """
    best = [float("inf"), float("inf")]
    for _ in range(REPEAT):
        for side, run in enumerate((baseline, contender)):
            best[side] = min(best[side], timeit.timeit(run, number=NUMBER))
    return [seconds / (NUMBER * len(KEYS)) * 1e6 for seconds in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="json", choices=["json", "msgpack", "pickle"])
    args = parser.parse_args()

    with RedisServer() as server:
        raw = redis.Redis.from_url(server.url)
        tier = RedisTier(make_client(server.url, timeout=1.0), namespace="bench", codec=args.codec)
        now = time.time()
        tier.set_many({key: Entry(tweet(i), now, now + 3600) for i, key in enumerate(KEYS)})
        raw.mset({f"raw:{key}": json.dumps(tweet(i)) for i, key in enumerate(KEYS)})
        bench = Bench(raw=raw, tier=tier, raw_prefix="raw:")
        # The tier returns what was stored, exactly.
        first = tier.get(KEYS[1])
        assert first and first.value == tweet(1) and not isinstance(first.value, Decimal)

        print(f"redis-server {server.url}, codec {args.codec}, {len(KEYS)} keys")
        print(f"{'operation':<16}{'raw us/key':>12}{'tier us/key':>13}{'ratio':>8}")
        for label, baseline, contender in CONTENDERS:
            base_us, tier_us = per_key_us(baseline(bench), contender(bench))
            print(f"{label:<16}{base_us:>12.2f}{tier_us:>13.2f}{tier_us / base_us:>8.2f}")
        tier.close()
        raw.close()


if __name__ == "__main__":
    main()
