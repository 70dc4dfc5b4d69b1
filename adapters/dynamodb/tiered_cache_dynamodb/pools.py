"""What the adapter knows of a boto3 client's connections: botocore's and urllib3's private
layout, read (and, for a client a forked child's source lets go of, hooked) here alone.

botocore shows nothing of its connections. The client's endpoint holds an HTTP session
(``_endpoint.http_session``), whose urllib3 pool managers (``_manager``, and one per proxy in
``_proxy_managers``) hold a pool for each host the client sent to (``pools``, read through
its ``_container``), each with a queue of its idle connections (``pool.pool.queue``; the
pool is ``None`` once closed). A connection a thread has taken from its pool is in no queue,
and nothing of urllib3's refers to it; nor to a socket a reply reads its body on alone (its
connection let go of it, the reply closing it). Only the pool classes the session makes its
pools of (``_pool_classes_by_scheme``, one dict its managers share) see a connection open its
socket, and :class:`ConnectionWatch` has them note each socket (and gives a pool made before
it their class).

A connection being opened (its socket made, connected or in its TLS handshake, before urllib3
hands it to the connection object) is held by no object a forked child can reach: the
thread's locals only; nor is a socket being closed. A fork waits for both
(:mod:`.openings`).

Another botocore or urllib3 may lay them out otherwise: each reader raises
:class:`LayoutChanged` then, and its caller decides what that means (:mod:`.sends`: the
client may have sent; :mod:`.inherited`: warn, close nothing). The names read are declared in
:mod:`.layout` (:class:`~.layout.Boto3`), which checks them against the installed libraries.
"""

from __future__ import annotations

import inspect
import socket
import sys
import weakref
from typing import Any

from urllib3.response import HTTPResponse

from .layout import Boto3, started
from .openings import OPENINGS, count_closes

__all__ = ["ConnectionWatch", "LayoutChanged", "holds_pools", "inherited_sockets"]


class LayoutChanged(Exception):
    """botocore or urllib3 keep a client's connections otherwise than this adapter knows."""


def _managers(client: Any) -> list[Any]:
    session = _session(client)
    return [Boto3.manager.of(session), *list(Boto3.proxy_managers.of(session).values())]


def _session(client: Any) -> Any:
    return Boto3.http_session.of(Boto3.endpoint.of(client))


def holds_pools(client: Any) -> bool:
    """Whether ``client`` has a pool for some host: urllib3's pool manager makes one for each
    host the client sends to, and none before, so a client without sent nothing."""
    try:
        return any(len(Boto3.pools.of(manager)) > 0 for manager in _managers(client))
    except AttributeError as exc:
        raise LayoutChanged(str(exc)) from exc


def _pools(manager: Any) -> list[Any]:
    """A pool manager's pools, read without its lock (one C call)."""
    return list(Boto3.container.of(Boto3.pools.of(manager)).values())


def _idle_connections(pools: list[Any]) -> list[tuple[Any, Any]]:
    """The connections idle in ``pools``, each with its pool, read without the pools' locks
    (one C call each queue)."""
    found: list[tuple[Any, Any]] = []
    for pool in pools:
        queue = Boto3.queue.of(pool)  # None once the pool was closed
        if queue is not None:
            found.extend((pool, conn) for conn in list(Boto3.queued.of(queue)) if conn is not None)
    return found


def _methods(classes: list[type[Any]]) -> set[Any]:
    """The code of the methods of ``classes`` and of their bases (a generator's or a context
    manager's too: the frame runs the function's own code)."""
    codes: set[Any] = set()
    for cls in classes:
        for kind in cls.__mro__:
            for value in vars(kind).values():
                function = inspect.unwrap(getattr(value, "__func__", value))
                if inspect.isfunction(function):
                    codes.add(function.__code__)
    return codes


def _in_use(pools: list[Any]) -> list[tuple[Any, Any]]:
    """The connections of ``pools`` that threads hold now, each with its pool: taken from
    their pool's queue, they are held by the threads' stacks alone: by the locals (``conn``)
    of the pool's own methods (``urlopen``, ``_make_request``, ``_put_conn``: its connect,
    its request, its wait for the reply's head) and, once ``urlopen`` has returned, by the
    reply read (``_connection``, until it is put back).

    Only the frames of those methods have their locals read: a frame's locals read stay in
    its ``f_locals`` dict (CPython 3.11) until it ends or is read again, and a frame of a
    caller's (its thread's loop, its ``main``) kept alive what it let go of after, for its
    life. These end with their request."""
    mine = {id(pool): pool for pool in pools}
    theirs = _methods([*(type(pool) for pool in pools), HTTPResponse])
    found: list[tuple[Any, Any]] = []
    for top in sys._current_frames().values():
        frame: Any = top
        while frame is not None:
            if frame.f_code in theirs:
                names = frame.f_locals
                owner = names.get("self")
                pool = mine.get(id(owner))
                held = Boto3.held.of(names)
                if pool is not None and held is not None:
                    found.append((pool, held))
                elif isinstance(owner, HTTPResponse):
                    replys_pool = Boto3.reply_pool.of(owner)
                    connection = Boto3.reply_connection.of(owner)
                    if id(replys_pool) in mine and connection is not None:
                        found.append((replys_pool, connection))
            frame = frame.f_back
    return found


class ConnectionWatch:
    """Notes the socket of every connection ``client``'s pools open from now on (held
    weakly), and of those idle in its pools now: the pool classes of the client's HTTP
    session are replaced by subclasses whose connection class notes its socket as it opens
    it (an opening a fork waits for: :mod:`.openings`, as for each noted socket's close). A
    socket is the thing to note, not its connection: http.client lets go of a connection's
    socket (``sock`` None) once a reply that closes it has its head read, and the reply reads
    its body on it alone. The pools the client made before the watch (it sent before the
    source was given it) are turned into those subclasses too: a thread may take one of
    their connections later and hold it at a fork, when no queue has it; and so are their
    connections, idle or held by a thread of the caller as the watch starts (in no queue:
    found on that thread's stack, :func:`_in_use`), whose sockets are noted, and whose
    next connect (its socket closed: a reply's ``Connection: close``) is as any other's.
    Where the session has no such classes, nothing is noted, and :func:`inherited_sockets`
    says why."""

    def __init__(self, client: Any) -> None:
        self.sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        #: Why nothing is noted (another botocore or urllib3), or None; and whether the watch
        #: started where they lack a name it reads (:func:`~.layout.started`).
        self.not_watched: str | None
        self.layout_changed: bool
        self.not_watched, self.layout_changed = started(Boto3, lambda: self._start(client))

    def _start(self, client: Any) -> None:
        noting: dict[type[Any], type[Any]] = {}

        def noted(pool: type[Any]) -> type[Any]:
            if pool not in noting:
                noting[pool] = self._noting(pool)
            return noting[pool]

        classes = Boto3.pool_classes.of(_session(client))
        made_before = [pool for manager in _managers(client) for pool in _pools(manager)]
        replaced = {scheme: noted(pool) for scheme, pool in classes.items()}
        classes.update(replaced)
        for pool in made_before:
            pool.__class__ = noted(type(pool))
        # Read once the pools note what is put back: a connection taken from a queue after it
        # is read was in it; one put back after, noted as it is.
        known = _idle_connections(made_before) + (_in_use(made_before) if made_before else [])
        for pool, conn in known:
            # ``Noted``'s base is the pool's own connection class: the same layout.
            noting_class = Boto3.connection_class.of(pool)
            if type(conn) is noting_class.__base__:
                conn.__class__ = noting_class  # its next connect noted too
            self._note(Boto3.sock.of(conn))

    def _note(self, sock: Any) -> None:
        # http.client's ``sock``: None before the connection is opened, and once closed.
        if sock is not None and sock not in self.sockets:
            count_closes(sock)
            self.sockets.add(sock)

    def _noting(self, pool: type[Any]) -> type[Any]:
        note = self._note
        connection: type[Any] = Boto3.connection_class.of(pool)
        connect = Boto3.connect.of(connection)
        put_back = Boto3.put_back.of(pool)

        def connecting(self: Any) -> None:
            # Its socket is held by no object of ours until this returns: a fork waits.
            with OPENINGS.unheld():
                connect(self)
                note(Boto3.sock.of(self))

        # A pool's method: the scan reads its frame's ``conn`` (``Boto3.held``) as urllib3's.
        def putting_back(self: Any, conn: Any) -> None:
            if conn is not None:  # urllib3 puts None back for a connection it dropped
                note(Boto3.sock.of(conn))
            put_back(self, conn)

        noted = type("Noted", (connection,), {Boto3.connect.name: connecting})
        return type(
            pool.__name__,
            (pool,),
            {
                Boto3.connection_class.name: noted,
                Boto3.put_back.name: putting_back,
                "__module__": __name__,
            },
        )


def inherited_sockets(watch: ConnectionWatch) -> list[socket.socket]:
    """The sockets a client's connections opened (watched by ``watch``) still open in a forked
    child: idle in its pools, in use by a thread of the parent at the fork, or read by a reply
    alone; its pools are not read (nor their locks taken)."""
    if watch.not_watched is not None:
        raise LayoutChanged(watch.not_watched)
    # A socket closed has no descriptor (-1); one a reply still reads on keeps it.
    return [sock for sock in list(watch.sockets) if sock.fileno() >= 0]
