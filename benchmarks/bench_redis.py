"""The cost of an L2 (Redis) hit through the Redis tier and the chain, against raw redis-py.

Contenders, each reading the same 1,000 tweets from one private ``redis-server`` (never the
machine's 6379), interleaved round by round:

- peers: redis-py ``GET`` + ``json.loads`` of the tweet stored as plain JSON, and ``MGET`` of
  100 keys + ``json.loads`` of each;
- ``tier get`` / ``tier get_many(100)``: :class:`RedisTier` alone (header + type-preserving
  codec);
- ``chain get`` / ``chain get_many(100)``: a 10-entry memory tier (the default policy unless
  ``--admission``) in front of the Redis tier: cycling 1,000 keys makes every read an L1 miss,
  an L2 hit and a copy into L1. The script asserts that no read was a load.

Prints per key the minimum and the median over the rounds, and the ratio to the peer (of the
minima, which the targets judge, and of the medians). Targets (issue #14): chain ``get``
<= 1.1x and chain ``get_many(100)`` <= 1.3x the peer, ``get_many`` of 100 at least 10x
cheaper per key than 100 ``get``.

Run: ``.venv/bin/python benchmarks/bench_redis.py [--codec json|msgpack|pickle]
[--admission hot-keys|always] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import redis
from tiered_cache_redis import RedisTier, make_client
from timing import Spread, interleaved, ratio, run_line

from tiered_cache import TieredCache
from tiered_cache.codecs import JsonCodec
from tiered_cache.memory_plugin import build_memory_tier
from tiered_cache.registry import BuildContext
from tiered_cache.settings import MemoryTierSettings
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import Entry

KEYS = [f"tweet:{i}" for i in range(1000)]
BATCH = 100
BATCHES = [KEYS[i : i + BATCH] for i in range(0, len(KEYS), BATCH)]
#: Passes over the keys per round.
NUMBER = 2


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
    #: memory (10 entries, so cycling 1,000 keys always misses it) -> the same Redis tier.
    chain: TieredCache


def raw_get(bench: Bench) -> Callable[[], object]:
    get, loads, prefix = bench.raw.get, json.loads, bench.raw_prefix

    def run() -> None:
        for key in KEYS:
            loads(get(prefix + key))  # type: ignore[arg-type]

    return run


def raw_mget(bench: Bench) -> Callable[[], object]:
    mget, loads, prefix = bench.raw.mget, json.loads, bench.raw_prefix
    batches = [[prefix + key for key in batch] for batch in BATCHES]

    def run() -> None:
        for names in batches:
            [loads(v) for v in mget(names)]  # type: ignore[arg-type]

    return run


def each_key(get: Callable[[str], object]) -> Callable[[], object]:
    def run() -> None:
        for key in KEYS:
            get(key)

    return run


def each_batch(get_many: Callable[[list[str]], object]) -> Callable[[], object]:
    def run() -> None:
        for keys in BATCHES:
            get_many(keys)

    return run


#: (row label, the peer's contender, ours); the ratio is ours / the peer's.
ROWS = [
    ("tier get", "raw GET + json.loads", "tier get"),
    (f"tier get_many({BATCH})", "raw MGET + json.loads", f"tier get_many({BATCH})"),
    ("chain get", "raw GET + json.loads", "chain get"),
    (f"chain get_many({BATCH})", "raw MGET + json.loads", f"chain get_many({BATCH})"),
    ("chain get_many / get", "chain get", f"chain get_many({BATCH})"),
]
#: Targets from the issue, per row: the ratio of the minima must be at most this.
TARGETS = {"chain get": 1.1, f"chain get_many({BATCH})": 1.3, "chain get_many / get": 0.1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="json", choices=["json", "msgpack", "pickle"])
    parser.add_argument(
        "--admission",
        default="hot-keys",
        choices=["hot-keys", "always"],
        help="admission of the chain's memory tier (every L2 hit is offered to it)",
    )
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="5 rounds (for make bench)")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    print(run_line())

    with RedisServer() as server:
        raw = redis.Redis.from_url(server.url)
        tier = RedisTier(make_client(server.url, timeout=1.0), namespace="bench", codec=args.codec)
        now = time.time()
        tier.set_many({key: Entry(tweet(i), now, now + 3600) for i, key in enumerate(KEYS)})
        raw.mset({f"raw:{key}": json.dumps(tweet(i)) for i, key in enumerate(KEYS)})
        # The memory tier as configured by default (hot-key admission), but small: cycling
        # 1,000 keys through 10 entries makes every chain read an L1 miss and an L2 hit.
        memory = build_memory_tier(
            MemoryTierSettings(max_entries=10, ttl=60, admission=args.admission),
            BuildContext(namespace="bench", clock=time.time, index=0),
        )
        chain = TieredCache([memory, tier], namespace="bench", ttl=3600)
        bench = Bench(raw=raw, tier=tier, raw_prefix="raw:", chain=chain)
        assert chain.get(KEYS[2]) == tweet(2)  # an L2 hit, not a load (no source, no loader)
        # The tier returns what was stored, exactly.
        first = tier.get(KEYS[1])
        assert first and first.value == tweet(1) and not isinstance(first.value, Decimal)

        contenders = {
            "raw GET + json.loads": raw_get(bench),
            "tier get": each_key(tier.get),
            "chain get": each_key(chain.get),
            "raw MGET + json.loads": raw_mget(bench),
            f"tier get_many({BATCH})": each_batch(tier.get_many),
            f"chain get_many({BATCH})": each_batch(chain.get_many),
        }
        spreads = interleaved(contenders, rounds=rounds, number=NUMBER)
        per_key = {name: spread.scaled(1e6 / len(KEYS)) for name, spread in spreads.items()}
        assert chain.stats()["loads"] == 0, "every chain read must have been an L2 hit"
        chain.close()
        raw.close()

    fast = args.codec == "json" and JsonCodec().accelerated
    print(
        f"redis-server on loopback, codec {args.codec}{' (orjson)' if fast else ''}, "
        f"{len(KEYS)} keys, chain's memory tier: {args.admission}, 10 entries; "
        f"{rounds} interleaved rounds of {NUMBER} passes: min / median"
    )
    print(f"{'operation':<24}{'peer us/key':>18}{'ours us/key':>18}{'ratio':>14}  target")
    for label, peer, ours in ROWS:
        base, mine = per_key[peer], per_key[ours]
        share = ratio(mine, base)
        target = TARGETS.get(label)
        verdict = (
            "" if target is None else f"<= {target}: {'met' if share.low <= target else 'NOT met'}"
        )
        print(f"{label:<24}{cell(base):>18}{cell(mine):>18}{cell(share):>14}  {verdict}")


def cell(spread: Spread) -> str:
    return f"{spread.low:.2f} / {spread.middle:.2f}"


if __name__ == "__main__":
    main()
