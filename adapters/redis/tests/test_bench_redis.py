"""benchmarks/bench_redis.py (and tools/l2_instructions.py, which counts the same contenders)
compare like with like: the chain as the default settings build it, and a peer on a client
configured as the tier's, reading keys and JSON of the same sizes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tiered_cache.breaker import CircuitBreakerTier
from tiered_cache.testing.servers import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import bench_redis


@pytest.fixture
def bench(redis_server: RedisServer) -> Iterator[Any]:
    bench = bench_redis.connect(redis_server.url)
    bench_redis.fill(bench)
    yield bench
    bench.close()


def test_the_chain_reads_redis_through_the_default_circuit_breaker(bench: Any) -> None:
    guarded = bench.chain.tiers[1]
    assert isinstance(guarded, CircuitBreakerTier)
    assert guarded.tier is bench.tier


def test_the_peer_has_the_tiers_socket_options(bench: Any) -> None:
    ours = bench.tier.client.connection_pool.connection_kwargs
    peer = bench.raw.connection_pool.connection_kwargs
    for option in ("socket_timeout", "socket_connect_timeout", "decode_responses", "protocol"):
        assert peer.get(option) == ours.get(option), option
    assert peer["retry"].get_retries() == ours["retry"].get_retries()


def test_both_read_keys_of_one_size_and_the_same_json(bench: Any) -> None:
    key = bench_redis.KEYS[7]
    ours = bench.raw.get(bench.tier.redis_key(key))
    peer = bench.raw.get(bench_redis.RAW_PREFIX + key)
    assert len(bench.tier.redis_key(key)) == len(bench_redis.RAW_PREFIX + key)
    assert ours.endswith(peer)  # the tier's header, then the same bytes
