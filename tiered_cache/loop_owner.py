"""The one event loop a chain with loop-bound tiers may run on at a time.

A ``redis.asyncio`` connection belongs to the loop it was opened on. One chain used from two
loops at once (two threads, each running its own) had the second loop's calls fail inside
redis-py (``attached to a different loop``): 59 to 112 errors of the Redis tier in 420 calls
(``tools/loop_edges.py two-loops``), each read through to the source, a failed delete
leaving the old value in Redis, and nothing saying the use was unsupported. Refusing inside
the tier was worse: a refused delete is a tier's failure, which the chain reads through or
logs, and the second loop's invalidations never reached Redis. The chain refuses at its face
instead, before anything is asked of a tier: the caller sees
:class:`~tiered_cache.EventLoopConflict`. One loop after another (a job runner's
``asyncio.run`` per job) is fine: a loop that is not running any more gives its place up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence

from .async_tier import AsyncSource, AsyncSourceBase
from .bus import AsyncBus, AsyncBusBase, Bus
from .errors import EventLoopConflict
from .tier import Source

__all__ = ["LoopOwner", "loop_bound"]


def loop_bound(
    bound_tiers: Iterable[str], source: Source | AsyncSource | None, bus: Bus | AsyncBus | None
) -> list[str]:
    """The parts of a chain that declare ``one_loop`` (for :class:`LoopOwner`'s message):
    the tiers named (their accessors resolved it, through a breaker), the source
    (:class:`~tiered_cache.async_tier.AsyncSourceBase`), the bus
    (:class:`~tiered_cache.bus.AsyncBusBase`)."""
    parts = [f"tier {name!r}" for name in bound_tiers]
    if isinstance(source, AsyncSourceBase) and source.one_loop:
        parts.append(f"source {source.name!r}")
    if isinstance(bus, AsyncBusBase) and bus.one_loop:
        parts.append("the invalidation bus")
    return parts


class LoopOwner:
    """Admits the calls of one running event loop at a time (``names``: the loop-bound
    parts, for the message: :func:`loop_bound`)."""

    def __init__(self, names: Sequence[str]) -> None:
        self._names = ", ".join(names)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # two threads' loops may ask at once

    def here(self) -> None:
        """Raise :class:`EventLoopConflict` if another loop holds the chain and still runs."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        with self._lock:
            holder = self._loop
            if holder is not None and holder is not loop and holder.is_running():
                raise EventLoopConflict(
                    f"{self._names} of this chain are in use on another event loop that is "
                    "still running (another thread's): their connections belong to one loop "
                    "at a time. Build one chain per event loop."
                )
            self._loop = loop

    def forget(self) -> None:
        """In a forked child: the parent's loop, running there, never runs here."""
        self._loop = None
        self._lock = threading.Lock()
