"""``close()`` of the threaded chain interrupted, or beside another: Ctrl-C (or a signal
handler raising) while it waits, a second ``close()`` on another thread (a shutdown hook
beside the service's ``with``). The chain ends closed all the same: its Redis tier's and
bus's connections closed on the server, its source closed, once; and a ``close()`` returns
only once that is done.

The close is caught on its way by a background refresh held in its loader
(:mod:`tiered_cache.testing.held_close`); the connections are counted on a real
redis-server (``CLIENT LIST``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from tiered_cache_redis import RedisTier
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.client import make_client

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import (
    ClosesCounted,
    HeldRefresh,
    until_the_close_waits,
    waiting_in,
)
from tiered_cache.testing.interrupts import interrupted_when
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

from .server_connections import no_connection_opened_since

Watch = tuple[redis.Redis, set[int]]


@pytest.fixture
def watch(redis_server: RedisServer) -> Iterator[Watch]:
    client = redis.Redis.from_url(redis_server.url)
    yield client, {int(info["id"]) for info in client.client_list()}
    client.close()


def held(url: str, namespace: str) -> tuple[HeldRefresh, ClosesCounted]:
    """A chain of memory -> Redis with the Redis bus, its refresh of ``a`` held."""
    clock = FakeClock(time.time())  # Redis keeps an entry for its ttl from now
    source = ClosesCounted()
    cache = TieredCache(
        [
            MemoryTier(max_entries=100),
            RedisTier(make_client(url, timeout=2.0), namespace=namespace),
        ],
        source,
        namespace=namespace,
        ttl=1.0,
        clock=clock,
        bus=RedisBus(lambda: redis.Redis.from_url(url), f"{namespace}:invalidations"),
    )
    return HeldRefresh(cache, clock), source


def left_open(watch: Watch) -> list[str]:
    return asyncio.run(no_connection_opened_since(*watch))


def test_a_second_close_returns_once_the_chain_is_closed(
    redis_server: RedisServer, namespace: str, watch: Watch
) -> None:
    """Two threads close the chain (a shutdown hook's and the service's ``with``). Seen
    failing: the second ``close()`` returned at once, before the bus, the tiers and the
    source were closed (``[0] == [1]``: closes of the source when it returned)."""
    refresh, source = held(redis_server.url, namespace)
    first = threading.Thread(target=refresh.cache.close)
    first.start()
    until_the_close_waits()
    seen: list[int] = []

    def second_close() -> None:
        refresh.cache.close()
        seen.append(source.closes)

    second = threading.Thread(target=second_close)
    second.start()
    until(lambda: not second.is_alive() or waiting_in(second, "close"), "the second close")
    refresh.go.set()
    second.join()
    first.join()
    assert seen == [1]
    assert (source.closes, left_open(watch)) == (1, [])


def test_a_close_interrupted_is_finished_by_the_next_close(
    redis_server: RedisServer, namespace: str, watch: Watch
) -> None:
    """Ctrl-C (a signal handler raising) lands while ``close()`` waits for a refresh. Seen
    failing: the next ``close()`` returned at once; the source was never closed and the
    tier's and the bus's connections stayed open (``(0, ['evalsha', 'get', 'ping']) ==
    (1, [])``)."""
    refresh, source = held(redis_server.url, namespace)
    interrupted_when(until_the_close_waits, refresh.cache.close)
    refresh.go.set()
    refresh.cache.close()
    assert (source.closes, left_open(watch)) == (1, [])
