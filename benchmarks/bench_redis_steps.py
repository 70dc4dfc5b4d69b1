"""Where the time of an L2 (Redis) hit goes: each step on its own, interleaved, per key.

The companion of ``bench_redis.py``: the same 1,000 tweets on a private ``redis-server``, and
every step of a read timed alone, all steps interleaved round by round (min / median per key):

- redis-py's ``GET`` and what it is made of: the pool's checkout and return, and the same
  ``GET`` sent on a connection held outside the pool (the round trip and the reply's parsing);
- the tier's ``GET`` near the wire (tiered_cache_redis.wire) and its decode (the header, the
  codec, the ``Entry``), against ``json.loads`` of the plain tweet;
- the chain's own work around an L2 hit, with an in-memory stand-in for Redis (no I/O): the
  L1 miss, the flight, the copy into L1 (``--admission``: the memory tier's policy);
- the same for ``MGET`` of 100 keys and ``get_many(100)``, with the memory tier's part of it.

Run: ``.venv/bin/python benchmarks/bench_redis_steps.py [--admission hot-keys|always]
[--rounds 15]``
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis
from bench_redis import BATCHES, KEYS, tweet
from tiered_cache_redis import RedisTier, make_client
from tiered_cache_redis.wire import reads_for
from timing import interleaved, run_line

from tiered_cache import TieredCache
from tiered_cache.memory_plugin import build_memory_tier
from tiered_cache.registry import BuildContext
from tiered_cache.settings import MemoryTierSettings
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING, Entry, MissingType, Tier, TierBase


class InMemoryL2(TierBase):
    """Redis's stand-in for timing the chain's own work: the decoded entries, no I/O."""

    name = "l2"

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self._entries = dict(entries)

    def get(self, key: str) -> Entry | MissingType:
        return self._entries.get(key, MISSING)

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return {key: self._entries[key] for key in keys if key in self._entries}

    def set(self, key: str, entry: Entry) -> None:
        """Reads only."""

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        """Reads only."""

    def delete(self, key: str) -> None:
        """Reads only."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Reads only."""

    def clear(self) -> None:
        """Reads only."""

    def close(self) -> None:
        """Nothing held."""


def over(step: Callable[[Any], object], items: Iterable[Any]) -> Callable[[], object]:
    listed = list(items)

    def run() -> None:
        for item in listed:
            step(item)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admission", default="hot-keys", choices=["hot-keys", "always"])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    args = parser.parse_args()
    print(run_line())
    now = time.time()

    def memory() -> Tier:
        return build_memory_tier(
            MemoryTierSettings(max_entries=10, ttl=60, admission=args.admission),
            BuildContext(namespace="bench", clock=time.time, index=0),
        )

    with RedisServer() as server:
        raw = redis.Redis.from_url(server.url)
        client = make_client(server.url, timeout=1.0)
        tier = RedisTier(client, namespace="bench")
        tier.set_many({key: Entry(tweet(i), now, now + 3600) for i, key in enumerate(KEYS)})
        raw.mset({f"raw:{key}": json.dumps(tweet(i)) for i, key in enumerate(KEYS)})
        stored = [(key, client.get(tier.redis_key(key))) for key in KEYS]
        entries = {key: tier._decode(key, data, now) for key, data in stored}
        decoded = {key: entry for key, entry in entries.items() if entry is not MISSING}
        assert len(decoded) == len(KEYS)
        plain = [raw.get(f"raw:{key}") for key in KEYS]
        pool = raw.connection_pool
        held = pool.get_connection()
        wire = reads_for(client)
        chain = TieredCache([memory(), InMemoryL2(decoded)], namespace="bench", ttl=3600)
        alone = memory()
        fills = [{key: decoded[key] for key in batch} for batch in BATCHES]

        def checkout(_: str) -> None:
            pool.release(pool.get_connection())

        def held_get(key: str) -> None:
            held.send_command("GET", f"raw:{key}")
            held.read_response()

        steps: dict[str, Callable[[], object]] = {
            "redis-py GET": over(lambda key: raw.get(f"raw:{key}"), KEYS),
            "  its pool checkout + return": over(checkout, KEYS),
            "  GET on a held connection": over(held_get, KEYS),
            "json.loads (the peer's decode)": over(json.loads, plain),
            "tier: GET near the wire": over(lambda key: wire.get(tier.redis_key(key)), KEYS),
            "tier: decode (header, codec, Entry)": over(
                lambda item: tier._decode(item[0], item[1], now), stored
            ),
            "chain get around an L2 hit (no I/O)": over(chain.get, KEYS),
            "redis-py MGET(100)": over(lambda b: raw.mget([f"raw:{k}" for k in b]), BATCHES),
            "tier: MGET(100) near the wire": over(
                lambda b: wire.mget([tier.redis_key(k) for k in b]), BATCHES
            ),
            "chain get_many(100) around L2 (no I/O)": over(chain.get_many, BATCHES),
            "  memory get_many(100), all missing": over(alone.get_many, BATCHES),
            "  memory set_many(100)": over(alone.set_many, fills),
        }
        spreads = interleaved(steps, rounds=args.rounds)
        pool.release(held)
        chain.close()
        tier.close()
        raw.close()

    print(
        f"us per key, {args.rounds} interleaved rounds: min / median; "
        f"chain's memory tier: {args.admission}, 10 entries"
    )
    for name, spread in spreads.items():
        per_key = spread.scaled(1e6 / len(KEYS))
        print(f"{name:<42}{per_key.low:>8.2f} / {per_key.middle:.2f}")


if __name__ == "__main__":
    main()
