"""Where a chain's ``get_many(100)`` spends its time per key, in ``bench_redis.py``'s setting.

The chain of :func:`bench_redis.connect` (a 10-entry memory tier in front of the Redis tier:
every key an L1 miss and an L2 hit, copied into L1) reads batches of 100 keys; beside it, each
part of that read on its own, on the same objects and the same keys:

- ``memory get_many``: the memory tier's look-up of 100 keys it does not hold (each miss is
  counted by its policy);
- ``redis MGET``: the Redis tier's round trip alone (the command and the reply's values cut
  out, no header read, no decode);
- ``redis decode``: the headers and the payloads of those values read into entries;
- ``memory set_many``: the memory tier taking the 100 entries (its policy's contests and
  evictions);
- ``chain glue``: what the four parts leave of the chain's get_many (keys checked, the
  accessors, the fence, the dicts of the result), of the minima and of the medians;
- ``all-memory-hit get_many``: another chain whose memory tier (10,000 entries) holds every
  key: no Redis at all.

Interleaved round by round (``timing.interleaved_samples``); per key, min / median.

Run: ``.venv/bin/python benchmarks/bench_get_many_parts.py [--rounds N]``
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

from bench_redis import BATCHES, NAMESPACE, TIMEOUT, Bench, connect, fill
from tiered_cache_redis.settings import RedisTierSettings
from timing import Spread, interleaved_samples, run_line

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.settings import BusSettings, CacheSettings, MemoryTierSettings
from tiered_cache.testing.servers import RedisServer

ROUNDS = 60
#: Batches a contender reads per sample: the 1,000 keys once.
PER_SAMPLE = len(BATCHES)
KEYS_PER_SAMPLE = sum(len(batch) for batch in BATCHES)


def contenders(bench: Bench, hot: TieredCache) -> dict[str, Callable[[], object]]:
    """Each contender: the 10 batches once per call."""
    chain, tier = bench.chain, bench.tier
    memory = chain.tiers[0]
    assert isinstance(memory, MemoryTier)
    reads = tier._reads or tier._read_path()
    names = [[tier.redis_key(key) for key in batch] for batch in BATCHES]
    replies = [reads.mget(batch) for batch in names]
    decode = tier._stored.decode_many
    entries = [
        decode(batch, values, time.time()) for batch, values in zip(BATCHES, replies, strict=True)
    ]
    assert all(len(found) == len(batch) for found, batch in zip(entries, BATCHES, strict=True))

    def each(call: Callable[[int], object]) -> Callable[[], object]:
        def run() -> None:
            for index in range(PER_SAMPLE):
                call(index)

        return run

    return {
        "chain get_many": each(lambda i: chain.get_many(BATCHES[i])),
        "memory get_many": each(lambda i: memory.get_many(BATCHES[(i + 3) % PER_SAMPLE])),
        "redis MGET": each(lambda i: reads.mget(names[i])),
        "redis decode": each(lambda i: decode(BATCHES[i], replies[i], time.time())),
        "memory set_many": each(lambda i: memory.set_many(entries[(i + 5) % PER_SAMPLE])),
        "all-memory-hit get_many": each(lambda i: hot.get_many(BATCHES[i])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    print(run_line())
    with RedisServer() as server:
        bench = connect(server.url)
        fill(bench)
        hot = TieredCache.from_settings(
            CacheSettings(
                namespace=NAMESPACE,
                ttl=3600,
                bus=BusSettings(kind="off"),
                tiers=[
                    MemoryTierSettings(max_entries=10_000, ttl=600, admission="always"),
                    RedisTierSettings(url=server.url, timeout=TIMEOUT),
                ],
            )
        )
        for batch in itertools.chain(BATCHES, BATCHES):
            hot.get_many(batch)  # the second pass: every key in its memory tier
        samples = interleaved_samples(contenders(bench, hot), rounds=args.rounds)
        assert bench.chain.stats()["loads"] == 0 and hot.stats()["loads"] == 0
        hot.close()
        bench.close()
    parts = ["memory get_many", "redis MGET", "redis decode", "memory set_many"]
    per_key = {
        name: Spread.of(values).scaled(1e6 / KEYS_PER_SAMPLE) for name, values in samples.items()
    }
    # What the parts leave of the whole: of the minima, and of the medians.
    whole = per_key["chain get_many"]
    per_key["chain glue"] = Spread(
        whole.low - sum(per_key[part].low for part in parts),
        whole.middle - sum(per_key[part].middle for part in parts),
    )
    print(f"{args.rounds} interleaved rounds of {KEYS_PER_SAMPLE} keys (batches of 100): us/key")
    for name in ["chain get_many", *parts, "chain glue", "all-memory-hit get_many"]:
        spread = per_key[name]
        print(f"{name:<26}{spread.low:>8.2f} / {spread.middle:.2f}")


if __name__ == "__main__":
    main()
