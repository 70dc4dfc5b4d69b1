"""A read of this process that copies Redis's old value up into memory while its own ``set`` of
the key is between its fence step and its Redis fill.

Found by the history checker (seed 2033, schedule 548): a ``get`` started after the write had
dropped the memory copy, so its mark came after the write's invalidation; it read the old value
from Redis before the write's fill reached Redis, and its copy into memory landed after the
write's own memory fill. Nothing refused it (no invalidation since its mark), so this process
read its previous value from memory after its ``set`` returned, until the memory ``ttl``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from tiered_cache_redis import RedisTier

from tiered_cache import MISSING, MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import Entry, MissingType


class HeldRedis(RedisTier):
    """A Redis tier that, once armed, holds the write's fill until a read of the key has been
    answered, and holds that read (after Redis answered it) until ``write_returned``."""

    def __init__(self, client: redis.Redis, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.armed = False
        self.write_at_fill = threading.Event()
        self.read_answered = threading.Event()
        self.write_returned = threading.Event()

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        if self.armed:
            self.write_at_fill.set()
            assert self.read_answered.wait(10)
        return super().fill_with_lease(key, entry, token)

    def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> set[str]:
        if self.armed:
            self.write_at_fill.set()
            assert self.read_answered.wait(10)
        return super().fill_with_leases(entries)

    def get(self, key: str) -> Entry | MissingType:
        entry = super().get(key)
        if self.armed and self.write_at_fill.is_set():
            self.read_answered.set()
            assert self.write_returned.wait(10)
        return entry


def test_a_read_during_the_processs_own_write_does_not_bring_the_old_value_back(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = FakeClock(time.time())  # near the real time: Redis's PX expiries use it
    memory = MemoryTier(name="memory", max_entries=100, ttl=600, clock=clock)
    shared = HeldRedis(redis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock)
    source = DictSource({})
    cache = TieredCache(
        [memory, shared], source, clock=clock, protection=Protection(lease_poll=0.01)
    )
    try:
        cache.set("k", "v1")
        assert memory.peek("k") is not MISSING and shared.get("k") is not MISSING
        shared.armed = True
        writer = threading.Thread(target=cache.set, args=("k", "v2"))
        writer.start()
        # The write stole the lease, wrote the source, dropped the memory copy (its fence
        # step) and waits at its Redis fill; a read now misses memory and finds v1 in Redis.
        assert shared.write_at_fill.wait(10)
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.append(cache.get("k")))
        reader.start()
        writer.join(10)
        assert not writer.is_alive()
        shared.write_returned.set()
        reader.join(10)
        shared.armed = False
        assert got == ["v1"]  # it overlapped the write: either value may be served to it
        kept = memory.peek("k")
        assert kept is MISSING or kept.value == "v2"
        assert cache.get("k") == "v2"
    finally:
        cache.close()
