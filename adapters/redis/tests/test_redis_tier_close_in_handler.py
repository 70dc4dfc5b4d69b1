"""``RedisTier.close()`` called by hand from a signal handler (a worker's SIGTERM handler; a
chain's close runs on a thread of its own) that lands in a call of the same tier on the main
thread, Redis stalled under the call (SIGSTOP) and the client without a socket timeout.

The call cannot end before the handler returns: the close leaves closing the client to it, as
the bus's close does (:meth:`CallsInFlight.close`'s ``then``); closed under the call, the
client's pool disconnected its connection, the call's retry reconnected, and the closed pool
kept that connection open, nobody to close it. And a close landing while the ``client``
property makes the tier's client (its first ``connect()``, under the tier's lock) neither
waits for that lock for ever nor leaves the client made meanwhile open.

Each test stops (or runs) its own server, its connections counted on it (``CLIENT LIST``).
Waits are guards against a hang, never measures.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING

from .handler_close import closed_by_a_handler
from .server_connections import opened_since


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: stopped, and its CLIENT LIST this tier's alone
        yield private


def test_a_close_in_a_handler_during_a_call_of_its_thread_leaves_no_connection(
    server: RedisServer,
) -> None:
    watch = redis.Redis(host=server.host, port=server.port)
    before = {int(client["id"]) for client in watch.client_list()}
    client = redis.Redis(
        host=server.host, port=server.port, socket_timeout=None, socket_connect_timeout=None
    )
    tier = RedisTier(client, namespace="handler")
    assert tier.get("warm") is MISSING  # a connection in the pool
    with closed_by_a_handler(
        tier.close, lambda main: main in tier._calls._running, server
    ) as closed:
        try:
            outcome: Any = tier.get("k")
        except Exception as exc:
            outcome = type(exc).__name__
    assert [closed.is_set(), outcome] == [True, MISSING]
    # The client closed by the call as it ended: nothing of the tier left open.
    assert eventually(lambda: opened_since(watch, before) == [], 5), opened_since(watch, before)
    with pytest.raises(RuntimeError, match="is closed"):
        tier.get("later")
    watch.close()


def test_a_close_in_a_handler_during_the_first_connect_neither_hangs_nor_leaves_it_open(
    server: RedisServer,
) -> None:
    """The handler lands in ``connect()`` (made under the tier's lock by the ``client``
    property, outside any call: asked by ``can_lease``, before a write's first call). Run in
    a forked child: a hang is a report missing."""

    def body() -> list[Any]:
        made: list[redis.Redis] = []
        seen: list[Any] = []

        def connect() -> redis.Redis:
            made.append(redis.Redis(host=server.host, port=server.port))
            made[0].ping()  # a connection of its own, open
            signal.raise_signal(signal.SIGUSR1)  # the handler lands here, under the lock
            return made[0]

        tier = RedisTier(connect=connect, namespace="connect")

        def handler(signum: int, frame: object) -> None:
            tier.close()
            seen.append("handler closed")

        signal.signal(signal.SIGUSR1, handler)
        try:
            seen.append(("can_lease", tier.can_lease("k")))
        except RuntimeError as exc:
            seen.append(("can_lease", str(exc)))
        pool = made[0].connection_pool
        connections = [*pool._available_connections, *pool._in_use_connections]
        seen.append(("connections open", sum(1 for c in connections if c._sock)))
        return seen

    seen = in_a_child(body, timeout=20)
    assert seen == [
        "handler closed",
        ["can_lease", "tier 'redis' is closed"],
        ["connections open", 0],
    ]


#: The ``client`` property's code, traced: the handler lands at each line a first use runs.
CLIENT = RedisTier.client.fget.__code__  # type: ignore[attr-defined]


def _client_lines_run(server: RedisServer) -> list[int]:
    """The lines of the ``client`` property a first use (the client made) runs."""
    seen: list[int] = []

    def calls(frame: FrameType, event: str, arg: object) -> object:
        return lines if event == "call" and frame.f_code is CLIENT else None

    def lines(frame: FrameType, event: str, arg: object) -> object:
        if event == "line":
            seen.append(frame.f_lineno)
        return lines

    tier = RedisTier(connect=lambda: redis.Redis(host=server.host, port=server.port))
    sys.settrace(calls)
    try:
        tier.client  # noqa: B018 -- the first use, traced
    finally:
        sys.settrace(None)
    tier.close()
    return sorted(set(seen))


def _closed_by_a_handler_at(line: int, server: RedisServer) -> list[Any]:
    """A first use of ``client`` with a handler's ``close()`` landing at ``line``: what the
    property gave (``"a client"``, or the text of its ``RuntimeError``), the connections of
    the clients made left open, and whether the closed tier let go of its client."""
    made: list[redis.Redis] = []

    def connect() -> redis.Redis:
        made.append(redis.Redis(host=server.host, port=server.port))
        made[-1].ping()  # a connection of its own, open
        return made[-1]

    tier = RedisTier(connect=connect, namespace="first-connect")

    def handler(signum: int, frame: object) -> None:
        tier.close()

    def calls(frame: FrameType, event: str, arg: object) -> object:
        return lines if event == "call" and frame.f_code is CLIENT else None

    def lines(frame: FrameType, event: str, arg: object) -> object:
        if event == "line" and frame.f_lineno == line:
            sys.settrace(None)
            frame.f_trace = None
            signal.raise_signal(signal.SIGUSR1)  # the handler runs here, before the line
        return lines

    previous = signal.signal(signal.SIGUSR1, handler)
    sys.settrace(calls)
    try:
        got: Any = tier.client
        outcome: Any = "a client" if isinstance(got, redis.Redis) else repr(got)
    except RuntimeError as exc:
        outcome = str(exc)
    finally:
        sys.settrace(None)
        signal.signal(signal.SIGUSR1, previous)
    left_open = [
        connection
        for client in made
        for connection in client.connection_pool._available_connections
        if connection._sock is not None
    ]
    return [outcome, len(left_open), tier._client is None]


def test_a_close_in_a_handler_at_any_line_of_the_first_connect_refuses_or_closes(
    redis_server: RedisServer,
) -> None:
    """A signal handler's ``close()`` landing at each line the ``client`` property runs as it
    makes the tier's client (outside any call: ``can_lease`` asks before a write's first
    call), placed by a line tracer that raises the signal there. The property returns a
    client or raises the tier's "is closed", and the client made is closed either way.

    Seen failing (keys: lines from the property's ``def``): ``{18: ['a client', 1, False],
    19: ['None', 0, True]}``: landing before ``client = self._client`` the property returned
    ``None`` (the close let go of the client in between: its caller got an
    ``AttributeError``, not the tier's error); before ``self._client = made``, the closed
    tier kept the client made, its connection open."""
    outcomes = {
        line - CLIENT.co_firstlineno: _closed_by_a_handler_at(line, redis_server)
        for line in _client_lines_run(redis_server)
    }
    wrong = {
        line: seen
        for line, seen in outcomes.items()
        if seen[0] not in ("a client", "tier 'redis' is closed") or seen[1:] != [0, True]
    }
    assert wrong == {}, outcomes
