"""``asyncio.run`` ending without ``aclose()`` as its Redis tier's server stops (SIGSTOP) or
dies (SIGKILL), on clients with no socket timeout, a socket timeout alone, or both timeouts.

The loop's end gives back every lease of its loop that Redis has not seen used or given
back (test_redis_loop_end_unused_leases.py), and it must end whatever Redis does: each step
of that give-back waits ``LOOP_END_WAIT`` at most, then it goes out unanswered, to run as
Redis wakes. And a give-back under the sweep of every task at the end of ``asyncio.run`` (a
cancelled lease call's, a cancelled load's) is left to that bounded give-back: awaited in
the swept task, it held ``asyncio.run`` for as long as Redis stalled on a client with no
socket timeout.

Seen failing on main: ``assert leases_in(server, NAMESPACE) == []`` (the unused lease, every
client) and ``TimeoutError: the forked child reported nothing within 30.0 s`` (a lease call on
its way, a load holding its lease: the client with no timeout).

Real parts: a private redis-server, stopped or killed by the child as its service returns.
Run in a forked child (``asyncio.run`` is what hangs); a stopped server resumes only after
the child reported, or was killed. Waits are guards against a hang, never measures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer

from .leases_held import leases_in

# The tier's private server, stopped or killed (``server``).
from .test_redis_async_bus_close_stalled_publish import server  # noqa: F401

#: Generous: a child that has not reported by then is stuck, not slow.
STUCK = 30.0
NAMESPACE = "loop-end-leases"

#: The client's timeouts: none (a client made by hand without them), a socket timeout alone
#: (a new connection's handshake still waits without limit), both.
CLIENTS: dict[str, dict[str, float | None]] = {
    "no-timeout": {"socket_timeout": None, "socket_connect_timeout": None},
    "socket-timeout": {"socket_timeout": 0.2},
    "both-timeouts": {"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
}

Service = Callable[[AsyncRedisTier, Callable[[], None]], Coroutine[Any, Any, None]]


async def unused(tier: AsyncRedisTier, stop: Callable[[], None]) -> None:
    """The service took a lease it never used (nor gave back), then returns."""
    token, _ = await tier.acquire_lease("k", 30.0)
    assert token is not None
    stop()


async def on_its_way(tier: AsyncRedisTier, stop: Callable[[], None]) -> None:
    """A lease call on its way to the stopped server as the service returns: the sweep
    cancels it there, and Redis takes the lease as it wakes."""
    await tier.get("warm")  # the connection pooled
    stop()
    call = asyncio.create_task(tier.acquire_lease("k", 30.0))
    for _ in range(5):  # its tick's yield, then the send (a turn or two)
        await asyncio.sleep(0)
    assert tier._calls._running
    assert not call.done()


async def holding(tier: AsyncRedisTier, stop: Callable[[], None]) -> None:
    """A read of the chain holds the key's lease while its load hangs: the sweep cancels the
    read, whose load gives the lease back."""
    cache = AsyncTieredCache(
        [MemoryTier(max_entries=10), tier],
        namespace=NAMESPACE,
        protection=Protection.never_stale(lease="auto", lease_ttl=30.0, lease_wait=5.0),
    )
    loading = asyncio.Event()

    async def hangs() -> str:
        loading.set()
        await asyncio.Event().wait()
        return "never"

    asyncio.create_task(cache.get("k", hangs))  # noqa: RUF006 (the sweep cancels it)
    await loading.wait()
    stop()


SERVICES: dict[str, Service] = {"unused": unused, "on-its-way": on_its_way, "holding": holding}


def ended(private: RedisServer, client: str, service: Service, sig: signal.Signals) -> list[Any]:
    """Run ``service`` in ``asyncio.run`` in a forked child, ``sig`` sent to ``private`` as it
    returns: what the child reported (the tier's warnings about leases left), once
    ``private`` was sent SIGCONT (a stopped one resumes)."""
    pid = private.pid  # the server's process is the parent's: not known to a child
    assert pid is not None

    def body() -> list[str]:
        warnings: list[str] = []

        class Said(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.WARNING:
                    warnings.append(record.getMessage())

        logging.getLogger("tiered_cache_redis").addHandler(Said())

        def stop() -> None:
            os.kill(pid, sig)
            if sig == signal.SIGKILL:  # dead once its port refuses (SIGKILL is not instant)
                assert eventually(lambda: refuses(private), within=10.0)

        async def main() -> None:
            redis_client = aioredis.Redis(
                host=private.host,
                port=private.port,
                **CLIENTS[client],  # type: ignore[arg-type]
            )
            tier = AsyncRedisTier(redis_client, namespace=NAMESPACE)
            await service(tier, stop)

        asyncio.run(main())
        return warnings

    try:
        seen: list[Any] = in_a_child(body, timeout=STUCK)
    finally:
        os.kill(pid, signal.SIGCONT)
    return seen


def refuses(private: RedisServer) -> bool:
    """Whether ``private``'s port refuses a connection."""
    try:
        socket.create_connection((private.host, private.port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("name", list(SERVICES))
def test_the_loops_end_with_redis_stopped_ends_and_leaves_no_lease_once_it_resumes(
    server: RedisServer,  # noqa: F811 (the fixture imported above)
    client: str,
    name: str,
) -> None:
    ended(server, client, SERVICES[name], signal.SIGSTOP)
    # The give-back went out unanswered: it runs as Redis wakes, after the calls it undoes.
    eventually(lambda: leases_in(server, NAMESPACE) == [], within=10.0)
    assert leases_in(server, NAMESPACE) == []


@pytest.mark.parametrize("client", list(CLIENTS))
def test_the_loops_end_with_redis_killed_ends_and_says_the_lease_may_hold(
    server: RedisServer,  # noqa: F811 (the fixture imported above)
    client: str,
) -> None:
    """The server dies as the service returns: the give-back cannot go out (refused), the
    loop's end still ends, and the tier says the lease may hold (a server restarted from
    its disk would have kept it)."""
    try:
        warnings = ended(server, client, unused, signal.SIGKILL)
    finally:
        server.kill()  # reaped
    assert [w for w in warnings if "may hold until lease_ttl" in w] != []
