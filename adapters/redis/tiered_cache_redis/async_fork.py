"""What a forked child does with the ``redis.asyncio`` connections it inherited.

``redis.asyncio`` does not check its pid (redis-py's sync pool does): in a forked child its
connections are the parent's sockets, bound to the parent's event loop. A command the child
writes on one is answered to whichever process reads first (the parent's next read got the
child's reply: another key's value), so the child lets go of them. It must not close them,
nor let them be collected: a connection collected while a loop runs closes its transport,
which takes the socket out of the parent loop's epoll set (shared across ``fork()``), and the
parent's reads on that socket then time out. They are kept for the child's life
(:func:`tiered_cache.forking.keep_from_the_parent`).
"""

from __future__ import annotations

from typing import Any

from tiered_cache.errors import TierUnavailable
from tiered_cache.forking import keep_from_the_parent

from .async_pool import take_connections


def forget_the_parents_connections(client: Any) -> bool:
    """Empty the pool of a plain ``redis.asyncio`` client, keeping the parent's connections
    (the next command connects anew); True if done. A cluster client's nodes are not emptied
    (False): a tier made with ``connect`` makes a new client instead, and one given a cluster
    client refuses its calls in the child (:func:`parents_client_error`)."""
    parents = take_connections(client)
    if parents is None:
        return False
    keep_from_the_parent(parents)
    return True


def parents_client_error(name: str) -> TierUnavailable:
    """What a tier given a Redis Cluster client raises for each call in a forked child: its
    nodes' connections are the parent's sockets, which it cannot let go of, and a command
    written on one is answered to whichever process reads first. Refused before anything is
    sent (a skip of the tier: the chain reads past it)."""
    return TierUnavailable(
        f"tier {name!r}: this process was forked from the one that gave the tier its Redis "
        "Cluster client, whose connections are the parent's sockets; it sends nothing on "
        "them. Build the tier with connect= (as from_config does) to use it after a fork"
    )
