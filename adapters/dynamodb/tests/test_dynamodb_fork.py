"""The asyncio DynamoDB source in a forked child (multiprocessing's fork start from a service
that used it on a loop, a prefork server whose parent warmed it up).

An aiobotocore client belongs to the loop it was made on, and its connection pool holds the
parent's sockets: in the child, on a loop of its own, every request failed ("a Future
attached to a different loop"), so the child could load nothing, for good.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from tiered_cache_dynamodb import AsyncDynamoDBSource, DynamoDBSourceSettings
from tiered_cache_dynamodb.async_source import connect_client
from tiered_cache_dynamodb.testing import HeldClose, MotoDynamoDB, seed_items

from tiered_cache import AsyncTieredCache, MemoryTier, SourceError
from tiered_cache.testing.async_conformance import LoopThread
from tiered_cache.testing.forked import (
    in_a_child,
    messages_of,
    refusals,
    reports_between,
    sockets_to,
)
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import FaultProxy

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 30.0


def test_a_forked_child_loads_on_a_client_of_its_own(
    moto_server: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table()
    keys = [f"k{i}" for i in range(10)]
    seed_items(admin_client, table, keys)
    source = AsyncDynamoDBSource.from_settings(moto_server.settings(table=table, key="id"))
    cache = AsyncTieredCache([MemoryTier(max_entries=100)], source, ttl=60)
    loop = LoopThread()
    assert loop.run(cache.get("k0"))["n"] == 0  # the parent's client, on the parent's loop

    async def main() -> list[Any]:
        seen: list[Any] = []
        for key in keys[1:4]:
            try:
                seen.append(int((await cache.get(key))["n"]))
            except Exception as exc:
                seen.append(type(exc).__name__)
        try:
            many = await cache.get_many(keys[4:7])
            seen.append(sorted(int(item["n"]) for item in many.values()))
        except Exception as exc:
            seen.append(type(exc).__name__)
        await cache.aclose()
        return seen

    seen = in_a_child(lambda: asyncio.run(main()), HUNG)
    assert [loop.run(cache.get(key))["n"] for key in keys[7:]] == [7, 8, 9]  # the parent's
    assert seen == [1, 2, 3, [4, 5, 6]]
    loop.run(cache.aclose())
    loop.close()


def test_a_forked_child_refuses_the_connections_of_a_given_client(
    moto_server: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """A client given to the source (``from_settings(client=...)``) cannot be made anew in
    the child: its connections are the parent's sockets, on the parent's loop. The child's
    source refuses every call, before anything is sent, with a SourceError that says to give
    the source ``connect`` instead, and its ``aclose`` closes nothing of the parent's; the
    parent loads on its client as before."""
    table = make_table()
    keys = [f"k{i}" for i in range(10)]
    seed_items(admin_client, table, keys)
    settings = moto_server.settings(table=table, key="id")
    loop = LoopThread()
    client = loop.run(connect_client(settings))
    source = AsyncDynamoDBSource.from_settings(settings, client=client)
    assert loop.run(source.load("k0"))["n"] == 0  # the parent's client, on the parent's loop

    async def main() -> list[Any]:
        item = {"id": "k1", "n": 1}
        calls = [source.load("k1"), source.load_many(keys[2:4]), source.store("k1", item)]
        seen = await refusals(calls, SourceError, "connect=")
        await source.aclose()
        return seen

    seen = in_a_child(lambda: asyncio.run(main()), HUNG)
    assert [loop.run(source.load(key))["n"] for key in keys[7:]] == [7, 8, 9]  # the parent's
    assert seen == [True, True, True]
    loop.run(source.aclose())
    loop.run(client.close())
    loop.close()


@pytest.mark.parametrize("in_flight", [0, 2])
def test_a_forked_child_closes_its_copies_of_the_parents_connections(
    kept_alive: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str], in_flight: int
) -> None:
    """The child's copies of the parent's connections -- idle in the client's pool, or in use
    by parent coroutines at the fork (their requests held by the proxy) -- are closed as the
    child starts, nothing written on them; the child loads on a connection of its own, and
    the parent's requests go on to their answers."""
    host, _, port = kept_alive.endpoint_url.removeprefix("http://").partition(":")
    table = make_table()
    keys = [f"k{i}" for i in range(5)]
    seed_items(admin_client, table, keys)
    with FaultProxy(host, int(port)) as proxy:
        settings = kept_alive.settings(
            table=table, key="id", endpoint_url=proxy.url("http", ""), read_timeout=HUNG
        )
        source = AsyncDynamoDBSource.from_settings(settings)
        loop = LoopThread()
        assert loop.run(source.load("k0"))["n"] == 0
        assert proxy.connections == 1  # the parent's, kept alive
        proxy.delay(HUNG)
        held = [
            asyncio.run_coroutine_threadsafe(source.load(key), loop.loop)
            for key in keys[1 : 1 + in_flight]
        ]
        until(lambda: proxy.holding == in_flight, "the parent coroutines' requests")

        async def load_in_the_child() -> list[int]:
            item = await source.load("k4")
            return [int(item["n"]), sockets_to(proxy.port)]

        (at_start, after_a_load), status = reports_between(
            [lambda: sockets_to(proxy.port), lambda: asyncio.run(load_in_the_child())],
            [proxy.restore],  # the proxy forwards again
            HUNG,
        )
        answered = [int(future.result(HUNG)["n"]) for future in held]
        assert [at_start, after_a_load, status] == [0, [4, 1], 0]
        assert answered == list(range(1, 1 + in_flight))  # on the parent's connections
        assert loop.run(source.load("k0"))["n"] == 0
        loop.run(source.aclose())
        loop.close()


def forked_while_a_parent_coroutine_loads(
    source: AsyncDynamoDBSource,
    port: int,
    inside: Callable[[], bool],
    what: str,
    *,
    between: Callable[[], None],
) -> list[Any]:
    """Fork once a parent coroutine loading ``k0`` on a loop of the parent is ``inside`` its
    request (a fault holds it there, ``what``); the child counts its sockets to ``port`` at
    its start and after it loaded ``k1`` on a loop of its own, ``between`` (the fault undone)
    called meanwhile. Returns those, the child's exit code, the parent coroutine's load and
    the parent's load of ``k2`` after it (the source closed then)."""
    loop = LoopThread()
    held = asyncio.run_coroutine_threadsafe(source.load("k0"), loop.loop)
    until(inside, what)

    async def load_in_the_child() -> list[int]:
        item = await source.load("k1")
        return [int(item["n"]), sockets_to(port)]

    (at_start, after_a_load), status = reports_between(
        [lambda: sockets_to(port), lambda: asyncio.run(load_in_the_child())], [between], HUNG
    )
    parents = [int(held.result(HUNG)["n"]), int(loop.run(source.load("k2"))["n"])]
    loop.run(source.aclose())
    loop.close()
    return [at_start, after_a_load, status, *parents]


def test_a_forked_child_closes_its_copy_of_a_connection_a_parent_coroutine_was_opening(
    kept_alive: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """A parent coroutine in its connect at the fork (the proxy stalls it: its SYN
    unanswered) has made its socket, which aiohttp's connector holds no protocol of yet (a
    placeholder): the child closes its copy too, and loads on a connection of its own; the
    parent's load goes on once the proxy takes connections again."""
    host, _, port = kept_alive.endpoint_url.removeprefix("http://").partition(":")
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    with FaultProxy(host, int(port)) as proxy:
        settings = kept_alive.settings(
            table=table,
            key="id",
            endpoint_url=proxy.url("http", ""),
            read_timeout=HUNG,
            connect_timeout=HUNG,
        )
        source = AsyncDynamoDBSource.from_settings(settings)
        proxy.stall()
        seen = forked_while_a_parent_coroutine_loads(
            source,
            proxy.port,
            lambda: proxy.connecting == 1,
            "the parent coroutine's connect",
            between=proxy.restore,
        )
        # The parent's loads on its connection.
        assert seen == [0, [1, 1], 0, 0, 2]


def test_a_forked_child_closes_its_copy_of_a_connection_a_parent_coroutine_was_opening_over_tls(
    over_tls: MotoDynamoDB, tls_settings: DynamoDBSourceSettings
) -> None:
    """Over HTTPS, a parent coroutine in its TLS handshake at the fork (the front holds its
    ``ClientHello`` unanswered): asyncio runs the handshake on the loop over the socket the
    connector made (noted then), with aiohttp's placeholder in ``_acquired``; the child
    closes its copy of that socket and loads on a client of its own; the parent's load goes
    on once the front answers."""
    front = over_tls.front
    source = AsyncDynamoDBSource.from_settings(tls_settings)
    front.hold_handshakes()
    seen = forked_while_a_parent_coroutine_loads(
        source,
        front.port,
        lambda: front.holding == 1,
        "the parent coroutine's handshake",
        between=front.restore,
    )
    assert seen == [0, [1, 1], 0, 0, 2]


def test_a_fork_waits_for_a_socket_a_parent_coroutine_is_making(
    kept_alive: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """A socket made that no object of the connector's holds yet (here the client's own
    ``socket_factory`` takes its time; so does the loop's thread that made a socket and
    waits for the GIL again before its object holds the descriptor): the fork waits for it
    to be noted, and the child closes its copy of the descriptor."""
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1"])
    made: list[tuple[int, int]] = []  # the descriptor and its inode
    making = threading.Event()
    go_on = threading.Event()

    def slow_factory(address: Any) -> socket.socket:
        family, kind, proto, _, _ = address
        sock = socket.socket(family=family, type=kind, proto=proto)
        made.append((sock.fileno(), os.fstat(sock.fileno()).st_ino))
        if len(made) == 1:  # the parent's first: the loop's thread held here
            making.set()
            go_on.wait(HUNG)
        return sock

    async def connect() -> Any:
        config = AioConfig(connector_args={"socket_factory": slow_factory})
        options = kept_alive.client_kwargs()
        return await AioSession().create_client("dynamodb", config=config, **options).__aenter__()

    source = AsyncDynamoDBSource(
        None, table, "id", connect=connect, owns_client=True, region=kept_alive.region
    )
    loop = LoopThread()
    held = asyncio.run_coroutine_threadsafe(source.load("k0"), loop.loop)
    assert making.wait(HUNG)
    # Let the factory return while the fork waits (a fork that does not wait forks first).
    threading.Timer(0.2, go_on.set).start()

    def still_open() -> bool:
        descriptor, inode = made[0]
        try:
            return os.fstat(descriptor).st_ino == inode
        except OSError:  # closed
            return False

    async def load_in_the_child() -> int:
        return int((await source.load("k1"))["n"])

    (at_start, loaded), status = reports_between(
        [still_open, lambda: asyncio.run(load_in_the_child())], [lambda: None], HUNG
    )
    assert [at_start, loaded, status] == [False, 1, 0]
    assert int(held.result(HUNG)["n"]) == 0  # the parent's, on that socket
    loop.run(source.aclose())
    loop.close()


def connect_with_held_closes(
    held: HeldClose, server: MotoDynamoDB, proxy: FaultProxy, *, warm_up: str | None = None
) -> Callable[[], Awaitable[Any]]:
    """A ``connect`` whose client reaches ``server`` through ``proxy`` on sockets of
    ``held``'s class; with ``warm_up``, it reads that table's description before it gives
    the client back (a caller's warm-up)."""

    def held_factory(address: Any) -> socket.socket:
        family, kind, proto, _, _ = address
        return held.socket_class(socket.socket)(family=family, type=kind, proto=proto)

    async def connect() -> Any:
        config = AioConfig(connector_args={"socket_factory": held_factory})
        options = {**server.client_kwargs(), "endpoint_url": proxy.url("http", "")}
        made = await AioSession().create_client("dynamodb", config=config, **options).__aenter__()
        if warm_up is not None:
            await made.describe_table(TableName=warm_up)
        return made

    return connect


def source_with_held_closes(
    held: HeldClose, server: MotoDynamoDB, proxy: FaultProxy, table: str, *, warm_up: bool
) -> AsyncDynamoDBSource:
    """A source of ``table`` that makes its client with :func:`connect_with_held_closes`."""
    return AsyncDynamoDBSource(
        None,
        table,
        "id",
        connect=connect_with_held_closes(held, server, proxy, warm_up=table if warm_up else None),
        owns_client=True,
        region=server.region,
    )


def forked_while_a_close_is_held(
    held: HeldClose, source: AsyncDynamoDBSource, port: int, between: Callable[[], None]
) -> list[Any]:
    """Fork once ``held`` holds a close, let go of 0.2 s later (while a fork that waits for
    it waits; one that does not forks first); the child counts its sockets to ``port`` at its
    start, then loads ``k2`` on a loop of its own, ``between`` called meanwhile. Returns
    those and the child's exit code."""
    assert held.holding.wait(HUNG)
    threading.Timer(0.2, held.go_on.set).start()

    async def load_in_the_child() -> int:
        return int((await source.load("k2"))["n"])

    (at_start, loaded), status = reports_between(
        [lambda: sockets_to(port), lambda: asyncio.run(load_in_the_child())], [between], HUNG
    )
    return [at_start, loaded, status]


def test_a_fork_waits_for_a_socket_the_parents_loop_is_closing(
    moto_server: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """CPython's ``socket.close()`` lets go of the descriptor (``fileno()`` -1) before it
    closes it without the GIL: a fork then copied a descriptor no object held, which the
    child could not find, and kept open. Here the parent's loop closing a connection its
    reply closed (moto's own server answers ``Connection: close``) has that close held at
    that point: the fork waits for it, and the child has no copy; it loads on a client of its
    own."""
    host, _, port = moto_server.endpoint_url.removeprefix("http://").partition(":")
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    held = HeldClose(HUNG)
    with FaultProxy(host, int(port)) as proxy:
        source = source_with_held_closes(held, moto_server, proxy, table, warm_up=False)
        loop = LoopThread()
        assert loop.run(source.load("k0"))["n"] == 0  # the table checked: one request from here
        held.armed.set()
        loading = asyncio.run_coroutine_threadsafe(source.load("k1"), loop.loop)
        assert forked_while_a_close_is_held(held, source, proxy.port, lambda: None) == [0, 2, 0]
        assert int(loading.result(HUNG)["n"]) == 1
        loop.run(source.aclose())
        loop.close()


def test_a_fork_waits_for_the_close_of_a_socket_made_before_the_watch(
    kept_alive: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """A ``connect`` of the caller's that sends before it gives the client back (a warm-up
    read) leaves a connection kept alive in the client's connector, made before the source
    watched the client: found at a fork, but its close was not waited for. Here the proxy
    closes that connection (a FIN: a reset would take the socket out of /proc's table, and
    the child's copy out of the count) and the parent's loop's close of its socket is held
    where CPython's runs without the GIL: the fork waits for it, and the child has no copy;
    it loads on a client of its own."""
    host, _, port = kept_alive.endpoint_url.removeprefix("http://").partition(":")
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    held = HeldClose(HUNG)
    with FaultProxy(host, int(port)) as proxy:
        source = source_with_held_closes(held, kept_alive, proxy, table, warm_up=True)
        loop = LoopThread()
        assert loop.run(source.load("k0"))["n"] == 0  # on the warm-up's connection
        assert proxy.connections == 1
        held.armed.set()
        proxy.cut()  # the parent's loop closes that socket as it reads the end
        assert forked_while_a_close_is_held(held, source, proxy.port, proxy.restore) == [0, 2, 0]
        assert loop.run(source.load("k1"))["n"] == 1
        loop.run(source.aclose())
        loop.close()


def test_a_forked_child_closes_its_copy_of_a_connection_of_a_client_given_to_own(
    kept_alive: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """A client given to the source with ``connect`` and ``owns_client`` is made anew in a
    child, as one the source made; its connections were made before any watch (none
    started: the source watched the clients it made alone), and the child kept its copy of
    each. The watch starts as the source is given it: the child closes its copy of the
    connection kept alive, and loads on a client of its own."""
    host, _, port = kept_alive.endpoint_url.removeprefix("http://").partition(":")
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    with FaultProxy(host, int(port)) as proxy:
        settings = kept_alive.settings(table=table, key="id", endpoint_url=proxy.url("http", ""))
        loop = LoopThread()
        client = loop.run(connect_client(settings))
        source = AsyncDynamoDBSource(
            client,
            table,
            "id",
            connect=lambda: connect_client(settings),
            owns_client=True,
        )
        assert loop.run(source.load("k0"))["n"] == 0
        assert sockets_to(proxy.port) == 1  # the parent's, kept alive

        async def load_in_the_child() -> list[int]:
            return [int((await source.load("k1"))["n"]), sockets_to(proxy.port)]

        (at_start, after_a_load), status = reports_between(
            [lambda: sockets_to(proxy.port), lambda: asyncio.run(load_in_the_child())],
            [lambda: None],
            HUNG,
        )
        assert [at_start, after_a_load, status] == [0, [1, 1], 0]
        assert loop.run(source.load("k2"))["n"] == 2  # on the parent's connection
        loop.run(source.aclose())
        loop.close()


def test_a_forked_child_that_cannot_read_the_connectors_warns_and_closes_nothing(
    kept_alive: MotoDynamoDB,
    admin_client: Any,
    make_table: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where aiobotocore or aiohttp keep a client's connections otherwise than ``aio_pools``
    reads them (another version), the child closes none of its copies of the parent's: it
    says so in one warning, its copy of the kept-alive connection stays open, and it loads on
    a client of its own; the parent goes on on its connection."""
    host, _, port = kept_alive.endpoint_url.removeprefix("http://").partition(":")
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    with FaultProxy(host, int(port)) as proxy:
        settings = kept_alive.settings(table=table, key="id", endpoint_url=proxy.url("http", ""))
        source = AsyncDynamoDBSource.from_settings(settings)
        loop = LoopThread()
        assert loop.run(source.load("k0"))["n"] == 0  # its connection kept alive
        caplog.set_level(logging.WARNING, logger="tiered_cache.source")
        # The HTTP session's aiohttp sessions gone for the fork (nothing in flight meanwhile).
        client = loop.run(source.get_client())
        monkeypatch.delattr(client._endpoint.http_session, "_sessions")

        async def load_in_the_child() -> list[int]:
            item = await source.load("k1")
            return [int(item["n"]), sockets_to(proxy.port)]

        (at_start, after_a_load), status = reports_between(
            [
                lambda: [
                    sockets_to(proxy.port),
                    messages_of(caplog.records, "tiered_cache.source"),
                ],
                lambda: asyncio.run(load_in_the_child()),
            ],
            [monkeypatch.undo],  # the parent's session as it was
            HUNG,
        )
        assert [at_start, after_a_load, status] == [
            [
                1,
                [
                    "a forked child could not close the parent's DynamoDB connections "
                    "('AIOHTTPSession' object has no attribute '_sessions'); their copies "
                    "stay open in the child"
                ],
            ],
            [1, 2],
            0,
        ]
        assert loop.run(source.load("k2"))["n"] == 2
        assert sockets_to(proxy.port) == 1  # the parent's, the same
        loop.run(source.aclose())
        loop.close()
