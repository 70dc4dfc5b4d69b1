"""A chain built before ``os.fork()`` works in the child: its background pool is the child's
own (a forked process inherits none of the parent's threads). The bus side is tested against
a real Redis in adapters/redis/tests/test_redis_coherence.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tiered_cache import TieredCache
from tiered_cache.testing import FakeClock
from tiered_cache.testing.forked import ForkedChild


def test_a_forked_child_refreshes_in_the_background() -> None:
    clock = FakeClock()
    cache = TieredCache.from_config(
        tiers=[{"kind": "memory", "admission": "always", "ttl": "1h"}],
        ttl="10s",
        protection={"max_stale": "1h", "stale_while_revalidate": True},
        clock=clock,
    )
    version = {"n": 0}

    def load() -> int:
        version["n"] += 1
        return version["n"]

    assert cache.get("k", load) == 1
    clock.advance(11)
    assert cache.get("k", load) == 1  # stale, refreshed in the background by the pool
    assert cache.wait_background(10)
    assert cache.get("k", load) == 2
    # Until the worker is idle (it gave back the pool's idle count, which a submit takes, after
    # its refresh): the child then inherits a pool that believes it has an idle worker, so
    # without a restart nothing ever runs its refresh.
    executor = cache._loader._executor
    assert executor is not None
    idle = executor._idle_semaphore  # type: ignore[attr-defined]
    assert idle.acquire(timeout=10)
    idle.release()
    clock.advance(11)

    def child(report: Callable[[Any], None]) -> None:
        stale = cache.get("k", load)  # served stale; the refresh needs a worker
        deadline = time.monotonic() + 10
        while cache.get("k", load) == stale and time.monotonic() < deadline:
            time.sleep(0.01)
        report([stale, cache.get("k", load)])

    forked = ForkedChild(child)
    seen = forked.read()
    assert forked.wait() == 0
    assert seen == [2, 3]
    cache.close()
