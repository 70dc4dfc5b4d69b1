"""A chain with the Redis bus closed while its server is stopped (SIGSTOP), killed, or back,
by two threads at once, and in a forked child: every close returns, no thread of the chain's
is left, and none gave up on its listener (each state is one the close's wake reaches: a
read, a handshake or a connection on a stopped server, a pause between two attempts)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import TieredCache
from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

#: Joins of the test's own threads: a guard against a hang, never a measure.
GUARD = 30.0
#: A stall noticed within 0.4 s; the backoff's pauses up to its 2 s (the defaults).
QUICK = {"timeout": "200ms", "health_check_interval": "200ms"}


def chain_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("tiered-cache-") and t.is_alive()}


def stopped(server: RedisServer, cache: TieredCache) -> None:
    """The server stopped (SIGSTOP): the listener's reads go unanswered."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)


def stopped_and_noticed(server: RedisServer, cache: TieredCache) -> None:
    """Stopped long enough for the listener to notice: it reconnects to a server that
    accepts the connection (the kernel does) and never answers its handshake."""
    stopped(server, cache)
    until(lambda: cache.stats()["bus"] == "down", "the stall noticed")


def killed(server: RedisServer, cache: TieredCache) -> None:
    """The server gone: the listener's attempts are refused, it backs off between them."""
    server.kill()
    until(lambda: cache.stats()["bus"] == "down", "the loss noticed")


def running(server: RedisServer, cache: TieredCache) -> None:
    """The server answering: the listener reads."""


STATES: dict[str, Callable[[RedisServer, TieredCache], None]] = {
    "running": running,
    "stopped": stopped,
    "stopped, noticed": stopped_and_noticed,
    "killed": killed,
}


@pytest.mark.parametrize("state", list(STATES))
def test_two_closes_at_once_return_whatever_the_servers_state(namespace: str, state: str) -> None:
    before = chain_threads()
    with RedisServer() as server:
        cache = subscribed_chain(bus_chain_settings(server.url, namespace, bus=QUICK))
        try:
            STATES[state](server, cache)
            closers = [threading.Thread(target=cache.close, daemon=True) for _ in range(2)]
            for closer in closers:
                closer.start()
            for closer in closers:
                closer.join(GUARD)
            assert not any(closer.is_alive() for closer in closers), "a close() never returned"
        finally:
            if server.pid is not None and server.running:
                os.kill(server.pid, signal.SIGCONT)
    assert cache.stats()["bus"] == "closed"
    assert cache.stats()["bus_close_abandoned"] == 0
    assert chain_threads() - before == set()


@pytest.mark.parametrize("state", list(STATES))
def test_a_forked_child_closes_its_chain_whatever_the_servers_state(
    namespace: str, state: str
) -> None:
    """The child's bus listens on a listener of its own (restarted at the fork); its close
    returns, none of its threads left, and the parent's bus is untouched."""
    with RedisServer() as server:
        cache = subscribed_chain(bus_chain_settings(server.url, namespace, bus=QUICK))
        try:
            STATES[state](server, cache)

            def child() -> list[Any]:
                closer = threading.Thread(target=cache.close, daemon=True)
                closer.start()
                closer.join(GUARD)
                # This chain's (its bus's listener, its close): a forked child restarts
                # the parts of every chain the parent still holds (other tests' too).
                alive = sorted(
                    t.name
                    for t in chain_threads()
                    if namespace in t.name or t.name == "tiered-cache-close"
                )
                return [closer.is_alive(), alive, cache.stats()["bus_close_abandoned"]]

            assert in_a_child(child, timeout=2 * GUARD) == [False, [], 0]
        finally:
            if server.pid is not None and server.running:
                os.kill(server.pid, signal.SIGCONT)
        cache.close()
    assert cache.stats()["bus_close_abandoned"] == 0
