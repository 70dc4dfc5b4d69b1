"""The cost of an L2 (Redis) hit through the Redis tier and the chain, against raw redis-py.

Contenders, each reading the same 1,000 tweets from one private ``redis-server`` (never the
machine's 6379), interleaved round by round:

- peers: redis-py ``GET`` + ``json.loads`` of the tweet stored as plain JSON, and ``MGET`` of
  100 keys + ``json.loads`` of each, on a client with the tier's socket options;
- ``tier get`` / ``tier get_many(100)``: :class:`RedisTier` alone (header + type-preserving
  codec);
- ``chain get`` / ``chain get_many(100)``: a chain built from settings with the defaults (the
  Redis tier behind its circuit breaker, the memory tier's hot-key admission unless
  ``--admission``), but a 10-entry memory tier and no bus (see :func:`connect`): cycling
  1,000 keys makes every read an L1 miss, an L2 hit and a copy into L1. The script asserts
  that no read was a load.

Each round every contender reads the next 200 keys (the order of the contenders rotating
each round); 150 rounds by default. Prints per key the minimum and the median over the
rounds, the ratio to the peer of the minima (which the targets judge) and of the medians, and
the paired ratio: ours over the peer's within each round, least and median. Targets (issue
#14): chain ``get`` <= 1.1x and chain ``get_many(100)`` <= 1.3x the peer, ``get_many`` of
100 at least 10x cheaper per key than 100 ``get``. ``tools/l2_instructions.py`` counts the
instructions of the same chain and peer (this module's :func:`connect`).

With ``--peer PATH`` (a frozen clone of the project with its own ``.venv``), the writes too,
against that checkout in the same run: a ``set`` of a 1 KB and of a 100 KB value (a list of
tweets), JSON and pickle, through a chain built from the default settings (memory, then Redis;
no source, as a Django backend's) on the same redis-server. Each of ``--write-rounds`` rounds
runs one measure in a fresh process of each checkout's interpreter, in turns whose order
rotates (:func:`measure_writes`: the least of ``WRITE_PASSES`` passes, us a ``set``); printed
per row: the minimum and median of the rounds for each, and ours over the peer's round by
round (least and median).

Run: ``.venv/bin/python benchmarks/bench_redis.py [--codec json|msgpack|pickle]
[--admission hot-keys|always] [--rounds N] [--quick] [--peer PATH [--write-rounds N]]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import redis
from tiered_cache_redis import RedisTier
from tiered_cache_redis.client import client_options
from tiered_cache_redis.settings import RedisTierSettings
from timing import ROOT, Spread, core_in, head, interleaved_samples, paired, ratio, run_line

from tiered_cache import TieredCache
from tiered_cache.breaker import CircuitBreakerTier
from tiered_cache.codecs import JsonCodec
from tiered_cache.settings import BusSettings, CacheSettings, MemoryTierSettings
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import Entry

KEYS = [f"tweet:{i}" for i in range(1000)]
BATCH = 100
BATCHES = [KEYS[i : i + BATCH] for i in range(0, len(KEYS), BATCH)]
#: Keys a contender reads per sample (one round): short samples, many rounds. A sample is
#: then tens of milliseconds, so that some fall between the other work of a shared machine
#: (the minimum is a quiet spell's), and the contenders of a round run close together.
CHUNK = 200
#: Rounds by default (every contender reads the 1,000 keys 30 times), and with --quick.
ROUNDS, QUICK = 150, 40
#: Both clients' socket timeouts (seconds): long enough never to fire on loopback.
TIMEOUT = 1.0


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


#: The tier's namespace, and the peer's key prefix of the same length: both contenders send
#: keys of the same size (the tier's prefix is ``<namespace>:``).
NAMESPACE = "bench"
RAW_PREFIX = "plain:"


def plain_json(value: object) -> bytes:
    """What the peer stores: compact JSON, the same bytes the tier's JSON codec writes after
    its header for a tweet (``json.dumps``'s default ", " and ": " would make the peer's
    ``json.loads`` read 17 bytes more per value)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Bench:
    """What every contender reads through: the raw client and the tier, same server and data."""

    raw: redis.Redis
    tier: RedisTier
    raw_prefix: str
    #: memory (10 entries, so cycling 1,000 keys always misses it) -> the same Redis tier.
    chain: TieredCache

    def close(self) -> None:
        self.chain.close()
        self.raw.close()


def connect(url: str, codec: str = "json", admission: str = "hot-keys") -> Bench:
    """The contenders' clients on the server at ``url`` (:func:`fill` stores what they read).

    The chain is built from settings, as a service builds it, with every default but the
    memory tier's size (10 entries, so that cycling 1,000 keys makes every chain read an L1
    miss and an L2 hit) and the bus (off: it is not on the read path, and its listener's
    health checks would run beside the contenders): the Redis tier behind its default
    circuit breaker, the memory tier's default policy (hot-key admission). The tier alone is
    that chain's Redis tier.

    The peer's client has the socket options of the tier's client (its settings' timeout,
    retry on a broken connection, ``decode_responses=False``, redis-py's default protocol):
    it is what a service would write by hand on the same client configuration, so the ratio
    is the library's work, not a socket option. Each keeps its own pool class: the peer
    redis-py's default, the tier the blocking pool it is built with (the tier's reads keep
    their connections parked: its pool class does not touch a read).
    """
    settings = CacheSettings(
        namespace=NAMESPACE,
        ttl=3600,
        bus=BusSettings(kind="off"),
        tiers=[
            MemoryTierSettings(max_entries=10, ttl=60, admission=admission),
            RedisTierSettings(url=url, timeout=TIMEOUT, codec=codec),
        ],
    )
    chain = TieredCache.from_settings(settings)
    guarded = chain.tiers[1]
    assert isinstance(guarded, CircuitBreakerTier), "the default settings guard the tier"
    tier = guarded.tier
    assert isinstance(tier, RedisTier)
    options = client_options(timeout=TIMEOUT)
    del options["max_connections"]  # the default pool's own limit: none
    raw = redis.Redis.from_url(url, **options)
    assert len(RAW_PREFIX) == len(tier.redis_key("")), "keys of the same size for both"
    return Bench(raw=raw, tier=tier, raw_prefix=RAW_PREFIX, chain=chain)


def fill(bench: Bench) -> None:
    """Store the tweets: through the tier for the tier and the chain, as plain JSON for the
    peer; and check that each side reads back what was stored."""
    now = time.time()
    bench.tier.set_many({key: Entry(tweet(i), now, now + 3600) for i, key in enumerate(KEYS)})
    bench.raw.mset({RAW_PREFIX + key: plain_json(tweet(i)) for i, key in enumerate(KEYS)})
    # The tier returns what was stored, exactly.
    first = bench.tier.get(KEYS[1])
    assert first and first.value == tweet(1) and not isinstance(first.value, Decimal)
    assert json.loads(bench.raw.get(RAW_PREFIX + KEYS[1])) == tweet(1)  # type: ignore[arg-type]
    payload = bench.raw.get(bench.tier.redis_key(KEYS[1]))
    assert payload is not None and payload.endswith(plain_json(tweet(1)))


def chunks() -> Iterator[list[str]]:
    """The keys, :data:`CHUNK` at a time, round and round: each call of a contender reads the
    next chunk, so that all contenders read the same keys in a round."""
    return itertools.cycle([KEYS[i : i + CHUNK] for i in range(0, len(KEYS), CHUNK)])


def raw_get(bench: Bench) -> Callable[[], object]:
    get, loads, prefix, keys = bench.raw.get, json.loads, bench.raw_prefix, chunks()

    def run() -> None:
        for key in next(keys):
            loads(get(prefix + key))  # type: ignore[arg-type]

    return run


def raw_mget(bench: Bench) -> Callable[[], object]:
    mget, loads, prefix, keys = bench.raw.mget, json.loads, bench.raw_prefix, chunks()

    def run() -> None:
        chunk = next(keys)
        for i in range(0, len(chunk), BATCH):
            [loads(v) for v in mget([prefix + key for key in chunk[i : i + BATCH]])]  # type: ignore[arg-type]

    return run


def each_key(get: Callable[[str], object]) -> Callable[[], object]:
    keys = chunks()

    def run() -> None:
        for key in next(keys):
            get(key)

    return run


def each_batch(get_many: Callable[[list[str]], object]) -> Callable[[], object]:
    keys = chunks()

    def run() -> None:
        chunk = next(keys)
        for i in range(0, len(chunk), BATCH):
            get_many(chunk[i : i + BATCH])

    return run


def contenders(bench: Bench) -> dict[str, Callable[[], object]]:
    """Each contender: one chunk of :data:`CHUNK` keys per call (as many reads, or batches of
    :data:`BATCH`)."""
    return {
        "raw GET + json.loads": raw_get(bench),
        "tier get": each_key(bench.tier.get),
        "chain get": each_key(bench.chain.get),
        "raw MGET + json.loads": raw_mget(bench),
        f"tier get_many({BATCH})": each_batch(bench.tier.get_many),
        f"chain get_many({BATCH})": each_batch(bench.chain.get_many),
    }


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
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"interleaved rounds (default {ROUNDS})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} rounds (for make bench)")
    parser.add_argument("--peer", type=Path, help="a checkout with its .venv: writes against it")
    parser.add_argument(
        "--write-rounds",
        type=int,
        default=WRITE_ROUNDS,
        help=f"rounds of the writes against --peer (default {WRITE_ROUNDS})",
    )
    parser.add_argument("--measure-writes", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_writes:
        print(json.dumps(measure_writes(args.measure_writes)))
        return
    rounds = QUICK if args.quick else args.rounds
    print(run_line())

    with RedisServer() as server:
        bench = connect(server.url, args.codec, args.admission)
        fill(bench)
        chain = bench.chain
        assert chain.get(KEYS[2]) == tweet(2)  # an L2 hit, not a load (no source, no loader)
        samples = interleaved_samples(contenders(bench), rounds=rounds)
        assert chain.stats()["loads"] == 0, "every chain read must have been an L2 hit"
        bench.close()
        print_reads(samples, args.codec, args.admission, rounds)
        if args.peer is not None:
            compare_writes(server.url, args.peer.resolve(), args.write_rounds)


def print_reads(samples: dict[str, list[float]], codec: str, admission: str, rounds: int) -> None:
    """The read rows (:data:`ROWS`), per key."""
    per_key = {name: Spread.of(values).scaled(1e6 / CHUNK) for name, values in samples.items()}
    fast = codec == "json" and JsonCodec().accelerated
    print(
        f"redis-server on loopback, codec {codec}{' (orjson)' if fast else ''}, "
        f"{len(KEYS)} keys, chain's memory tier: {admission}, 10 entries; "
        f"{rounds} interleaved rounds of {CHUNK} keys each: min / median"
    )
    print(
        f"{'operation':<24}{'peer us/key':>18}{'ours us/key':>18}{'ratio':>14}"
        f"{'paired':>14}  target"
    )
    for label, peer, ours in ROWS:
        base, mine = per_key[peer], per_key[ours]
        share = ratio(mine, base)
        pairs = paired(samples[ours], samples[peer])
        target = TARGETS.get(label)
        verdict = (
            "" if target is None else f"<= {target}: {'met' if share.low <= target else 'NOT met'}"
        )
        print(
            f"{label:<24}{cell(base):>18}{cell(mine):>18}{cell(share):>14}{cell(pairs):>14}"
            f"  {verdict}"
        )


def cell(spread: Spread) -> str:
    return f"{spread.low:.2f} / {spread.middle:.2f}"


# -- writes, against a peer checkout

#: Each write row: (label, codec, tweets in the value, sets a pass).
WRITES = [
    ("set 1 KB json", "json", 4, 100),
    ("set 100 KB json", "json", 400, 20),
    ("set 1 KB pickle", "pickle", 4, 100),
    ("set 100 KB pickle", "pickle", 400, 20),
]
#: Passes of each row in a measure (its least counts), and rounds by default.
WRITE_PASSES, WRITE_ROUNDS = 5, 10


def written_value(tweets: int) -> dict[str, object]:
    """A value of about ``tweets`` x 250 bytes once encoded: a page of tweets."""
    return {"page": 1, "tweets": [tweet(i) for i in range(tweets)]}


def write_chain(url: str, codec: str) -> TieredCache:
    """The chain a write row measures: built from the default settings (:func:`connect`'s,
    the memory tier at its default size), no source, no bus."""
    settings = CacheSettings(
        namespace=f"{NAMESPACE}-writes-{codec}",
        ttl=3600,
        bus=BusSettings(kind="off"),
        tiers=[MemoryTierSettings(), RedisTierSettings(url=url, timeout=TIMEOUT, codec=codec)],
    )
    return TieredCache.from_settings(settings)


def measure_writes(url: str) -> dict[str, float]:
    """Each write row in this process: us a ``set``, the least of :data:`WRITE_PASSES`
    passes, each pass setting the row's value under keys of its own."""
    figures: dict[str, float] = {}
    chains = {codec: write_chain(url, codec) for codec in {row[1] for row in WRITES}}
    for label, codec, tweets, sets in WRITES:
        chain, value = chains[codec], written_value(tweets)
        keys = [f"w:{tweets}:{i}" for i in range(sets)]
        chain.set(keys[0], value)  # connected, and the value read back as written
        assert chain.get(keys[0]) == value and chain.stats()["loads"] == 0
        best = float("inf")
        for _ in range(WRITE_PASSES):
            started = time.perf_counter()
            for key in keys:
                chain.set(key, value)
            best = min(best, (time.perf_counter() - started) / sets)
        figures[label] = best * 1e6
    for chain in chains.values():
        chain.close()
    return figures


def writes_in(tree: Path, url: str) -> dict[str, float]:
    """:func:`measure_writes` in a fresh process of ``tree``'s interpreter (its own package;
    this script, so both checkouts run the same measure)."""
    python = tree / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), __file__, "--measure-writes", url], capture_output=True, text=True, check=True
    )
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def compare_writes(url: str, peer: Path, rounds: int) -> None:
    """The write rows, ours and the peer's, in turns (see the module's docstring)."""
    trees = {"ours": ROOT, "peer": peer}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    names = list(trees)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(writes_in(trees[name], url))
    print(
        f"\nwrites: peer {peer} (commit {head(peer)}, {core_in(peer)}); {rounds} rounds, each "
        f"checkout one process a round in turns, the least of {WRITE_PASSES} passes each: "
        "min / median of rounds"
    )
    print(f"{'operation':<24}{'peer us/set':>20}{'ours us/set':>20}{'ours/peer':>14}")
    for label, *_ in WRITES:
        ours = [run[label] for run in samples["ours"]]
        theirs = [run[label] for run in samples["peer"]]
        mine, base = Spread.of(ours), Spread.of(theirs)
        print(f"{label:<24}{cell(base):>20}{cell(mine):>20}{cell(paired(ours, theirs)):>14}")


if __name__ == "__main__":
    main()
