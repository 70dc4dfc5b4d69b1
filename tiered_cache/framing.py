"""A shared tier's stored entry: a fixed binary header, then the codec's bytes of the value.

The header (:data:`HEADER`) holds the magic ``b"tc"``, the format byte, the codec's id, the
entry's four times, the time the stored copy expires and the version: the Redis tiers
(``tiered_cache_redis.stored``) write and read it. :func:`read_many` reads the values of one
batch read (an ``MGET``) as that tier's one-value decode reads each.

Compiled with the core (``tools/build_core.py``, mypyc): a batch's per-value work -- the
header's checks and each :class:`~tiered_cache.entry.Entry` built -- runs without the
interpreter, and the entry is built by its native constructor (its times go into the object as
C doubles). This source is the reference (``TIERED_CORE_PURE=1``, or no compiler).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from .entry import Entry

__all__ = ["FORMAT", "HEADER", "MAGIC", "UNKNOWN_FORMAT", "other_codec", "read_many"]

#: magic, format, codec id, loaded_at, soft_expiry, hard_expiry, load_duration, expire_at,
#: version. Fixed-size and little-endian: unpacking it costs one struct call on a read.
HEADER: Final = struct.Struct("<2sBBdddddq")
MAGIC: Final = b"tc"
FORMAT: Final = 1
#: What a codec's batch decode returns (``tiered_cache.codecs.Decoded``: the values in order, the
#: error of each value that failed by position). Spelled here, not imported: mypyc would then
#: check codecs.py, whose optional orjson a wheel's build does not have.
Decoded = tuple[list[Any], Mapping[int, Exception]]
#: Why a value is refused (the words a tier logs); a value of another codec: :func:`other_codec`.
UNKNOWN_FORMAT: Final = "holds data in an unknown format"


def other_codec(codec_id: int) -> str:
    """Why a value written with codec ``codec_id`` (not the reader's) is refused."""
    return f"was written with another codec (id {codec_id})"


def read_many(
    keys: Sequence[str],
    values: Sequence[bytes | None],
    *,
    codec_id: int,
    now: float,
    decode_batch: Callable[[Sequence[bytes]], Decoded],
    refuse: Callable[[str, str], object],
) -> dict[str, Entry]:
    """The live entries of ``values`` (one per key of ``keys``, ``None`` for an absent key),
    as the one-value decode reads each: a value that is too short, of another magic, format
    byte or codec, or that ``decode_batch`` cannot decode is refused (``refuse(key, why)``,
    in the order of ``keys``, codec failures last), one whose stored copy expired by ``now``
    is left out, and the payloads of the others are decoded in one ``decode_batch`` call."""
    # Per value only what the header needs: the unpack itself tells a short value
    # (struct.error, free when none is raised), the magic and format are read from it.
    unpack = HEADER.unpack_from
    size = HEADER.size
    live: list[str] = []
    headers: list[tuple[Any, ...]] = []
    payloads: list[bytes] = []
    for key, data in zip(keys, values, strict=True):
        if data is None:
            continue
        try:
            header: tuple[Any, ...] = unpack(data)
        except struct.error:
            refuse(key, UNKNOWN_FORMAT)
            continue
        magic: bytes = header[0]
        form: int = header[1]
        if magic != MAGIC or form != FORMAT:
            refuse(key, UNKNOWN_FORMAT)
            continue
        # Redis expires keys on its own clock; the tier must also honour the chain's clock.
        expire_at: float = header[7]
        if now >= expire_at:
            continue
        stored_codec: int = header[2]
        if stored_codec != codec_id:
            refuse(key, other_codec(stored_codec))
            continue
        live.append(key)
        headers.append(header)
        payloads.append(data[size:])
    if not payloads:
        return {}
    decoded, errors = decode_batch(payloads)
    found: dict[str, Entry] = {}
    for index in range(len(live)):
        key = live[index]
        if errors and index in errors:
            refuse(key, f"cannot be decoded ({errors[index]})")
            continue
        header = headers[index]
        found[key] = Entry(decoded[index], header[3], header[4], header[5], header[6], header[8])
    return found
