"""A closed (or closing) Redis tier in a forked child: its calls are refused there as in the
parent (``RuntimeError: tier ... is closed``), whatever the tier was given and whatever a
thread of the parent was doing with it at the fork."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from tiered_cache_redis import AsyncRedisTier, RedisTier, make_async_client, make_client

from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.gates import Held
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import Entry

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 15.0


def outcome(call: Callable[[], Any]) -> str:
    """``"ran"`` if ``call`` returned, else what it raised."""
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ran"


async def async_outcome(call: Any) -> str:
    try:
        await call
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ran"


def closed(name: str = "redis") -> str:
    """What a closed tier's call raises (as :func:`outcome` shows it)."""
    return f"RuntimeError: tier {name!r} is closed"


@pytest.mark.parametrize("given", [True, False], ids=["given", "connect"])
def test_a_closed_tiers_calls_are_refused_in_a_forked_child(
    redis_server: RedisServer, namespace: str, given: bool
) -> None:
    """The threaded tier's twin of the test below: refused by its count of calls, carried
    into the child closed (before, by the client it let go of)."""
    url = redis_server.url
    tier = (
        RedisTier(make_client(url, timeout=2.0), namespace=namespace)
        if given
        else RedisTier(connect=lambda: make_client(url, timeout=2.0), namespace=namespace)
    )
    tier.set("k", Entry("v", 0.0))
    tier.close()

    def child() -> list[str]:
        return [outcome(lambda: tier.get("k")), outcome(lambda: tier.set("k", Entry("c", 0.0)))]

    assert in_a_child(child, timeout=HUNG) == [closed(), closed()]


@pytest.mark.parametrize("given", [True, False], ids=["given", "connect"])
def test_a_closed_async_tiers_calls_are_refused_in_a_forked_child(
    redis_server: RedisServer, namespace: str, given: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A tier given a plain client, closed, took the client it had let go of in the close
    for a Redis Cluster client it could not empty in the child: it warned so, and refused
    the child's calls with a TierUnavailable (a skip of the tier in a chain) telling the
    user to build it with ``connect=``, not as closed."""
    url = redis_server.url
    # Named by the test: a tier of another test still alive restarts in the child too.
    name = f"redis-{namespace}"
    tier = (
        AsyncRedisTier(make_async_client(url, timeout=2.0), name=name, namespace=namespace)
        if given
        else AsyncRedisTier(
            connect=lambda: make_async_client(url, timeout=2.0), name=name, namespace=namespace
        )
    )

    async def use_and_close() -> None:
        await tier.set("k", Entry("v", 0.0))
        await tier.aclose()

    asyncio.run(use_and_close())

    async def calls() -> list[str]:
        return [
            await async_outcome(tier.get("k")),
            await async_outcome(tier.set("k", Entry("c", 0.0))),
        ]

    def child() -> list[Any]:
        seen: list[Any] = asyncio.run(calls())
        return [
            *seen,
            [record.getMessage() for record in caplog.records if name in record.getMessage()],
        ]

    caplog.clear()  # the child's copy holds what its fork logged
    assert in_a_child(child, timeout=HUNG) == [closed(name), closed(name), []]


def test_a_tier_closing_at_the_fork_refuses_the_childs_calls(
    redis_server: RedisServer, namespace: str
) -> None:
    """A thread of the parent closes the tier while another's call is running (here: making
    the client), and the process forks: the close began, and in the parent every new call is
    refused. The child's count of calls was made anew, not closing, and the child's calls
    ran (on a client the child made: ``'ran' == ...``)."""
    held = Held()

    def connect() -> redis.Redis:
        held.hold()
        return make_client(redis_server.url, timeout=2.0)

    tier = RedisTier(connect=connect, namespace=namespace)
    held.armed = True
    calling = threading.Thread(target=lambda: tier.get("k"))
    calling.start()
    closing = threading.Thread(target=tier.close)
    try:
        assert held.inside.wait(HUNG)
        closing.start()
        assert eventually(lambda: tier._calls.closing)
        assert outcome(lambda: tier.get("k")) == closed()  # in the parent

        def child() -> list[str]:
            return [outcome(lambda: tier.get("k")), outcome(lambda: tier.delete("k"))]

        assert in_a_child(child, timeout=HUNG) == [closed(), closed()]
    finally:
        held.go.set()
        calling.join(HUNG)
        if closing.ident is not None:
            closing.join(HUNG)
    assert not closing.is_alive()
