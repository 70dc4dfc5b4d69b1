"""What the adapter knows of a boto3 client's connections: botocore's and urllib3's private
layout, read here alone.

botocore shows nothing of its connections. The client's endpoint holds an HTTP session
(``_endpoint.http_session``), whose urllib3 pool managers (``_manager``, and one per proxy in
``_proxy_managers``) hold a pool for each host the client sent to (``pools``, read through
its ``_container``), each with a queue of its idle connections (``pool.pool.queue``; the
pool is ``None`` once closed).

Another botocore or urllib3 may lay them out otherwise: each reader raises
:class:`LayoutChanged` then, and its caller decides what that means (:mod:`.sends`: the
client may have sent; :mod:`.inherited`: warn, close nothing).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LayoutChanged", "holds_pools", "inherited_connections"]


class LayoutChanged(Exception):
    """botocore or urllib3 keep a client's connections otherwise than this adapter knows."""


def _managers(client: Any) -> list[Any]:
    session = client._endpoint.http_session
    return [session._manager, *list(session._proxy_managers.values())]


def holds_pools(client: Any) -> bool:
    """Whether ``client`` has a pool for some host: urllib3's pool manager makes one for each
    host the client sends to, and none before, so a client without sent nothing."""
    try:
        return any(len(manager.pools) > 0 for manager in _managers(client))
    except AttributeError as exc:
        raise LayoutChanged(str(exc)) from exc


def _idle_connections(client: Any) -> list[Any]:
    """The connections idle in ``client``'s pools, read without the pools' locks (one C call
    each for the container and each queue: in a forked child no other thread changes them)."""
    found: list[Any] = []
    for manager in _managers(client):
        for pool in list(manager.pools._container.values()):
            queue = pool.pool  # None once the pool was closed
            if queue is not None:
                found.extend(conn for conn in list(queue.queue) if conn is not None)
    return found


def inherited_connections(client: Any) -> list[Any]:
    """The connections of ``client`` a forked child holds copies of: those idle in its pools.
    Read without a lock."""
    try:
        return _idle_connections(client)
    except AttributeError as exc:
        raise LayoutChanged(str(exc)) from exc
