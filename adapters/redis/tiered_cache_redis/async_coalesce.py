"""Single-key reads of one loop tick, sent as one MGET (:class:`CoalescedReads`).

A burst of coroutines (a service starting under traffic, a cleared memory tier) issues one
GET per key in the same pass of the event loop. Sent one by one, they are one round trip
each: they queue for the pool's connections, and every queued read runs a timed step (the
pool wait, a connect, a socket read) while the loop is busy with the others. Those timeouts
then measure the loop's own queue, not Redis, and the tier's breaker counts them as Redis
failing. Gathered, the GETs of one tick leave together once the tick is over -- when the
loop is free -- as one MGET per :data:`MGET_CHUNK` names: the timed part is one round trip.

Each caller still gets its own answer or its own error, so the chain's breaker counts a
failed MGET once per caller, as it counted the GETs it replaces: a real outage is detected
as fast as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .async_wire import AsyncReads

#: Most names in one MGET: a larger batch is split, so no reply grows without bound.
MGET_CHUNK = 1000

_Waiters = dict[str, list["asyncio.Future[bytes | None]"]]


class CoalescedReads:
    """:class:`~tiered_cache_redis.async_wire.AsyncReads` that gathers the GETs of a tick
    into MGETs of ``reads`` (per event loop: a batch never crosses loops)."""

    def __init__(self, reads: AsyncReads) -> None:
        self._reads = reads
        self._pending: dict[asyncio.AbstractEventLoop, _Waiters] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def get(self, name: str) -> bytes | None:
        """``GET name``, sent with the other GETs of this tick.

        The first GET of a tick leads: it lets the tick end (one yield to the loop, no task),
        then sends the names gathered meanwhile and hands each waiter its value."""
        loop = asyncio.get_running_loop()
        waiters = self._pending.get(loop)
        if waiters is not None:
            future: asyncio.Future[bytes | None] = loop.create_future()
            waiters.setdefault(name, []).append(future)
            return await future
        waiters = self._pending[loop] = {name: []}
        try:
            try:
                await asyncio.sleep(0)
            finally:
                del self._pending[loop]
            names = list(waiters)
            values = await self._send(names)
        except BaseException as exc:
            self._hand_over(loop, waiters, exc)
            raise
        _settle(waiters, names, values)
        return values[0]

    async def _send(self, names: Sequence[str]) -> Sequence[bytes | None]:
        if len(names) == 1:
            return [await self._reads.get(names[0])]
        values: list[bytes | None] = []
        for start in range(0, len(names), MGET_CHUNK):
            values += await self._reads.mget(names[start : start + MGET_CHUNK])
        return values

    def _hand_over(
        self, loop: asyncio.AbstractEventLoop, waiters: _Waiters, exc: BaseException
    ) -> None:
        """The leader's read failed: the same error for every waiter (each counts it, as it
        would have counted its own GET). The leader was cancelled (its caller went away):
        not the waiters' business, their names are sent again without it."""
        if isinstance(exc, Exception):
            for future in _undone(waiters):
                future.set_exception(exc)
            return
        rest = {name: futures for name, futures in waiters.items() if futures}
        if rest and not loop.is_closed():
            task = loop.create_task(self._resend(rest))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _resend(self, waiters: _Waiters) -> None:
        names = list(waiters)
        try:
            values = await self._send(names)
        except Exception as exc:
            for future in _undone(waiters):
                future.set_exception(exc)
            return
        except BaseException:
            for future in _undone(waiters):
                future.cancel()
            raise
        _settle(waiters, names, values)

    async def mget(self, names: Sequence[str]) -> list[bytes | None]:
        """``MGET names`` at once (a batch already)."""
        return await self._reads.mget(names)

    async def aclose(self) -> None:
        """Let the MGETs in flight end, then close ``reads``."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._reads.aclose()


def _undone(waiters: _Waiters) -> list[asyncio.Future[bytes | None]]:
    return [future for futures in waiters.values() for future in futures if not future.done()]


def _settle(waiters: _Waiters, names: Sequence[str], values: Sequence[bytes | None]) -> None:
    for name, value in zip(names, values, strict=True):
        for future in waiters[name]:
            if not future.done():
                future.set_result(value)
