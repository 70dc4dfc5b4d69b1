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
"""

from __future__ import annotations

import socket
from typing import Any

from aiobotocore.httpsession import AIOHTTPSession

from .pools import LayoutChanged

__all__ = ["client_sessions", "inherited_sockets"]


def client_sessions(client: Any) -> list[Any]:
    """The aiohttp sessions of an aiobotocore ``client``'s HTTP session (none once it was
    closed, or when it is of another class)."""
    http = client._endpoint.http_session
    if not isinstance(http, AIOHTTPSession):
        return []
    return list((http._sessions or {}).values())


def inherited_sockets(client: Any) -> list[socket.socket]:
    """The sockets of ``client``'s connections, idle or in use, read without waiting on its
    loop (a forked child's copies: the loop is the parent's, and runs there)."""
    try:
        protocols: list[Any] = []
        for session in client_sessions(client):
            connector = session.connector
            if connector is None:
                continue
            for idle in list(connector._conns.values()):
                protocols.extend(protocol for protocol, _ in list(idle))
            protocols.extend(list(connector._acquired))
        found: list[socket.socket] = []
        for protocol in protocols:
            transport = protocol.transport  # None: being made, or closed
            shown = None if transport is None else transport.get_extra_info("socket")
            if shown is not None:
                found.append(shown._sock)
        return found
    except AttributeError as exc:
        raise LayoutChanged(str(exc)) from exc
