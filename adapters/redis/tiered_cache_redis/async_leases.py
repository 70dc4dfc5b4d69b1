"""Lease calls of one loop tick, sent as the batch calls of the async Redis tier
(:class:`CoalescedLeases`, on :class:`~tiered_cache_redis.async_tick.TickBatch`).

A burst of readers of keys Redis lacks takes one lease per key, then fills under it: sent
one by one, those calls time the loop's queue (see :mod:`tiered_cache_redis.async_tick`).
Gathered, each tick's calls leave as ``acquire_leases`` / ``fill_with_leases`` batches,
with the single-key meaning kept for each caller:

- each caller gets its own token (or None) and entry, or its own fill outcome;
- calls for the same key in one tick go in separate rounds, one after the other, so two
  callers of a key never both get its lease and each fill is judged on its own token;
- calls with different TTLs go in separate batches (a batch takes one TTL);
- an error of a batch is each of its callers' error (a failed fill batch: the keys it
  wrote are still True for their callers, the others get the error);
- a value the codec cannot hold fails its own fill only: its batch is sent again one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

from tiered_cache.errors import CodecError
from tiered_cache.leases import PartialFill
from tiered_cache.steps import arun
from tiered_cache.tier import Entry, MissingType

from .async_tick import TickBatch, rounds
from .commands import TierCommands

Look = tuple[str | None, Entry | MissingType]
_Acquire = tuple[str, float]
_Fill = tuple[str, Entry, str]


class CoalescedLeases:
    """``acquire_lease`` and ``fill_with_lease`` of :class:`TierCommands`, gathered per tick."""

    def __init__(self, commands: TierCommands) -> None:
        self._commands = commands
        self._acquires: TickBatch[_Acquire, Look] = TickBatch(self._send_acquires, self._give_back)
        self._fills: TickBatch[_Fill, bool] = TickBatch(self._send_fills)

    async def acquire_lease(self, key: str, ttl: float) -> Look:
        return await self._acquires.call((key, ttl))

    async def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        return await self._fills.call((key, entry, token))

    async def drain(self) -> None:
        await self._acquires.drain()
        await self._fills.drain()

    async def stop_here(self, within: float) -> None:
        """The running loop ends (:meth:`TickBatch.stop_here`); every token of theirs is
        still the tier's to give back (:class:`~.doubted.Taken`)."""
        await self._acquires.stop_here(within)
        await self._fills.stop_here(within)

    async def _send_acquires(self, calls: Sequence[_Acquire]) -> list[Look | Exception]:
        outcomes: list[Look | Exception] = [ValueError("not sent")] * len(calls)
        for batch in _batches([(key, ttl) for key, ttl in calls]):
            key, ttl = calls[batch[0]]
            if len(batch) == 1:
                try:
                    outcomes[batch[0]] = await arun(self._commands.acquire_lease(key, ttl))
                except Exception as exc:
                    outcomes[batch[0]] = exc
                continue
            keys = [calls[index][0] for index in batch]
            try:
                looks = await arun(self._commands.acquire_leases(keys, ttl))
            except Exception as exc:
                for index in batch:
                    outcomes[index] = exc
                continue
            for index, key in zip(batch, keys, strict=True):
                outcomes[index] = looks[key]
        return outcomes

    async def _give_back(self, unclaimed: list[tuple[_Acquire, Look]]) -> None:
        """The leases taken for callers that were cancelled before their tokens came back:
        nobody else knows those tokens, and nobody will fill under them."""
        tokens = {key: token for (key, _), (token, _) in unclaimed if token is not None}
        if tokens:
            await arun(self._commands.release_quietly(tokens))

    async def _send_fills(self, calls: Sequence[_Fill]) -> list[bool | Exception]:
        outcomes: list[bool | Exception] = [ValueError("not sent")] * len(calls)
        for batch in _batches([(key, 0.0) for key, _, _ in calls]):
            if len(batch) > 1:
                entries = {calls[index][0]: (calls[index][1], calls[index][2]) for index in batch}
                try:
                    kept = await arun(self._commands.fill_with_leases(entries))
                except CodecError:
                    pass  # one value the codec cannot hold: one by one, it fails alone
                except PartialFill as exc:
                    for index in batch:
                        outcomes[index] = True if calls[index][0] in exc.kept else exc
                    continue
                except Exception as exc:
                    for index in batch:
                        outcomes[index] = exc
                    continue
                else:
                    for index in batch:
                        outcomes[index] = calls[index][0] in kept
                    continue
            for index in batch:
                key, entry, token = calls[index]
                try:
                    outcomes[index] = await arun(self._commands.fill_with_lease(key, entry, token))
                except Exception as exc:
                    outcomes[index] = exc
        return outcomes


def _batches(calls: Sequence[tuple[str, float]]) -> list[list[int]]:
    """Positions of ``calls`` in batches of one TTL with each key at most once, in the
    order the rounds require."""
    out: list[list[int]] = []
    for positions in rounds([key for key, _ in calls]):
        by_ttl: dict[float, list[int]] = {}
        for index in positions:
            by_ttl.setdefault(calls[index][1], []).append(index)
        out += by_ttl.values()
    return out
