"""A chain closed while its bus's first subscription is held back longer than the close
used to wait for it.

The threaded bus's listener blocks in the subscription's handshake (redis-py waits for the
server's replies, up to the bus's ``timeout``). ``close()`` waited 5 s for it, gave up and
returned, the listener still running: a thread of the closed chain, on a connection nobody
closes, until the handshake's timeout. Now the close wakes the listener (it shuts the
subscription's sockets down) and waits for it: no thread of the chain's is left.
"""

from __future__ import annotations

import threading

import redis
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

from tiered_cache import TieredCache
from tiered_cache.bus import BusListener, Invalidation
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import FaultProxy, RedisServer

from .held_bus import held_settings

#: Longer than the close ever waited, shorter than the bus's timeout (``PATIENT``: 60 s).
HELD = 30.0


class Silent(BusListener):
    """A listener that hears nothing worth keeping."""

    def on_message(self, message: Invalidation) -> None: ...


def chain_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("tiered-cache-")}


def held_reader(redis_server: RedisServer, namespace: str, proxy: FaultProxy) -> TieredCache:
    """A chain whose bus's first subscription is held (its listener in the handshake)."""
    proxy.delay(HELD)
    reader = TieredCache.from_config(**held_settings(redis_server.url, namespace, proxy))
    assert eventually(lambda: proxy.connections == 1)  # the listener's, its handshake held
    return reader


def test_a_chain_closed_while_its_subscription_is_held_leaves_no_thread(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy
) -> None:
    before = chain_threads()
    reader = held_reader(redis_server, namespace, proxy)
    assert reader.stats()["bus"] == "starting"
    reader.close()
    assert chain_threads() - before == set()
    assert reader.stats()["bus"] == "closed"
    assert reader.stats()["bus_disconnects"] == 0


def test_two_closes_while_the_subscription_is_held_leave_no_thread(
    redis_server: RedisServer, namespace: str, proxy: FaultProxy
) -> None:
    before = chain_threads()
    reader = held_reader(redis_server, namespace, proxy)
    closers = [threading.Thread(target=reader.close) for _ in range(2)]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(HELD / 2)
    assert not any(closer.is_alive() for closer in closers)
    assert chain_threads() - before == set()


def test_a_bus_on_a_blocking_pool_closed_while_held_leaves_no_thread(proxy: FaultProxy) -> None:
    """``RedisBus``'s ``connect`` may make any redis-py client: one on a blocking pool (as
    the tier's own ``make_client``) has no ``_in_use_connections``. The close's wake raised
    ``AttributeError``, the listener left running and the publisher not closed."""
    url = proxy.url("redis")

    def connect() -> redis.Redis:
        pool = redis.BlockingConnectionPool.from_url(url, socket_timeout=60.0)
        return redis.Redis.from_pool(pool)

    before = chain_threads()
    bus = RedisBus(connect, "held", health=Health(interval=1.0, timeout=60.0))
    proxy.delay(HELD)
    bus.subscribe(Silent())
    assert eventually(lambda: proxy.connections == 1)  # the listener's, its handshake held
    bus.close()
    assert chain_threads() - before == set()
