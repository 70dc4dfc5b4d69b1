"""Single-key reads of one loop tick, sent as one MGET (:class:`CoalescedReads`).

A burst of coroutines (a service starting under traffic, a cleared memory tier) issues one
GET per key in the same pass of the event loop. Sent one by one, they are one round trip
each: they queue for the pool's connections, and every queued read runs a timed step (the
pool wait, a connect, a socket read) while the loop is busy with the others. Those timeouts
then measure the loop's own queue, not Redis, and the tier's breaker counts them as Redis
failing. Gathered (:class:`~tiered_cache_redis.async_tick.TickBatch`, which also gathers
the lease calls), the GETs of one tick leave together once the tick is over -- when the
loop is free -- as one MGET per ``keys_per_call`` names (:mod:`.chunks`): the timed part is
one round trip each.

Each caller still gets its own answer or its own error, so the chain's breaker counts a
failed MGET once per caller, as it counted the GETs it replaces: a real outage is detected
as fast as before.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any

from .async_tick import TickBatch
from .async_wire import AsyncReads
from .chunks import chunks


class CoalescedReads:
    """:class:`~tiered_cache_redis.async_wire.AsyncReads` that gathers the GETs of a tick
    into MGETs of ``reads``, of at most ``keys_per_call`` names each (per event loop: a
    batch never crosses loops)."""

    def __init__(self, reads: AsyncReads, keys_per_call: int) -> None:
        self._reads = reads
        self._keys_per_call = keys_per_call
        self._gets: TickBatch[str, bytes | None] = TickBatch(self._send_gets, alone=reads.get)

    def get(self, name: str) -> Coroutine[Any, Any, bytes | None]:
        """``GET name``, sent with the other GETs of this tick (each name once). A plain call
        returning the batch's coroutine: no coroutine of its own on every L2 hit."""
        return self._gets.call(name)

    async def _send_gets(self, names: Sequence[str]) -> list[bytes | Exception | None]:
        unique = list(dict.fromkeys(names))
        values = dict(zip(unique, await self._send(unique), strict=True))
        return [values[name] for name in names]

    async def _send(self, names: Sequence[str]) -> Sequence[bytes | None]:
        if len(names) == 1:
            return [await self._reads.get(names[0])]
        values: list[bytes | None] = []
        for chunk in chunks(names, self._keys_per_call):
            values += await self._reads.mget(chunk)
        return values

    async def mget(self, names: Sequence[str]) -> list[bytes | None]:
        """``MGET names`` at once (a batch already)."""
        return await self._reads.mget(names)

    async def aclose(self) -> None:
        """Let the MGETs in flight end, then close ``reads``."""
        await self._gets.drain()
        await self._reads.aclose()
