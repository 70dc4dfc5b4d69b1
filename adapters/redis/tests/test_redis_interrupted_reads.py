"""A read interrupted between sending its command and reading the reply must not leave that
reply on a connection another read will use.

The Redis tier's reads keep a few connections checked out between reads
(:class:`~tiered_cache_redis.wire.WireReader`), so they skip the pool's check of a connection
with unread data. An exception that lands after the command went out and before its reply
was read -- a signal handler's (Celery's soft time limit, an ``alarm``-based timeout, a
``KeyboardInterrupt``) -- left that reply waiting on a parked connection: the next read on it
got the previous key's value, and every read after it the reply of the read before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tiered_cache_redis import RedisTier, make_client
from tiered_cache_redis.wire import WireReader

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.testing import FakeClock
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MISSING, Entry, MissingType


class SoftTimeLimit(Exception):
    """What a signal handler raises into the code it interrupts."""


def interrupt_after_the_next_send(conn: Any, error: BaseException) -> None:
    """The next command on ``conn`` is sent whole, then ``error`` is raised (the instant a
    signal handler's exception lands between the send and the read)."""
    send = conn.send_packed_command

    def sent_then_interrupted(*args: Any, **kwargs: Any) -> None:
        conn.send_packed_command = send
        send(*args, **kwargs)
        raise error

    conn.send_packed_command = sent_then_interrupted


@pytest.fixture
def tier(redis_server: RedisServer, namespace: str) -> Iterator[RedisTier]:
    tier = RedisTier(make_client(redis_server.url, timeout=2.0), namespace=namespace)
    tier.set_many({key: Entry(key.upper(), 0.0) for key in ("a", "b", "c")})
    yield tier
    tier.clear()
    tier.close()


def parked(tier: RedisTier) -> Any:
    """The connection the tier's next read takes (after a read parked one)."""
    assert tier.get("a") is not MISSING
    reads = tier._reads
    assert isinstance(reads, WireReader)
    return reads._parked[-1]


@pytest.mark.parametrize("error", [SoftTimeLimit("soft limit"), KeyboardInterrupt()])
def test_an_interrupted_read_leaves_no_reply_for_the_next_read(
    tier: RedisTier, error: BaseException
) -> None:
    interrupt_after_the_next_send(parked(tier), error)
    with pytest.raises(type(error)):
        tier.get("a")
    assert [value(tier.get(key)) for key in ("b", "c", "a")] == ["B", "C", "A"]
    many = tier.get_many(["c", "a", "b"])
    assert {key: entry.value for key, entry in many.items()} == {"c": "C", "a": "A", "b": "B"}
    assert [value(tier.get(key)) for key in ("a", "b")] == ["A", "B"]


def value(entry: Entry | MissingType) -> Any:
    return MISSING if entry is MISSING else entry.value


def test_a_chain_serves_no_other_keys_value_after_an_interrupted_read(
    redis_server: RedisServer, namespace: str
) -> None:
    """Through the chain: the interrupted read is a Redis failure (the source answers it);
    the reads after it get their own keys' values, and memory keeps no other key's value."""
    clock = FakeClock()
    values = {"a": "A", "b": "B", "c": "C"}
    redis_tier = RedisTier(
        make_client(redis_server.url, timeout=2.0), namespace=namespace, clock=clock
    )
    cache = TieredCache(
        [MemoryTier(max_entries=100, clock=clock), redis_tier],
        DictSource(dict(values)),
        ttl=60,
        clock=clock,
    )
    try:
        for key in values:
            cache.get(key)  # loaded, and filled into Redis
        cache.tiers[0].clear()  # memory empty: the reads below go to Redis
        interrupt_after_the_next_send(parked(redis_tier), SoftTimeLimit("soft limit"))
        assert cache.get("a") == "A"  # Redis skipped with a warning, the source answered
        assert cache.stats()["tiers"][1]["errors"] == 1
        assert [cache.get(key) for key in ("b", "c", "a")] == ["B", "C", "A"]
        assert cache.get_many(["c", "b"]) == {"c": "C", "b": "B"}
    finally:
        cache.clear()
        cache.close()
