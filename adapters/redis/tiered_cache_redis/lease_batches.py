"""The lease scripts of a batch, planned and read back: shared by the sync and the asyncio
Redis tiers, which only differ in how they send the calls.

A batch of lease operations is one script call per key (pipelined on one server, one at a
time on a cluster). What the replies mean -- all-or-nothing for taking leases, "which fills
landed" for filling under them -- is decided here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tiered_cache.errors import TierCallFailed
from tiered_cache.leases import PartialFill
from tiered_cache.tier import MISSING, Entry, MissingType

from .leases import lease_key

#: One script call: ``(keys, args)``.
Call = tuple[list[str], list[Any]]
#: ``(key, redis key, token, bytes (empty: nothing to keep, the older copy goes), PX or None)``.
Fill = tuple[str, str, str, bytes, int | None]


def acquire_calls(names: Sequence[str], tokens: Sequence[str], px: int) -> list[Call]:
    """The ``ACQUIRE_AND_GET`` calls for the data keys ``names``."""
    return [
        ([name, lease_key(name)], [token, px]) for name, token in zip(names, tokens, strict=True)
    ]


def taken_on_failure(
    keys: Sequence[str], tokens: Sequence[str], replies: Sequence[Any]
) -> tuple[dict[str, str], BaseException | None] | None:
    """None when every acquire call answered; else ``(leases taken, to give back; the
    error)``: the caller loads the whole batch without leases, so no lease taken may stay
    behind to make other processes wait for nobody."""
    failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
    if failed is None and len(replies) >= len(keys):
        return None
    taken = {
        key: token
        for key, token, reply in zip(keys, tokens, replies, strict=False)
        if not isinstance(reply, Exception) and reply[0]
    }
    return taken, failed


def batch_failure(name: str, failed: BaseException | None) -> TierCallFailed:
    """The error of a batch of leases that could not all be asked for: calls made that
    failed in Redis, so the tier's error (a TierCallFailed), not a skip ("a call not
    made", which a plain TierUnavailable counts as)."""
    error = TierCallFailed(f"tier {name!r}: could not take the leases of a batch: {failed}")
    error.__cause__ = failed
    return error


def looks(
    keys: Sequence[str],
    tokens: Sequence[str],
    replies: Sequence[Any],
    decode: Callable[[str, bytes], Entry | MissingType],
) -> dict[str, tuple[str | None, Entry | MissingType]]:
    """What each acquire call found: ``key: (token if taken, the entry or MISSING)``."""
    return {
        key: (token if taken else None, MISSING if not data else decode(key, data))
        for key, token, (taken, data) in zip(keys, tokens, replies, strict=True)
    }


def plan_fills(
    entries: Mapping[str, tuple[Entry, str]],
    encode: Callable[[str, Entry], tuple[str, bytes | None, int | None]],
) -> list[Fill]:
    """Every entry encoded before anything is sent: the fills to run. An entry with nothing
    to keep (past its expiry) drops the older copy, under its lease as any fill: dropped
    unasked, a write made since the load began went with it."""
    return [
        (key, name, token, data or b"", px)
        for key, (entry, token) in entries.items()
        for name, data, px in (encode(key, entry),)
    ]


def fill_calls(fills: Sequence[Fill]) -> list[Call]:
    """The ``FILL_IF_HOLDING`` calls of ``fills``."""
    return [([name, lease_key(name)], [token, data, px or 0]) for _, name, token, data, px in fills]


def fill_outcome(
    name: str, fills: Sequence[Fill], replies: Sequence[Any]
) -> tuple[set[str], dict[str, str], PartialFill | None]:
    """``(keys written, leases to give back, the error to raise)``: a failed (or, on a
    cluster, skipped) fill may not have happened."""
    errors = [reply for reply in replies if isinstance(reply, Exception)]
    kept = {
        fill[0]
        for fill, reply in zip(fills, replies, strict=False)
        if reply and not isinstance(reply, Exception)
    }
    if not errors and len(replies) >= len(fills):
        return kept, {}, None
    failed = {key: token for key, _, token, _, _ in fills[len(replies) :]}
    failed.update(
        (fill[0], fill[2])
        for fill, reply in zip(fills, replies, strict=False)
        if isinstance(reply, Exception)
    )
    first = errors[0] if errors else None
    error = PartialFill(f"tier {name!r}: {len(failed)} of {len(fills)} fills failed: {first}", kept)
    error.__cause__ = first
    return kept, failed, error
