"""A threaded batch delete stopped between two of its calls (``keys_per_call``) is owed.

An invalidation of more than ``keys_per_call`` keys is sent as several UNLINKs, one after
another (tiered_cache_redis.chunks). A stop between two of them -- Ctrl-C's
``KeyboardInterrupt``, a task queue's signal-raised time limit: a ``BaseException``, not an
``Exception`` -- left the first calls made and the others never sent, and the delete was not
owed (tiered_cache.owed records a delete that failed, an ``Exception``): the old copies of
the unsent keys stayed in Redis, read by every process until their ``ttl``. Seen failing:
``assert stale() == []`` with the keys of the unsent call still in Redis (``['c', 'd']``).
A ``set_many`` stopped between the calls of its fill invalidates what it wrote, as one that
failed does (``ChainPaths.write_many``): held already, kept here beside the delete.

Real parts: the session's redis-server. The stop is raised by a fault injector at the
second call's pipeline (before anything of it is sent), as a signal handler raises it there.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.testing.interrupts import Interrupted
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import DictSource

KEYS = ["a", "b", "c", "d"]


class StopAtPipeline(redis.Redis):
    """A client that raises :class:`Interrupted` as its ``stop_at``-th pipeline from now is
    made: the call before it made, that one and those after never sent."""

    stop_at = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        self.stop_at -= 1
        if self.stop_at == 0:
            raise Interrupted
        return super().pipeline(transaction, shard_hint)


@pytest.mark.parametrize("how", ["invalidate_many", "set_many"])
def test_a_batch_stopped_between_its_calls_leaves_no_old_copy_in_redis(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    client = cast(StopAtPipeline, StopAtPipeline.from_url(redis_server.url))
    source = DictSource()
    cache = TieredCache(
        [MemoryTier(), RedisTier(client, namespace=namespace, keys_per_call=2)], source
    )
    cache.set_many({key: "old" for key in KEYS})
    watch = redis.Redis.from_url(redis_server.url)
    assert all(watch.get(f"{namespace}:{key}") is not None for key in KEYS)
    source.items.update({key: "new" for key in KEYS})  # changed behind the chain's back
    client.stop_at = 2  # the second UNLINK of the batch's delete
    with pytest.raises(Interrupted):
        if how == "invalidate_many":
            cache.invalidate_many(KEYS)
        else:  # the fill's second call (after two for the leases): the write invalidates
            client.stop_at = 4  # what it wrote, as a failed one does
            cache.set_many({key: "new" for key in KEYS})

    # Owed: made by the payment timer, or before the next call to the tier.
    def stale() -> list[str]:
        return [key for key in KEYS if watch.get(f"{namespace}:{key}") is not None]

    eventually(lambda: stale() == [], 10.0)  # a guard, not a measure
    assert stale() == []
    assert [cache.get(key) for key in KEYS] == ["new"] * 4
    watch.close()
    cache.close()
