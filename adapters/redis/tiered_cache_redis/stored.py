"""What the Redis tiers store: a small binary header plus codec bytes under
``<namespace>:<key>``, kept for the entry's TTL (with jitter). Pure: no I/O, shared by the
sync and the asyncio tier, so a key written by either is read by the other.

The namespace is escaped (``app:v2`` is stored as ``app\\:v2:``, see
:func:`tiered_cache.keys.namespace_prefix`), so that no namespace reads or clears another's keys.
"""

from __future__ import annotations

import logging
import math
import random
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

from tiered_cache.codecs import Codec, batch_decoder, get_codec
from tiered_cache.errors import CodecError, UnencodableKey
from tiered_cache.framing import (
    FORMAT,
    HEADER,
    MAGIC,
    UNKNOWN_FORMAT,
    other_codec,
    read_many,
)
from tiered_cache.keys import check_keys, check_namespace, namespace_prefix
from tiered_cache.logs import fields, key_hash
from tiered_cache.settings import checked
from tiered_cache.tier import MISSING, Entry, MissingType
from tiered_cache.units import DurationLike

log = logging.getLogger("tiered_cache_redis.tier")

# Bound once: a get reads them as one global each, not a global and an attribute.
_unpack = HEADER.unpack_from
_HEADER_SIZE = HEADER.size

#: Codec ids in the header, so a reader never decodes another codec's bytes (0: any other codec).
CODEC_IDS = {"json": 1, "msgpack": 2, "pickle": 3}

#: One entry as it is written: ``(redis key, bytes or None for "delete", PX ms or None for
#: no expiry)``.
Encoded = tuple[str, bytes | None, int | None]

#: The largest value (its codec's bytes) a Redis tier keeps by default: memcached's item limit.
#: Redis itself takes up to 512 MB (``proto-max-bulk-len``), but a value that large is sent
#: and read within the tier's ``timeout`` (50 ms by default) by no network: a write of 600 MB
#: was reset by Redis after 25 s and counted as the tier failing (five open its breaker for
#: every key), and a value that is kept but takes longer than the timeout to read fails every
#: read of it the same way. A value over the bound is not kept (see :meth:`StoredFormat.encode`).
MAX_VALUE_SIZE = 1024 * 1024


class Payload:
    """A value with its codec's bytes, made by one :class:`StoredFormat`
    (:meth:`StoredFormat.payload`): what a write's check hands on to the write's fill, so the
    value is encoded once. Its fill stores these bytes, not a second encoding of the value
    (which could differ: a value changed since the check, a codec that is not deterministic)."""

    __slots__ = ("data", "maker", "value")

    def __init__(self, value: Any, data: bytes, maker: StoredFormat) -> None:
        self.value = value
        self.data = data
        self.maker = maker


class StoredOptions(TypedDict, total=False):
    """What a Redis tier stores and how long, as its keyword arguments (both tiers take them
    as ``**stored`` and hand them on to :class:`StoredFormat` untouched, so a setting of the
    stored format is declared here and in :class:`StoredFormat` only)."""

    name: str
    namespace: str
    ttl: DurationLike | None
    ttl_jitter: float
    codec: Codec | str
    rng: random.Random | None
    max_value_size: int | str | None


class StoredFormat:
    """Key naming, the stored bytes and their TTL for one Redis tier.

    Args:
        name: the tier's name (in logs).
        namespace: the key prefix (escaped).
        ttl: the longest Redis keeps an entry, in seconds or text such as ``"1h"``; ``None``:
            the hard expiry alone.
        ttl_jitter: shorten each TTL by up to this fraction at random.
        codec: a :class:`~tiered_cache.codecs.Codec` or its name.
        rng: the jitter's randomness.
        max_value_size: the most bytes a value's encoding may have to be kept (None: any),
            or text such as ``"1MiB"``; a larger one is not kept, as an entry past its ttl is
            not.

    ``ttl``, ``ttl_jitter`` and ``max_value_size`` are checked by the rules of a config
    file's Redis tier (:class:`~tiered_cache_redis.settings.RedisTierSettings`): one they
    refuse raises :class:`~tiered_cache.ConfigError` naming it (``ttl: ...``), never its value.
    """

    def __init__(
        self,
        name: str = "redis",
        *,
        namespace: str = "default",
        ttl: DurationLike | None = 3600.0,
        ttl_jitter: float = 0.0,
        codec: Codec | str = "json",
        rng: random.Random | None = None,
        max_value_size: int | str | None = MAX_VALUE_SIZE,
    ) -> None:
        # The rules of a config file's Redis tier, its settings' own (here, not at the top:
        # the settings import this module for MAX_VALUE_SIZE). Copied here, they took a NaN
        # or infinite ttl, which made every write fail.
        from .settings import RedisTierSettings

        self._ttl: float | None = checked(RedisTierSettings, "ttl", ttl)
        self._jitter: float = checked(RedisTierSettings, "ttl_jitter", ttl_jitter)
        self._max_value_size: int | None = checked(
            RedisTierSettings, "max_value_size", max_value_size
        )
        self.name = name
        self.namespace = check_namespace(namespace)  # else every key of it would fail
        #: Prepended to every key (``redis_key(key) == prefix + key``).
        self.prefix = namespace_prefix(namespace)
        self.codec = get_codec(codec) if isinstance(codec, str) else codec
        self._codec_id = CODEC_IDS.get(self.codec.name, 0)
        self._decode_batch = batch_decoder(self.codec)
        self._rng = rng or random.Random()
        #: Entries read that could not be decoded, values not kept for their size (see
        #: :meth:`report`), by their log event; a lock, since reads and writes of several
        #: threads count (a rare path: a miss, or a value not kept, already).
        self._counts = {"undecodable": 0, "too_large": 0}
        self._count_lock = threading.Lock()

    def report(self) -> dict[str, int]:
        """``{"undecodable": n, "too_large": m}``: values read that this tier could not
        decode (another program's or another codec's bytes, corrupt data), each served as a
        miss; values not kept for their size (over ``max_value_size``). For ``stats()`` and
        the exporters (``tier_undecodable``, ``tier_too_large``), where they were plain misses."""
        with self._count_lock:
            return dict(self._counts)

    def check(self, keys: Iterable[str]) -> None:
        """Refuse a key UTF-8 cannot encode before it is sent, as a chain's face does (the
        asyncio tier: its reads and leases of one loop tick leave together, and one such key
        would fail them all)."""
        check_keys(keys, repr(self.name))

    def refused(self, keys: Iterable[str], exc: UnicodeEncodeError) -> Exception:
        """The error for a call whose keys redis-py could not encode: a chain refuses a key
        UTF-8 cannot encode before any tier sees it (UnencodableKey, naming the problem, not
        the key), and a tier used alone refuses it the same way; ``exc`` if no key is one."""
        try:
            check_keys(keys, repr(self.name))
        except UnencodableKey as refused:
            return refused
        return exc

    def decode(self, key: str, data: bytes, now: float) -> Entry | MissingType:
        """The entry in ``data``; ``MISSING`` for one expired by ``now`` or that this tier
        cannot read (logged: another format or codec, corrupt bytes -- the next fill
        overwrites it)."""
        # The checks of read_many, in its order: the unpack itself tells a short value
        # (struct.error, free when none is raised, where a length test and a slice of the
        # prefix cost about 1,500 instructions a get), the magic and format are read from it.
        try:
            magic, form, codec_id, loaded_at, soft, hard, duration, expire_at, version = _unpack(
                data
            )
        except struct.error:
            return self._unreadable(key, UNKNOWN_FORMAT)
        if magic != MAGIC or form != FORMAT:
            return self._unreadable(key, UNKNOWN_FORMAT)
        # Redis expires keys on its own clock; the tier must also honour the chain's clock.
        if now >= expire_at:
            return MISSING
        if codec_id != self._codec_id:
            return self._unreadable(key, other_codec(codec_id))
        try:
            value = self.codec.decode(data[_HEADER_SIZE:])
        except CodecError as exc:
            return self._unreadable(key, f"cannot be decoded ({exc})")
        return Entry(value, loaded_at, soft, hard, duration, version)

    def _unreadable(self, key: str, why: str) -> MissingType:
        self._counted("undecodable", key, " %s; a miss", why)
        return MISSING

    def _too_large_value(self, key: str, size: int, limit: int) -> Encoded:
        self._counted(
            "too_large",
            key,
            ": a value of %d bytes, over max_value_size (%d): not kept",
            size,
            limit,
        )
        return self.prefix + key, None, None

    def _counted(self, event: str, key: str, what: str, *args: object) -> None:
        """Count ``event`` (:meth:`report`) and log it, the key named by its hash only."""
        with self._count_lock:
            self._counts[event] += 1
        log.warning(
            "tier %r: key %s" + what,
            self.name,
            key_hash(key),
            *args,
            extra=fields(event, key=key, tier=self.name),
        )

    def decode_many(
        self, keys: Sequence[str], values: Sequence[bytes | None], now: float
    ) -> dict[str, Entry]:
        """The live entries of an MGET's ``values`` (in the order of ``keys``), as
        :meth:`decode` would give each: the headers are read by the core's compiled
        :func:`tiered_cache.framing.read_many`, the payloads decoded by the codec in one batch
        (:meth:`~tiered_cache.codecs.CodecBase.decode_many`); a value that cannot be read is a
        logged miss of its own key only."""
        return read_many(
            keys,
            values,
            codec_id=self._codec_id,
            now=now,
            decode_batch=self._decode_batch,
            refuse=self._unreadable,
        )

    def payload(self, value: Any) -> Payload:
        """``value`` encoded by the codec, once; raises :class:`~tiered_cache.CodecError` for
        one it cannot hold. A chain's write asks it before anything is sent (the tiers'
        ``prepare_value``) and hands the :class:`Payload` to the write's fill as the entry's
        value, which :meth:`encode` then stores as it is."""
        return Payload(value, self.codec.encode(value), self)

    def encode(self, key: str, entry: Entry, now: float) -> Encoded:
        """How ``entry`` is written at ``now``; raises :class:`~tiered_cache.CodecError` for a
        value the codec (or the header) cannot hold. Every write and fill of both tiers is
        encoded here: the one home of the size bound. An entry whose value is this format's
        :class:`Payload` (a write's, made by its check) is not encoded again. A value over
        ``max_value_size`` is written as an entry past its ttl is, as a delete (the key's
        older copy must not stay to be served), counted and logged; the write itself goes on
        (the source has it, the other tiers keep it as they may)."""
        value = entry.value
        if type(value) is Payload:
            # Another format's (another tier's check: a bug) is encoded here, with this codec.
            payload = value.data if value.maker is self else self.codec.encode(value.value)
        else:
            payload = self.codec.encode(value)
        limit = self._max_value_size
        if limit is not None and len(payload) > limit:
            return self._too_large_value(key, len(payload), limit)
        expire_at = entry.hard_expiry
        if self._ttl is not None:
            ttl = self._ttl
            if self._jitter:
                ttl *= 1.0 - self._jitter * self._rng.random()
            expire_at = min(expire_at, now + ttl)
        name = self.prefix + key
        if expire_at <= now:
            return name, None, None
        try:
            header = HEADER.pack(
                MAGIC,
                FORMAT,
                self._codec_id,
                entry.loaded_at,
                entry.soft_expiry,
                entry.hard_expiry,
                entry.load_duration,
                expire_at,
                entry.version,
            )
        except struct.error as exc:
            raise CodecError(
                f"entry of key {key!r}: its metadata does not fit the Redis tier's header "
                f"(version must be a 64-bit int, times numbers): {exc}"
            ) from None
        px = None if math.isinf(expire_at) else max(1, math.ceil((expire_at - now) * 1000))
        return name, header + payload, px
