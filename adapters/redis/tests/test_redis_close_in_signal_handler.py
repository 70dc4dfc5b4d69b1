"""``close()`` from a signal handler that interrupted a call of the Redis tier while the main
thread held redis-py's pool lock (a worker's SIGTERM handler closing its cache mid-read).

redis-py's blocking pool keeps its connections in a queue whose mutex (a plain lock) is held
while a connection is taken or given back. The signal is raised from inside that mutex (a
queue whose ``_put``/``_get`` raise it: they run under it), in a forked child so that a hang
is a report missing; tools/signal_close.py finds the same at random instants."""

from __future__ import annotations

import queue
import signal
from typing import Any

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache import ChainClosedError, MemoryTier, TieredCache
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.servers import RedisServer

ARMED = [0]


class SignalInTheQueue(queue.LifoQueue[Any]):
    """The pool's queue: once armed, the ``ARMED[0]``-th connection given back or taken (under
    the queue's mutex) raises SIGUSR1 there."""

    def _signal_if_due(self) -> None:
        if ARMED[0]:
            ARMED[0] -= 1
            if ARMED[0] == 0:
                signal.raise_signal(signal.SIGUSR1)

    def _put(self, item: Any) -> None:
        self._signal_if_due()
        super()._put(item)

    def _get(self) -> Any:
        self._signal_if_due()
        return super()._get()


@pytest.mark.parametrize("nth", [1, 2, 3, 4])
def test_close_from_a_handler_interrupting_the_pool_under_its_lock(
    redis_server: RedisServer, namespace: str, nth: int
) -> None:
    """A cold ``get`` takes and gives back connections for its lease, its read and its fill;
    the signal lands in the ``nth`` of those queue steps. Seen failing before close() finished
    aside in a handler: the child reported nothing within 20 s in 4 of 4 cases (the
    handler's lease give-back waited for the queue's mutex its own thread held). Now the
    handler's close returns, the interrupted call ends, later calls are refused, and a close
    after the handler waits for the rest: no lease left in Redis, the pool disconnected."""

    def body() -> list[Any]:
        pool = redis.BlockingConnectionPool.from_url(
            redis_server.url, queue_class=SignalInTheQueue, timeout=2, socket_timeout=2
        )
        client = redis.Redis.from_pool(pool)
        cache = TieredCache([MemoryTier(), RedisTier(client, namespace=namespace)])
        seen: list[Any] = []

        def on_signal(signum: int, frame: Any) -> None:
            cache.close()
            seen.append("handler closed")

        signal.signal(signal.SIGUSR1, on_signal)
        assert cache.get("warm", lambda: "up") == "up"
        ARMED[0] = nth
        try:
            seen.append(("interrupted call", cache.get("k", lambda: "v")))
        except ChainClosedError:
            seen.append(("interrupted call", "refused"))
        try:
            cache.get("later", lambda: "v")
        except ChainClosedError:
            seen.append("later call refused")
        cache.close()
        seen.append(("connections open", sum(1 for c in pool._connections if c._sock)))
        return seen

    seen = in_a_child(body, timeout=20)
    assert seen[0] == "handler closed"
    assert seen[1][0] == "interrupted call"
    assert seen[2:] == ["later call refused", ["connections open", 0]]
    watch = redis.Redis.from_url(redis_server.url)
    assert list(watch.scan_iter(f"{{{namespace}:*}}:lease")) == []
    watch.close()
