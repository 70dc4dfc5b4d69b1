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

import redis.asyncio as aioredis

from tiered_cache.forking import keep_from_the_parent


def forget_the_parents_connections(client: Any) -> None:
    """Empty the pool of a plain ``redis.asyncio`` client, keeping the parent's connections
    (the next command connects anew). A cluster client's nodes are not emptied: a tier
    made with ``connect`` makes a new client instead."""
    if isinstance(client, aioredis.Redis):
        pool = client.connection_pool
        keep_from_the_parent(list(pool._available_connections), list(pool._in_use_connections))
        pool.reset()  # type: ignore[no-untyped-call]
