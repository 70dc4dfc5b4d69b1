"""A write interrupted after the source took its value still leaves no old copy served.

An interrupt (Ctrl-C's ``KeyboardInterrupt``, a task queue's signal-raised time limit) that
lands while ``set`` or ``set_many`` fills the tiers -- once the source has the new value --
must end as a failed fill does: the key invalidated in Redis and in every process. The fill
phase invalidated on an ``Exception`` only: interrupted while Redis's reply to the fill was on
its way, the write left every other process's memory with the old value, never told (and,
interrupted before the fill was sent, Redis with it, for Redis's TTL).

Two chains share one in-process bus and one source (two processes and their table); the
writer reaches Redis through the fault proxy, which holds the fill's reply back until a real
signal has landed.
"""

from __future__ import annotations

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.bus import LocalBus
from tiered_cache.protection import Protection
from tiered_cache.testing.interrupts import interrupted_when
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import FaultProxy, RedisServer
from tiered_cache.testing.sources import DictSource


def chain(url: str, namespace: str, source: DictSource, bus: LocalBus) -> TieredCache:
    tier = RedisTier(redis.Redis.from_url(url, socket_timeout=30.0), namespace=namespace)
    return TieredCache(
        [MemoryTier(), tier], source, bus=bus, protection=Protection(soft_timeout=None)
    )


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_write_interrupted_while_it_fills_leaves_no_old_copy(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    source, bus = DictSource(), LocalBus()
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        writer = chain(proxy.url(), namespace, source, bus)
        reader = chain(redis_server.url, namespace, source, bus)
        writer.set("k", "old")
        assert reader.get("k") == "old"
        assert reader.get("k") == "old"  # in the reader's memory now
        watch = redis.Redis.from_url(redis_server.url)
        stored = watch.get(f"{namespace}:k")
        assert stored is not None
        proxy.trickle(1, 0.2)  # every reply comes a byte at a time

        def once_redis_has_the_new_value() -> None:
            until(lambda: watch.get(f"{namespace}:k") != stored, "Redis has the new value")

        def write() -> None:
            if how == "set":
                writer.set("k", "new")
            else:
                writer.set_many({"k": "new"})

        # Interrupted while the fill's reply is on its way; then the replies flow again.
        interrupted_when(once_redis_has_the_new_value, write, proxy.restore)
        assert source.items["k"] == "new"
        assert reader.get("k") == "new"  # was "old": its memory was never told
        assert writer.get("k") == "new"
        watch.close()
        writer.close()
        reader.close()
