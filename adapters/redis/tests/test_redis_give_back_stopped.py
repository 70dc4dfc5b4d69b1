"""A lease call answered, then stopped while it gives back the tokens of earlier calls that
timed out (tiered_cache_redis.doubted): neither its own leases nor those tokens are lost.

A lease call that Redis answered gives back, before it returns, the tokens of earlier lease
calls that timed out (``TierCommands._taking`` -> ``_give_back_doubted``). Stopped there (a
Ctrl-C or a signal-raised time limit on the threaded face, a cancellation on the asyncio
face: a caller's ``asyncio.timeout`` in a storm, the very storm that leaves stopped steals'
tokens doubted), the call's own answer never reached its caller, whose leases then held
until ``lease_ttl``, and the tokens taken out to be given back were dropped: both leases
stayed, and every process reading their keys waited ``lease_wait`` for a holder that was
gone. Seen failing: ``assert leases_in(server, namespace) == []`` with the two leases (the
timed-out call's key and the interrupted call's) still held.

Real parts: a private redis-server, stopped (SIGSTOP) so that a lease call times out and
runs when it wakes. The interrupt is a real signal, landed by a trace function at the first
line of the give-back run with the tokens taken out.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from tiered_cache_redis import RedisTier
from tiered_cache_redis.commands import TierCommands

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing.interrupts import Interrupted, interrupt_once, interrupting
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import FaultProxy, RedisServer

from .leases_held import leases_in


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own: stopping the session's would stall the others."""
    with RedisServer() as started:
        yield started


def tokens_taken_out(frame: object) -> bool:
    """At a line run once the give-back holds the tokens it took out of those kept."""
    return bool(getattr(frame, "f_locals", {}).get("doubted"))


def doubted_lease(tier: RedisTier, server: RedisServer, namespace: str, key: str) -> None:
    """A lease call of ``key`` that times out on the stopped server and runs as it wakes:
    the lease held in Redis, its token kept by the tier to give back."""
    held = len(leases_in(server, namespace))
    tier.delete_many(["nothing"])  # a connection of the pool open: the call goes out on it
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(redis.TimeoutError):
            tier.acquire_lease(key, 60.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    until(lambda: len(leases_in(server, namespace)) == held + 1, "the stalled lease call ran")


def test_a_lease_call_stopped_in_its_give_back_of_doubted_tokens_leaves_no_lease(
    server: RedisServer, namespace: str
) -> None:
    tier = RedisTier(redis.Redis.from_url(server.url, socket_timeout=0.3), namespace=namespace)
    cache = TieredCache(
        [MemoryTier(), tier], protection=Protection.never_stale(lease_ttl=60.0, lease_wait=0.3)
    )
    assert cache.get("warm", lambda: "up") == "up"  # connected, scripts loaded
    doubted_lease(tier, server, namespace, "d")
    code: Any = TierCommands._give_back_doubted.__code__
    with interrupting() as interrupt:
        sys.settrace(interrupt_once(code, tokens_taken_out, interrupt))
        try:
            with pytest.raises(Interrupted):
                cache.get("k", lambda: "v")  # its lease call answered, then the give-back
        finally:
            sys.settrace(None)
    assert cache.get("j", lambda: "v") == "v"  # a lease call Redis answers
    assert leases_in(server, namespace) == []
    assert cache.stats()["lease_waits"] == 0
    cache.close()


class CutAtPipeline(redis.Redis):
    """A client that cuts ``proxy`` (every connection closed, none taken) as its
    ``cut_at``-th pipeline from now is made: that call fails without reaching Redis."""

    proxy: FaultProxy
    cut_at = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        self.cut_at -= 1
        if self.cut_at == 0:
            self.proxy.cut()
        return super().pipeline(transaction, shard_hint)


def test_a_give_back_of_doubted_tokens_that_fails_part_way_keeps_the_rest(
    server: RedisServer, namespace: str
) -> None:
    """The tokens of lease calls that timed out, more than one call's worth
    (``keys_per_call``), are given back in several; one that failed after another was
    answered was counted given back with the rest (its failure kept in its place, as a
    batch's): its leases held until ``lease_ttl``. Seen failing: ``assert
    leases_in(server, namespace) == []`` with the failed call's two leases held."""
    with FaultProxy(server.host, server.port) as proxy:
        client = cast(CutAtPipeline, CutAtPipeline.from_url(proxy.url(), socket_timeout=0.3))
        client.proxy = proxy
        tier = RedisTier(client, namespace=namespace, keys_per_call=2)
        cache = TieredCache(
            [MemoryTier(), tier], protection=Protection.never_stale(lease_ttl=60.0, lease_wait=0.3)
        )
        assert cache.get("warm", lambda: "up") == "up"  # connected, scripts loaded
        for key in ("a", "b", "c", "d"):
            doubted_lease(tier, server, namespace, key)
        client.cut_at = 2  # the give-back's second call
        assert cache.get("k", lambda: "v") == "v"  # answered, then the give-back of four
        proxy.restore()
        assert cache.get("j", lambda: "v") == "v"  # a lease call Redis answers
        assert leases_in(server, namespace) == []
        cache.close()
