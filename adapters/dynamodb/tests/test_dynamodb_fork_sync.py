"""The boto3 DynamoDB source in a forked child (gunicorn ``--preload``, Celery prefork,
multiprocessing's fork start from a process whose chain already read the table).

botocore's connection pool (urllib3's) does not look at the pid: in a child, the connections
the parent left open to DynamoDB (kept alive, as DynamoDB keeps them) are the parent's
sockets. A child's request written on one is answered to whichever process reads first. By
hand (``moto`` kept alive, 3 children and the parent, 4 threads each, 3 s of GetItem),
4 of 596 loads failed with ``returned another key's item`` in the parent and a child; a
GetItem that reads a PutItem's empty answer would take an existing item for a missing one.
The servers here are kept alive (``MotoDynamoDB(keep_alive=True)``) behind a
:class:`FaultProxy`, which counts the connections open.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from tiered_cache_dynamodb import (
    DynamoDBSource,
    DynamoDBSourceSettings,
    make_client,
    openings,
)
from tiered_cache_dynamodb.testing import HeldClose, MotoDynamoDB, seed_items
from tiered_cache_dynamodb.tls_front import TlsFront

from tiered_cache import SourceError
from tiered_cache.testing.forked import (
    ForkedChild,
    messages_of,
    reports_between,
    sockets_to,
)
from tiered_cache.testing.interrupts import interrupt_once
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import FaultProxy

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 30.0


@pytest.fixture
def proxied(kept_alive: MotoDynamoDB) -> Iterator[tuple[MotoDynamoDB, FaultProxy]]:
    host, _, port = kept_alive.endpoint_url.removeprefix("http://").partition(":")
    with FaultProxy(host, int(port)) as proxy:
        yield kept_alive, proxy


@dataclass(frozen=True)
class Behind:
    """A table of ``k0``..``k2`` made for the test, reached through the proxy."""

    server: MotoDynamoDB
    proxy: FaultProxy
    table: str

    def settings(self, **timeouts: float) -> DynamoDBSourceSettings:
        return self.server.settings(
            table=self.table, key="id", endpoint_url=self.proxy.url("http", ""), **timeouts
        )

    def source(self) -> DynamoDBSource:
        """A source whose requests, and connects, may be held (``delay``, ``stall``) as long
        as a child may take to report."""
        return DynamoDBSource.from_settings(self.settings(read_timeout=HUNG, connect_timeout=HUNG))

    def owning(self, client: Any, settings: DynamoDBSourceSettings) -> DynamoDBSource:
        """A source given ``client`` to own, which it can make anew (``owns_client`` with
        ``connect``)."""
        return DynamoDBSource(
            client, self.table, "id", owns_client=True, connect=lambda: make_client(settings)
        )


@pytest.fixture
def behind(
    proxied: tuple[MotoDynamoDB, FaultProxy], admin_client: Any, make_table: Callable[..., str]
) -> Behind:
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    return Behind(*proxied, table)


@pytest.fixture
def behind_closing(
    moto_server: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> Iterator[Behind]:
    """:func:`behind`, on moto's own server: it closes every connection after its reply."""
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    host, _, port = moto_server.endpoint_url.removeprefix("http://").partition(":")
    with FaultProxy(host, int(port)) as proxy:
        yield Behind(moto_server, proxy, table)


def n_of(item: Any) -> int:
    """The ``n`` of a loaded item (``seed_items``' index)."""
    return int(item["n"])


def refused(seen: Any) -> bool:
    """Whether a child's load reported the refusal of the parent's client."""
    return isinstance(seen, str) and "from_settings without client=" in seen


def loads_in_a_child(source: DynamoDBSource, keys: list[str]) -> tuple[Any, Callable[[], int]]:
    """Fork; the child loads ``keys`` (GetItem each, then one BatchGetItem of them all),
    reports the ``n`` of each (or the error's text) and waits, its connections open, until
    the returned ``release`` is called (which reaps it and returns its exit code)."""
    go_on, told = os.pipe()

    def body(report: Callable[[Any], None]) -> None:
        os.close(told)
        seen: list[Any] = []
        for key in keys:
            try:
                seen.append(n_of(source.load(key)))
            except SourceError as exc:
                seen.append(str(exc))
        try:
            seen.append(sorted(int(item["n"]) for item in source.load_many(keys).values()))
        except SourceError as exc:
            seen.append(str(exc))
        report(seen)
        os.read(go_on, 1)  # the parent has counted the connections

    child = ForkedChild(body)
    os.close(go_on)

    def release() -> int:
        os.write(told, b"x")
        os.close(told)
        return child.wait()

    try:
        return child.read(timeout=HUNG), release
    except BaseException:
        child.kill()
        raise


def test_a_forked_child_loads_on_connections_of_its_own(
    proxied: tuple[MotoDynamoDB, FaultProxy], admin_client: Any, make_table: Callable[..., str]
) -> None:
    server, proxy = proxied
    table = make_table()
    keys = [f"k{i}" for i in range(8)]
    seed_items(admin_client, table, keys)
    settings = server.settings(table=table, key="id", endpoint_url=proxy.url("http", ""))
    source = DynamoDBSource.from_settings(settings)
    assert n_of(source.load("k0")) == 0
    assert proxy.connections == 1  # the parent's, kept alive in its client's pool

    seen, release = loads_in_a_child(source, keys[1:4])
    try:
        opened = proxy.connections
    finally:
        status = release()
    assert seen == [1, 2, 3, [1, 2, 3]]
    assert status == 0
    # The child wrote on a connection of its own (on the parent's, it stayed 1).
    assert opened == 2
    assert [n_of(source.load(key)) for key in keys[4:]] == [4, 5, 6, 7]  # the parent's
    source.close()


def test_a_forked_child_closes_its_copy_of_the_parents_kept_alive_connection(
    behind: Behind,
) -> None:
    """The child's copy of the parent's idle connection is closed as the child starts (the
    parent's goes on), and the child loads on a connection of its own. On 4bde99e it stayed
    open in the child for the child's life: ``assert [1, 1, 2] == [0, 1, 1]``."""
    proxy = behind.proxy
    source = DynamoDBSource.from_settings(behind.settings())
    assert n_of(source.load("k0")) == 0
    assert sockets_to(proxy.port) == 1  # the parent's, kept alive

    def body(report: Callable[[Any], None]) -> None:
        before = sockets_to(proxy.port)
        loaded = n_of(source.load("k1"))
        report([before, loaded, sockets_to(proxy.port)])

    child = ForkedChild(body)
    try:
        seen = child.read(timeout=HUNG)
    finally:
        status = child.wait()
    assert status == 0
    assert seen == [0, 1, 1]
    assert sockets_to(proxy.port) == 1
    assert n_of(source.load("k2")) == 2  # on the parent's connection, which the child left
    source.close()


def forked_while_a_parent_thread_loads(
    source: DynamoDBSource,
    proxy: FaultProxy | TlsFront,
    inside: Callable[[], bool],
    what: str,
    *,
    keys: tuple[str, str] = ("k0", "k1"),
    then: Callable[[], None] = lambda: None,
    between: Callable[[], None] | None = None,
) -> list[Any]:
    """Fork once a parent thread loading ``keys[0]`` is ``inside`` its request (a fault of
    the proxy, or of the TLS front, holds it there, ``what``) and ``then`` ran; the child
    counts its sockets to the proxy at its start and after it loaded ``keys[1]``, ``between``
    (the proxy restored) called meanwhile. Returns those, the child's exit code and the
    parent thread's load."""
    loaded: list[int] = []
    parents = threading.Thread(target=lambda: loaded.append(n_of(source.load(keys[0]))))
    parents.start()
    until(inside, what)
    then()
    (at_start, after_a_load), status = reports_between(
        [
            lambda: sockets_to(proxy.port),
            lambda: [n_of(source.load(keys[1])), sockets_to(proxy.port)],
        ],
        [between or proxy.restore],
        HUNG,
    )
    parents.join(timeout=HUNG)
    return [at_start, after_a_load, status, loaded]


def held_request(proxy: FaultProxy) -> Callable[[], bool]:
    """Whether the proxy holds a request (its thread holds its connection: ``delay``)."""
    return lambda: proxy.holding == 1


def test_a_forked_child_closes_its_copy_of_a_connection_a_parent_thread_was_using(
    behind: Behind,
) -> None:
    """A connection a parent thread was using at the fork (its request held by the proxy) is
    in no pool's queue: the child closes its copy too, and loads on a connection of its own;
    the parent's request goes on to its answer on the parent's."""
    proxy = behind.proxy
    source = behind.source()
    proxy.delay(HUNG)
    # The parent's request (the table check) is answered on its connection.
    seen = forked_while_a_parent_thread_loads(source, proxy, held_request(proxy), "a request")
    assert seen == [0, [1, 1], 0, [0]]
    assert n_of(source.load("k2")) == 2
    source.close()


def test_a_forked_child_keeps_no_copy_of_a_connection_a_parent_thread_was_opening(
    behind: Behind,
) -> None:
    """A parent thread in its connect at the fork (the proxy stalled it, then takes
    connections again: the kernel sends its SYN again a second after the first) has made its
    socket, which no connection object holds yet: the fork waits for the connection to be
    made, and the child closes its copy as any other, and loads on a connection of its own;
    the parent's load goes on."""
    proxy = behind.proxy
    source = behind.source()
    proxy.stall()
    seen = forked_while_a_parent_thread_loads(
        source,
        proxy,
        lambda: proxy.connecting == 1,
        "the parent thread's connect",
        # Its SYN is answered when sent again: it is in its connect at the fork.
        then=proxy.restore,
        between=lambda: None,
    )
    assert seen == [0, [1, 1], 0, [0]]
    assert n_of(source.load("k2")) == 2
    source.close()


def test_a_forked_child_closes_its_copy_of_a_socket_a_reply_reads_on_its_own(
    moto_server: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """moto's own server answers ``Connection: close`` (as a server recycling its
    connections does): http.client lets go of the connection once a reply's head is read
    (``sock`` None), and the reply reads its body on the socket alone. A parent thread in
    that read at the fork (the body held back by the proxy): the child closes its copy of
    that socket too, and loads on a connection of its own."""
    host, _, port = moto_server.endpoint_url.removeprefix("http://").partition(":")
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    with FaultProxy(host, int(port)) as proxy:
        settings = moto_server.settings(
            table=table, key="id", endpoint_url=proxy.url("http", ""), read_timeout=HUNG
        )
        source = DynamoDBSource.from_settings(settings)
        assert n_of(source.load("k0")) == 0  # the table checked: one request from here
        proxy.hold_bodies()
        seen = forked_while_a_parent_thread_loads(
            source, proxy, held_request(proxy), "a reply, its head read", keys=("k1", "k2")
        )
        # The child's own connection closed by its reply too.
        assert seen == [0, [2, 0], 0, [1]]
        source.close()


def test_a_forked_child_keeps_no_copy_of_a_connection_a_parent_thread_was_opening_over_tls(
    over_tls: MotoDynamoDB, tls_settings: DynamoDBSourceSettings
) -> None:
    """Over HTTPS, a parent thread in its TLS handshake at the fork (the front holds its
    ``ClientHello`` unanswered, and answers it while the fork waits): urllib3 makes the
    handshake inside the connection's ``connect``, which the fork waits for; the child closes
    its copy of the TLS socket (nothing written: no ``close_notify``) and loads on a
    connection of its own; the parent's load goes on, on its connection."""
    front = over_tls.front
    source = DynamoDBSource.from_settings(tls_settings)
    front.hold_handshakes()
    seen = forked_while_a_parent_thread_loads(
        source,
        front,
        lambda: front.holding == 1,
        "the parent thread's handshake",
        # Answered while the fork waits (a fork that does not wait forks first).
        then=threading.Timer(0.2, front.restore).start,
        between=lambda: None,
    )
    assert seen == [0, [1, 1], 0, [0]]
    assert n_of(source.load("k2")) == 2
    assert sockets_to(front.port) == 1  # the parent's, the same
    source.close()


def test_a_fork_waits_for_a_connection_being_opened_no_longer_than_its_bound(
    behind: Behind, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An opening that outlasts the fork's wait (``OPENING_WAIT``, cut to 0.1 s here; the
    proxy stalls it until the child has counted) is left: the parent says so, the child
    keeps its copy of the socket and loads on a connection of its own; the parent's load goes
    on once the proxy takes connections again."""
    proxy = behind.proxy
    source = behind.source()
    monkeypatch.setattr(openings, "OPENING_WAIT", 0.1)
    caplog.set_level(logging.WARNING, logger="tiered_cache.source")
    proxy.stall()
    seen = forked_while_a_parent_thread_loads(
        source, proxy, lambda: proxy.connecting == 1, "the parent thread's connect"
    )
    assert seen == [1, [1, 2], 0, [0]]
    assert messages_of(caplog.records, "tiered_cache.source") == [
        "a fork waited 0.1 s for the DynamoDB connections being opened or closed (1 left); "
        "the child keeps its copies of their sockets"
    ]
    source.close()


def closes_held_by(held: HeldClose, client: Any) -> None:
    """The sockets ``client``'s connections open from now on are of ``held``'s classes (set
    as each connect returns, before the source's watch sees it)."""
    classes = client._endpoint.http_session._pool_classes_by_scheme
    for scheme, pool in list(classes.items()):
        connection = pool.ConnectionCls

        class Held(connection):  # type: ignore[misc,valid-type]
            def connect(self) -> None:
                super().connect()
                self.sock.__class__ = held.socket_class(type(self.sock))

        classes[scheme] = type(pool.__name__, (pool,), {"ConnectionCls": Held})


def test_a_fork_waits_for_a_socket_a_parent_thread_is_closing(
    moto_server: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """CPython's ``socket.close()`` lets go of the descriptor (``fileno()`` -1) before it
    closes it without the GIL: a fork then copied a descriptor no object held, which the
    child could not find, and kept open for its life (the parent's connection open on the
    wire). Here a parent thread's reply that closes its connection (moto's own server answers
    ``Connection: close``) has that close held at that point: the fork waits for it, and the
    child has no copy; it loads on a connection of its own."""
    host, _, port = moto_server.endpoint_url.removeprefix("http://").partition(":")
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    held = HeldClose(HUNG)
    with FaultProxy(host, int(port)) as proxy:
        settings = moto_server.settings(table=table, key="id", endpoint_url=proxy.url("http", ""))
        client = make_client(settings)
        closes_held_by(held, client)
        source = DynamoDBSource(
            client, table, "id", owns_client=True, connect=lambda: make_client(settings)
        )
        assert n_of(source.load("k0")) == 0  # the table checked: one request from here
        held.armed.set()
        seen = forked_while_a_parent_thread_loads(
            source,
            proxy,
            held.holding.is_set,
            "the parent thread's close",
            keys=("k1", "k2"),
            # Let the close end while the fork waits (a fork that does not wait forks first).
            then=threading.Timer(0.2, held.go_on.set).start,
            between=lambda: None,
        )
        # The child's own connection closed by its reply too.
        assert seen == [0, [2, 0], 0, [1]]
        source.close()


def test_a_fork_waits_for_a_socket_collected_unclosed(behind: Behind) -> None:
    """A socket collected with its descriptor open is closed by its finalizer (C): it lets go
    of the descriptor (``fileno()`` -1), then closes it without the GIL, as ``close()`` does,
    but not through ``_real_close``, so a fork did not wait for it, copied a descriptor no
    object held, and the child kept it open. Here the client's kept-alive connection is
    taken from its pool and dropped unclosed by a parent thread, its finalizer's close held
    at that point: the fork waits for it, and the child has no copy; it loads on a
    connection of its own."""
    proxy = behind.proxy
    settings = behind.settings()
    held = HeldClose(HUNG)
    client = make_client(settings)
    closes_held_by(held, client)
    source = behind.owning(client, settings)
    assert n_of(source.load("k0")) == 0  # its connection kept alive, idle in its pool
    pool = client._endpoint.http_session._manager.connection_from_url(proxy.url("http", ""))
    dropped = [pool.pool.get(block=False)]  # the connection, unclosed (the queue is LIFO)
    held.armed.set()
    dropper = threading.Thread(target=dropped.clear)  # its last reference: collected there
    dropper.start()
    assert held.holding.wait(HUNG)
    # Let the close end while the fork waits (a fork that does not wait forks first).
    threading.Timer(0.2, held.go_on.set).start()
    seen, status = reports_between(
        [lambda: sockets_to(proxy.port), lambda: [n_of(source.load("k1")), sockets_to(proxy.port)]],
        [lambda: None],
        HUNG,
    )
    dropper.join(HUNG)
    assert [seen, status] == [[0, [1, 1]], 0]
    assert n_of(source.load("k2")) == 2  # on a connection of its own
    source.close()


def given_while_a_callers_request_is_held(
    behind: Behind,
) -> tuple[DynamoDBSource, Callable[[], list[str]]]:
    """A client the source owns and can make anew, given while a thread of the caller is
    inside a request on it (a GetItem of ``k0``, held by the proxy until it is restored):
    that connection is in no pool's queue as the watch starts. Returns the source, and what
    waits for the caller's answer."""
    proxy = behind.proxy
    settings = behind.settings(read_timeout=HUNG)
    client = make_client(settings)
    proxy.delay(HUNG)
    answered: list[str] = []
    callers = threading.Thread(
        target=lambda: answered.append(
            client.get_item(TableName=behind.table, Key={"id": {"S": "k0"}})["Item"]["n"]["N"]
        )
    )
    callers.start()
    until(held_request(proxy), "the caller's request")

    def answer() -> list[str]:
        callers.join(timeout=HUNG)
        return answered

    return behind.owning(client, settings), answer


def test_a_forked_child_closes_its_copy_of_a_connection_a_thread_held_as_the_watch_started(
    behind: Behind,
) -> None:
    """Put back in its pool, kept alive, the caller's connection is noted: a child forked
    after that closes its copy, and loads on a connection of its own."""
    proxy = behind.proxy
    source, answer = given_while_a_callers_request_is_held(behind)
    proxy.restore()
    assert answer() == ["0"]
    assert sockets_to(proxy.port) == 1  # the caller's connection, idle in its pool now
    seen, status = reports_between(
        [lambda: sockets_to(proxy.port), lambda: [n_of(source.load("k1")), sockets_to(proxy.port)]],
        [lambda: None],
        HUNG,
    )
    assert [seen, status] == [[0, [1, 1]], 0]
    assert n_of(source.load("k2")) == 2  # on the caller's connection, which the child left
    source.close()


def test_a_forked_child_closes_its_copy_of_a_connection_a_thread_is_using_since_the_watch_started(
    behind: Behind,
) -> None:
    """Forked while the caller's request is still held: that connection was in no pool's
    queue, nor noted yet (it was as it was put back), and the child kept its copy of the
    socket (open on the wire for the child's life, after the parent closed it). The watch
    finds it on the caller's thread as it starts: the child closes its copy, and loads on a
    connection of its own; the caller's request goes on to its answer."""
    proxy = behind.proxy
    source, answer = given_while_a_callers_request_is_held(behind)
    seen, status = reports_between(
        [lambda: sockets_to(proxy.port), lambda: [n_of(source.load("k1")), sockets_to(proxy.port)]],
        [proxy.restore],
        HUNG,
    )
    assert [seen, status, answer()] == [[0, [1, 1]], 0, ["0"]]
    assert n_of(source.load("k2")) == 2  # on the caller's connection, which the child left
    assert sockets_to(proxy.port) == 1
    source.close()


def test_a_forked_child_closes_its_copy_of_a_connection_of_a_pool_made_before_the_source(
    behind: Behind,
) -> None:
    """A client the source owns and can make anew (``owns_client`` with ``connect``) that sent
    before the source was given it has its pool already, and the connection kept alive in
    it: taken by a parent thread, in use at the fork, the child closes its copy too."""
    proxy = behind.proxy
    settings = behind.settings(read_timeout=HUNG)
    client = make_client(settings)
    client.describe_table(TableName=behind.table)  # its pool made, its connection kept alive
    source = behind.owning(client, settings)
    proxy.delay(HUNG)
    # The parent thread's request (the table check) on that kept-alive connection.
    seen = forked_while_a_parent_thread_loads(source, proxy, held_request(proxy), "a request")
    assert seen == [0, [1, 1], 0, [0]]
    assert sockets_to(proxy.port) == 1  # the parent's, still the one made before the source
    assert n_of(source.load("k2")) == 2
    source.close()


def test_a_forked_child_closes_its_copy_of_a_connection_of_a_pool_made_before_the_source_reopened(
    behind_closing: Behind,
) -> None:
    """The same pool, of a server that closes every connection after its reply (moto's own):
    its connection is idle in the queue without a socket, and the next request opens one
    on it. That connection was made before the watch, with the pool's own connection class:
    its socket was not noted, and the child of a fork while a parent thread's request was
    held on it kept its copy. The watch gives it the noting class as it starts."""
    proxy = behind_closing.proxy
    settings = behind_closing.settings(read_timeout=HUNG)
    client = make_client(settings)
    client.describe_table(TableName=behind_closing.table)  # its pool made; its connection closed
    source = behind_closing.owning(client, settings)
    proxy.delay(HUNG)
    # The parent thread's request (the table check) opens that connection again.
    seen = forked_while_a_parent_thread_loads(source, proxy, held_request(proxy), "a request")
    assert seen == [0, [1, 0], 0, [0]]  # each connection closed by its reply
    source.close()


class Dropped:
    """An object of a caller's thread, let go of by it (weakly referred to by the test)."""


def test_the_watch_keeps_nothing_a_callers_thread_let_go_of_alive(behind: Behind) -> None:
    """The watch reads the threads' stacks as it starts (for the connections they hold) when
    the client given sent before: it read every frame's locals, and a frame's locals read
    stay in its ``f_locals`` dict (CPython 3.11) until the frame ends. What a caller's thread
    held then (in a loop of its life, say) and let go of after was kept alive: an object
    whose finalizer closes a socket, a reply's buffer. Only the pools' and replies' own
    frames, which end with their request, are read."""
    settings = behind.settings(read_timeout=HUNG)
    client = make_client(settings)
    client.describe_table(TableName=behind.table)  # its pool made: the stacks are read
    kept: list[weakref.ref[Dropped]] = []
    given, dropped, done = threading.Event(), threading.Event(), threading.Event()

    def callers_loop() -> None:
        held: Dropped | None = Dropped()
        kept.append(weakref.ref(held))
        given.wait(HUNG)
        held = None  # let go of, the frame going on
        dropped.set()
        done.wait(HUNG)

    caller = threading.Thread(target=callers_loop)
    caller.start()
    until(lambda: kept != [], "the caller's object")
    source = behind.owning(client, settings)
    given.set()
    dropped.wait(HUNG)
    gc.collect()
    try:
        assert kept[0]() is None
    finally:
        done.set()
        caller.join(HUNG)
        source.close()


@pytest.mark.usefixtures("layout_unsaid")
def test_a_forked_child_of_a_client_laid_out_otherwise_warns_and_closes_nothing(
    behind: Behind, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where botocore or urllib3 keep a client's connections otherwise than ``pools`` reads
    them (another version), its sockets are not watched (the watch says so as it starts),
    and the child closes none of its copies of the parent's: it says so in one warning, its
    copy of the kept-alive connection stays open, and it loads on a client of its own; the
    parent goes on on its connection."""
    proxy = behind.proxy
    settings = behind.settings()
    client = make_client(settings)
    # The classes the session makes its pools of, gone before the source watches it (only
    # a proxy's pool manager reads them after the session is made).
    monkeypatch.delattr(client._endpoint.http_session, "_pool_classes_by_scheme")
    source = behind.owning(client, settings)
    assert n_of(source.load("k0")) == 0  # its connection kept alive
    caplog.set_level(logging.WARNING, logger="tiered_cache.source")
    (at_start, after_a_load), status = reports_between(
        [
            lambda: [sockets_to(proxy.port), messages_of(caplog.records, "tiered_cache.source")],
            lambda: [n_of(source.load("k1")), sockets_to(proxy.port)],
        ],
        [lambda: None],
        HUNG,
    )
    assert [at_start, after_a_load, status] == [
        [
            1,
            [
                "the installed botocore and urllib3 lay a client's connections out otherwise "
                "than this adapter reads them ('URLLib3Session' object has no attribute "
                "'_pool_classes_by_scheme'): the sockets of connections it does not see stay "
                "open in a forked child",
                "a forked child could not close the parent's DynamoDB connections "
                "('URLLib3Session' object has no attribute '_pool_classes_by_scheme'); their "
                "copies stay open in the child",
            ],
        ],
        [1, 2],
        0,
    ]
    assert n_of(source.load("k2")) == 2
    assert sockets_to(proxy.port) == 1  # the parent's, the same
    source.close()


def test_a_given_client_laid_out_otherwise_is_taken_as_having_sent(
    kept_alive: MotoDynamoDB,
    admin_client: Any,
    make_table: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether a given client sent before the source had it is read from its pools; where
    they are laid out otherwise (another botocore), it is taken as sent: the child's source
    refuses the client, though it never sent, rather than risk sharing a socket."""
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    client = kept_alive.client()
    monkeypatch.delattr(client._endpoint.http_session, "_proxy_managers")
    given = DynamoDBSource.from_settings(kept_alive.settings(table=table, key="id"), client=client)

    seen, release = loads_in_a_child(given, ["k1"])
    assert release() == 0
    assert [refused(text) for text in seen] == [True, True]
    assert n_of(given.load("k0")) == 0  # the parent's (it needs no proxy manager)
    monkeypatch.undo()
    given.close()
    client.close()


def test_a_client_a_forked_child_made_anew_is_watched_for_the_next_fork(
    behind: Behind,
) -> None:
    """The child's source makes its client anew, and notes its connections as the parent's
    did: forked again while a thread of the child is inside a request (held by the proxy),
    the grandchild closes its copy of that connection too."""
    proxy = behind.proxy
    source = behind.source()
    assert n_of(source.load("k0")) == 0
    loaded: list[int] = []  # the child's thread's (in the child)
    thread = threading.Thread(target=lambda: loaded.append(n_of(source.load("k2"))))

    def a_grandchilds_sockets() -> Any:
        grandchild = ForkedChild(lambda tell: tell(sockets_to(proxy.port)))
        seen = grandchild.read(timeout=HUNG)
        grandchild.wait()
        return seen

    def the_threads_load() -> list[int]:
        thread.join(timeout=HUNG)
        return loaded

    reports, status = reports_between(
        [
            lambda: n_of(source.load("k1")),  # on the child's client, kept alive
            thread.start,  # the proxy holds what it is sent
            a_grandchilds_sockets,  # the thread's request held
            the_threads_load,
        ],
        [
            lambda: proxy.delay(HUNG),
            lambda: until(lambda: proxy.holding == 1, "the child thread's request"),
            proxy.restore,
        ],
        HUNG,
    )
    assert [reports, status] == [[1, None, 0, [2]], 0]
    source.close()


def test_a_forked_child_refuses_the_connections_of_a_given_client(
    kept_alive: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """A client given to the source (``from_settings(client=...)``) is the caller's: the
    source cannot make another in the child. The child's source refuses every call before
    anything is sent, with a SourceError that says to let the source make its client; the
    parent goes on on the client."""
    table = make_table()
    keys = [f"k{i}" for i in range(8)]
    seed_items(admin_client, table, keys)
    client = kept_alive.client()
    given = DynamoDBSource.from_settings(kept_alive.settings(table=table, key="id"), client=client)
    assert n_of(given.load("k0")) == 0

    seen, release = loads_in_a_child(given, keys[1:3])
    status = release()
    assert status == 0
    assert len(seen) == 3
    assert all(refused(text) for text in seen), seen
    assert [n_of(given.load(key)) for key in keys[4:6]] == [4, 5]  # the parent's
    given.close()
    client.close()


def test_a_given_client_the_parent_never_sent_on_serves_the_forked_child(
    kept_alive: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """A client made in a prefork server's master (at import) and used in its workers only
    holds no connection at the fork: the child's source loads on it, as before the refusal
    above."""
    table = make_table()
    keys = [f"k{i}" for i in range(4)]
    seed_items(admin_client, table, keys)
    client = kept_alive.client()
    given = DynamoDBSource.from_settings(kept_alive.settings(table=table, key="id"), client=client)

    seen, release = loads_in_a_child(given, keys[1:3])
    assert release() == 0
    assert seen == [1, 2, [1, 2]]
    assert n_of(given.load("k3")) == 3  # the parent's, on the client it still has
    given.close()
    client.close()


def test_a_client_that_sent_before_it_was_given_is_refused_in_the_forked_child(
    proxied: tuple[MotoDynamoDB, FaultProxy], admin_client: Any, make_table: Callable[..., str]
) -> None:
    """A client the caller used before giving it (a table check at start-up, a warm-up read)
    holds a kept-alive connection though the source never saw it send: the child's source
    refuses, as for a client that sent through the source, and sends nothing on it."""
    server, proxy = proxied
    table = make_table()
    keys = [f"k{i}" for i in range(4)]
    seed_items(admin_client, table, keys)
    client = boto3.session.Session().client(
        "dynamodb", **{**server.client_kwargs(), "endpoint_url": proxy.url("http", "")}
    )
    client.describe_table(TableName=table)  # the caller's own request, before the source
    assert proxy.connections == 1  # kept alive in the client's pool
    given = DynamoDBSource.from_settings(server.settings(table=table, key="id"), client=client)

    seen, release = loads_in_a_child(given, keys[1:3])
    assert release() == 0
    assert len(seen) == 3
    assert all(refused(text) for text in seen), seen
    assert n_of(given.load("k3")) == 3  # the parent's, on its connection
    given.close()
    client.close()


def test_a_client_owned_with_no_way_to_remake_it_is_refused_in_the_forked_child(
    kept_alive: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    """``DynamoDBSource(client, ..., owns_client=True)`` without ``connect``: the source
    closes the client but cannot make another; in a child, it refuses, as the docstring of
    ``connect`` says, rather than send on the parent's connections."""
    table = make_table()
    keys = [f"k{i}" for i in range(4)]
    seed_items(admin_client, table, keys)
    owned = DynamoDBSource(kept_alive.client(), table, "id", owns_client=True)
    assert n_of(owned.load("k0")) == 0

    seen, release = loads_in_a_child(owned, keys[1:3])
    assert release() == 0
    assert len(seen) == 3
    assert all(refused(text) for text in seen), seen
    assert n_of(owned.load("k3")) == 3  # the parent's
    owned.close()


def test_sources_closed_on_a_shared_client_are_let_go_of(
    kept_alive: MotoDynamoDB, make_table: Callable[..., str]
) -> None:
    """A source listens to its given client's sends (to know whether a child may use it);
    closed, it stops listening: a client shared by sources made and closed one after another
    (a chain per tenant, per test, per invocation) kept every one alive in its event hooks."""
    import gc
    import weakref

    table = make_table()
    client = kept_alive.client()
    settings = kept_alive.settings(table=table, key="id")
    closed = []
    for _ in range(20):
        source = DynamoDBSource.from_settings(settings, client=client)
        source.close()
        closed.append(weakref.ref(source))
    del source
    gc.collect()
    assert [ref for ref in closed if ref() is not None] == []
    client.close()


# -- A fork from a signal handler (a prefork server that forks a worker from its SIGCHLD or
# SIGHUP handler) that lands in the main thread while that thread opens a DynamoDB connection:
# the fork's wait for the connections being opened (``openings.OPENINGS``) runs on the thread
# whose opening it would wait for, which cannot end before the handler returns. Each process
# under test is a forked child of the test's, so that a hang is a report that never comes.


#: An opening's first step in Openings' lock (its wait for no fork under way).
OPENING = openings.Openings.unheld.__wrapped__  # type: ignore[attr-defined]
IN_THE_LOCK = next(
    number
    for number, line in enumerate(
        inspect.getsourcelines(OPENING)[0], OPENING.__code__.co_firstlineno
    )
    if "not self._forking" in line
)


def forking_on_a_signal() -> list[int]:
    """Install a SIGUSR1 handler that forks (the child exits at once) and reaps the child;
    returns the list of the exit codes reaped, appended by the handler."""
    reaped: list[int] = []

    def handler(signum: int, frame: object) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        reaped.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

    signal.signal(signal.SIGUSR1, handler)
    return reaped


def reported_or_hung(body: Callable[[], Any]) -> Any:
    """``body()``'s value, run in a forked child, or ``"hung"``."""
    child = ForkedChild(lambda report: report(body()))
    try:
        value = child.read(timeout=HUNG)
    except TimeoutError:
        return "hung"
    assert child.wait() == 0
    return value


def test_a_fork_from_a_handler_landing_in_the_openings_lock_does_not_wait_for_it(
    behind: Behind,
) -> None:
    """The handler lands as the main thread starts an opening, Openings' lock held: the
    fork's wait took that lock again, on the same thread, and waited for it for ever."""
    source = behind.source()

    def body() -> Any:
        reaped = forking_on_a_signal()
        main = threading.get_ident()
        sys.settrace(
            interrupt_once(
                OPENING.__code__,
                lambda frame: frame.f_lineno == IN_THE_LOCK,
                lambda: signal.pthread_kill(main, signal.SIGUSR1),
            )
        )
        try:
            loaded = int(source.load("k1")["n"])  # on a connection of this process's: opened
        finally:
            sys.settrace(None)
        return [loaded, reaped]

    assert reported_or_hung(body) == [1, [0]]
    source.close()


def test_a_fork_from_a_handler_landing_in_an_opening_of_its_thread_does_not_wait_for_it(
    behind: Behind, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler lands while the main thread is in its connect (the proxy stalls it): the
    fork waited for that opening, which cannot end before the handler returns, the whole
    bound (``OPENING_WAIT``), and said the child keeps copies of sockets other threads were
    opening."""
    proxy = behind.proxy
    source = behind.source()
    caplog.set_level(logging.WARNING, logger="tiered_cache.source")

    def body(report: Callable[[Any], None]) -> None:
        reaped = forking_on_a_signal()
        main = threading.get_ident()

        def signal_in_the_connect() -> None:
            until(lambda: proxy.connecting == 1, "the main thread's connect")
            signal.pthread_kill(main, signal.SIGUSR1)  # breaks its wait for the SYN's answer
            until(lambda: reaped != [], "the handler's fork")
            report("forked")  # the test's process restores its proxy

        signaller = threading.Thread(target=signal_in_the_connect)
        signaller.start()
        loaded = int(source.load("k1")["n"])
        signaller.join(HUNG)
        report([loaded, reaped, messages_of(caplog.records, "tiered_cache.source")])

    proxy.stall()
    child = ForkedChild(body)
    try:
        forked = child.read(timeout=HUNG)
    finally:
        proxy.restore()
    assert [forked, child.read(timeout=HUNG), child.wait()] == ["forked", [1, [0], []], 0]
    source.close()


@pytest.mark.parametrize("closed_by", ["close", "finalizer"])
def test_a_close_under_a_lock_a_forks_hook_takes_does_not_hang_the_fork(closed_by: str) -> None:
    """A watched socket closed (``close()``, or its finalizer: the collector runs in whichever
    thread allocates, and an aiohttp transport or urllib3 pool collected closes its sockets)
    under a lock a fork's later at-fork hook takes: here logging's, which its hook takes
    after the source's. The close waited for the fork under way, and the fork for that
    lock: both for ever. A close waits for no fork (a fork still waits for a close)."""

    def body() -> Any:
        mine, theirs = socket.socketpair()
        openings.count_closes(mine)
        theirs.close()
        held = [mine]
        del mine

        def close_under_loggings_lock() -> None:
            with logging._lock:  # type: ignore[attr-defined]
                until(lambda: openings.OPENINGS._forking, "the main thread's fork")
                if closed_by == "close":
                    held[0].close()
                held.clear()  # collected here, unclosed, for the finalizer

        closer = threading.Thread(target=close_under_loggings_lock)
        closer.start()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        closer.join(HUNG)
        return [status, held]

    assert reported_or_hung(body) == [0, []]
