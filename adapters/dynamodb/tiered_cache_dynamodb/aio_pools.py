"""What the adapter knows of an aiobotocore client's connections: aiobotocore's, aiohttp's and
asyncio's private layout, read here alone (:mod:`.pools` is the boto3 client's).

The client's endpoint holds an HTTP session (``_endpoint.http_session``: aiobotocore's
``AIOHTTPSession``, unless ``AioConfig(http_session_cls=...)`` gave another), which keeps an
aiohttp ``ClientSession`` per proxy (``_sessions``; ``None`` once closed). A session's
connector keeps the connections idle (``_conns``: per host, ``(protocol, time)`` pairs) and
those in use (``_acquired``: protocols, and a placeholder without a transport for each
connection being made). A protocol's transport shows its socket as asyncio's
``TransportSocket`` (``get_extra_info("socket")``), which offers no way to detach it: its
``_sock`` is the socket itself.

A connection being made has no protocol yet, only its placeholder: its socket (connecting,
or in its TLS handshake) is the connect coroutine's. aiohttp makes it with the connector's
``socket_factory`` (aiobotocore passes ``connector_args`` to the connectors it makes, kept
in ``_connector_args``; a connector's own is ``_socket_factory``), so a
:class:`SocketWatch` has that factory note every socket made.

The names read are declared in :mod:`.layout` (:class:`~.layout.Aiobotocore`), which checks
them against the installed libraries.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Callable
from typing import Any

from aiobotocore.httpsession import AIOHTTPSession

from .layout import Aiobotocore, started
from .openings import OPENINGS, count_closes
from .pools import LayoutChanged

__all__ = ["SocketWatch", "client_sessions", "inherited_sockets"]

#: aiohttp's ``socket_factory``: a socket for an ``getaddrinfo`` entry.
SocketFactory = Callable[[Any], socket.socket]


def client_sessions(client: Any) -> list[Any]:
    """The aiohttp sessions of an aiobotocore ``client``'s HTTP session (none once it was
    closed, or when it is of another class)."""
    http = _http_session(client)
    if not isinstance(http, AIOHTTPSession):
        return []
    return list((Aiobotocore.sessions.of(http) or {}).values())


def _http_session(client: Any) -> Any:
    return Aiobotocore.http_session.of(Aiobotocore.endpoint.of(client))


class SocketWatch:
    """Notes every socket ``client``'s aiohttp connectors make from now on (held weakly), the
    sockets of connections being made included: the factory they make sockets with is
    replaced by one that calls it (or makes the socket as aiohttp does) and notes the
    socket, whose close a fork then waits for (:mod:`.openings`). So are the sockets of the
    connections its connectors hold as the watch starts, idle or in use (made before: the
    client sent before the source had it, in a ``connect`` of the caller's or before it was
    given); not one being made then (a placeholder: its socket is the connect coroutine's
    until it is made). Where the client's HTTP session is of another class, nothing is noted
    (nor found: :func:`client_sessions`); where it is laid out otherwise,
    :func:`inherited_sockets` says why."""

    def __init__(self, client: Any) -> None:
        self.made: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        #: Why nothing is noted (another aiobotocore or aiohttp), or None; and whether the
        #: watch started where they lack a name it reads (:func:`~.layout.started`).
        self.not_watched: str | None
        self.layout_changed: bool
        self.not_watched, self.layout_changed = started(Aiobotocore, lambda: self._start(client))

    def _start(self, client: Any) -> None:
        http = _http_session(client)
        if not isinstance(http, AIOHTTPSession):
            return
        connectors = [Aiobotocore.connector.of(session) for session in client_sessions(client)]
        args = dict(Aiobotocore.connector_args.of(http))
        made_before = [sock for connector in connectors for sock in _held_by(connector)]
        for connector in connectors:
            if connector is not None:
                theirs = Aiobotocore.socket_factory.of(connector)
                Aiobotocore.socket_factory.set(connector, self._noting(theirs))
        for sock in made_before:
            count_closes(sock)
            self.made.add(sock)
        # A copy: the dict may be the client's config's, shared with other clients.
        noting = self._noting(args.get("socket_factory"))
        Aiobotocore.connector_args.set(http, {**args, "socket_factory": noting})

    def _noting(self, theirs: SocketFactory | None) -> SocketFactory:
        made = self.made

        def make(address: Any) -> socket.socket:
            # A fork waits: a descriptor made (the loop's thread waiting for the GIL again)
            # that no socket object holds yet, or one not noted yet, would stay open.
            with OPENINGS.unheld():
                if theirs is not None:
                    sock = theirs(address)
                else:  # aiohttp's (aiohappyeyeballs') own
                    family, kind, proto, _, _ = address
                    sock = socket.socket(family=family, type=kind, proto=proto)
                count_closes(sock)
                made.add(sock)
            return sock

        return make


def _held_by(connector: Any) -> list[socket.socket]:
    """The sockets of ``connector``'s connections (none: a session closed), idle or in use,
    read without waiting on its loop; not those being made (no transport yet)."""
    if connector is None:
        return []
    protocols: list[Any] = []
    for idle in list(Aiobotocore.idle.of(connector).values()):
        protocols.extend(protocol for protocol, _ in list(idle))
    protocols.extend(list(Aiobotocore.acquired.of(connector)))
    found: list[socket.socket] = []
    for protocol in protocols:
        transport = Aiobotocore.transport.of(protocol)  # None: being made, or closed
        shown = None if transport is None else Aiobotocore.extra_info.of(transport)("socket")
        if shown is not None:
            found.append(Aiobotocore.shown_socket.of(shown))
    return found


def inherited_sockets(client: Any, watch: SocketWatch) -> list[socket.socket]:
    """The sockets of ``client``'s connections, idle, in use or being made (noted by
    ``watch``), each once, read without waiting on its loop (a forked child's copies: the
    loop is the parent's, and runs there)."""
    if watch.not_watched is not None:
        raise LayoutChanged(watch.not_watched)
    try:
        found = [
            sock
            for session in client_sessions(client)
            for sock in _held_by(Aiobotocore.connector.of(session))
        ]
    except AttributeError as exc:
        raise LayoutChanged(str(exc)) from exc
    seen = {id(sock) for sock in found}
    # A socket closed (its connection's, or one that failed to connect) is detached: -1.
    return found + [
        sock for sock in list(watch.made) if id(sock) not in seen and sock.fileno() >= 0
    ]
