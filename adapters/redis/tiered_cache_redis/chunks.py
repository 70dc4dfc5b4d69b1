"""How many keys one call to Redis carries: the rule of both Redis tiers, decided once.

The tier's ``timeout`` bounds each call's reply whole (:mod:`.replies`; ``redis.asyncio``
bounds its reads so too), and a reply takes longer the more keys it carries: a ``get_many``
of 4,000 values of 1 KB timed out on every call on the asyncio face, one of 50,000 values of
250 bytes went to the source whole, on a Redis that was healthy. So a batch of more than
``keys_per_call`` keys -- a read, a write, a delete, the leases of a batch -- is sent as
calls of at most that many keys, one after another, each answered within ``timeout``. The
timeout keeps its meaning (how long Redis may go without answering) whatever the batch, and
the asyncio loop runs other tasks between two calls.

A read whose call fails keeps what the calls before it read (:class:`PartialRead`: the chain
serves those and reads the others through to the next tier) and sends no further call:
Redis did not answer one call, and waiting a timeout for each of the others would make a
stalled Redis cost a batch one timeout per call instead of one. A batch of at most
``keys_per_call`` keys (a ``get_many`` of 100) is one call, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import RedisError

from tiered_cache.steps import Steps
from tiered_cache.tier import Entry, PartialRead

from .stored import StoredFormat

T = TypeVar("T")

#: Most keys one call carries by default: 500 values of 1 KB were read in 16 ms at best on
#: the asyncio face of a machine at load 12 (2 cores), 1,000 in 68 ms, past the default
#: 50 ms timeout (docs/testing.md, "Large batches on the Redis tier").
KEYS_PER_CALL = 500


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in slices of at most ``size``, in order."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def read_chunks(
    mget: Callable[[Sequence[str]], Any], names: Sequence[str], size: int
) -> Steps[tuple[list[bytes | None], RedisError | None]]:
    """``mget`` of ``names``, ``size`` at a time: the values read (those of the first names,
    in order) and the error that stopped the read (None: every name was read)."""
    values: list[bytes | None] = []
    for chunk in chunks(names, size):
        try:
            values += yield mget, (chunk,)
        except RedisError as exc:
            return values, exc
    return values, None


def read_outcome(
    stored: StoredFormat,
    keys: Sequence[str],
    values: Sequence[bytes | None],
    error: RedisError | None,
    now: float,
) -> dict[str, Entry]:
    """The live entries of a read in calls (:func:`read_chunks`); raises its error if no
    call was answered, :class:`PartialRead` if some were."""
    if error is None:
        return stored.decode_many(keys, values, now)
    if not values:
        raise error
    read = keys[: len(values)]
    partial = PartialRead(
        f"tier {stored.name!r}: read {len(read)} of {len(keys)} keys, then "
        f"{type(error).__name__}: {error}",
        stored.decode_many(read, values, now),
        read,
    )
    raise partial from error
