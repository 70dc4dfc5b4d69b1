"""The Redis tier: a small binary header plus codec bytes under ``<namespace>:<key>``.

The namespace is escaped (``app:v2`` is stored as ``app\\:v2:``, see
:func:`tiered_cache.keys.namespace_prefix`), so that no namespace reads or clears another's keys.
"""

from __future__ import annotations

import builtins
import logging
import math
import random
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from redis.cluster import RedisCluster

from tiered_cache.codecs import Codec, get_codec
from tiered_cache.errors import CodecError, TierUnavailable
from tiered_cache.keys import namespace_prefix
from tiered_cache.logs import fields, key_hash
from tiered_cache.tier import MISSING, Entry, MissingType, TierBase

from .client import RedisClient, close_client
from .lease_batches import (
    acquire_calls,
    batch_failure,
    fill_calls,
    fill_outcome,
    looks,
    plan_fills,
    taken_on_failure,
)
from .leases import (
    ACQUIRE_AND_GET,
    FILL_IF_HOLDING,
    RELEASE_IF_HOLDING,
    cluster_safe,
    lease_key,
)
from .wire import Reads, reads_for

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# magic, format, codec id, loaded_at, soft_expiry, hard_expiry, load_duration, expire_at, version.
# Fixed-size and little-endian: unpacking it costs one struct call on the hot read path.
_HEADER = struct.Struct("<2sBBdddddq")
_MAGIC = b"tc"
_FORMAT = 1
_PREFIX = _MAGIC + bytes([_FORMAT])
#: Codec ids in the header, so a reader never decodes another codec's bytes (0: any other codec).
CODEC_IDS = {"json": 1, "msgpack": 2, "pickle": 3}
#: Keys deleted per UNLINK by clear().
_CLEAR_BATCH = 500
# Characters that SCAN MATCH treats as a pattern.
_GLOB_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\*?[]^"})


class RedisTier(TierBase):
    """A tier in Redis or Redis Cluster (the :class:`tiered_cache.Tier` protocol).

    Capabilities (:class:`~tiered_cache.tier.TierBase`): leases (and their batch forms), and
    ``delete_prefix`` by SCAN; it is shared between processes (not ``local``).

    Args:
        client: a redis-py ``Redis`` or ``RedisCluster`` (with ``decode_responses=False``).
        connect: instead of ``client``, makes one on first use (so a cluster that is down when
            the service starts makes calls fail, not the start).
        name: the tier's name in stats and logs.
        namespace: the key prefix; each key is stored as ``<namespace>:<key>``, with ``\\``
            and ``:`` in the namespace escaped by a backslash.
        ttl: the longest Redis keeps an entry, in seconds; never beyond the entry's hard
            expiry. ``None``: the hard expiry alone.
        ttl_jitter: shorten each TTL by up to this fraction at random.
        codec: a :class:`~tiered_cache.codecs.Codec` or its name.
        clock: seconds; expiry is judged by this clock (and Redis expires keys on its own time).
        owns_client: close the client in :meth:`close`.

    Connection errors and timeouts propagate (as redis-py's exceptions): the chain and the
    circuit breaker decide what they mean. Only data this tier cannot read (another format or
    codec, corrupt bytes) is logged and treated as a miss, so that the next fill overwrites it.
    """

    leases = True

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        connect: Callable[[], RedisClient] | None = None,
        name: str = "redis",
        namespace: str = "default",
        ttl: float | None = 3600.0,
        ttl_jitter: float = 0.0,
        codec: Codec | str = "json",
        clock: Clock = time.time,
        rng: random.Random | None = None,
        owns_client: bool = True,
    ) -> None:
        if not 0.0 <= ttl_jitter < 1.0:
            raise ValueError("ttl_jitter must be in [0, 1)")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive (or None)")
        self.name = name
        self._namespace = namespace
        self._prefix = namespace_prefix(namespace)
        self._ttl = ttl
        self._jitter = ttl_jitter
        self._codec = get_codec(codec) if isinstance(codec, str) else codec
        self._codec_id = CODEC_IDS.get(self._codec.name, 0)
        self._clock = clock
        self._rng = rng or random.Random()
        self._owns_client = owns_client
        self._lock = threading.Lock()
        if (client is None) == (connect is None):
            raise TypeError("pass either client or connect")
        self._client = client
        self._connect = connect
        self._closed = False
        self._reads: Reads | None = None
        self._acquire_script: Any = None
        self._fill_script: Any = None
        self._release_script: Any = None

    # -- properties

    @property
    def client(self) -> RedisClient:
        """The redis-py client (shared with leases and the invalidation bus); made on first use."""
        client = self._client
        if client is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"tier {self.name!r} is closed")
                if self._client is None:
                    assert self._connect is not None
                    self._client = self._connect()
                client = self._client
        return client

    @property
    def namespace(self) -> str:
        """The namespace (as given: unescaped, without the ``:``)."""
        return self._namespace

    @property
    def codec(self) -> Codec:
        """The codec values are stored with."""
        return self._codec

    @property
    def is_cluster(self) -> bool:
        """True when the client is a Redis Cluster client."""
        return isinstance(self.client, RedisCluster)

    def _read_path(self) -> Reads:
        """How reads reach Redis (:mod:`tiered_cache_redis.wire`), chosen on the first read."""
        client = self.client
        with self._lock:
            if self._reads is None:
                self._reads = reads_for(client)
            return self._reads

    def redis_key(self, key: str) -> str:
        """The Redis key that holds ``key``."""
        return self._prefix + key

    # -- reads

    def get(self, key: str) -> Entry | MissingType:
        data = (self._reads or self._read_path()).get(self._prefix + key)
        if data is None:
            return MISSING
        return self._decode(key, data, self._clock())

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        prefix = self._prefix
        # One MGET (on a cluster: one per hash slot, pipelined per node).
        values = (self._reads or self._read_path()).mget([prefix + key for key in keys])
        now = self._clock()
        decode = self._decode
        found: dict[str, Entry] = {}
        for key, data in zip(keys, values, strict=True):
            if data is not None:
                entry = decode(key, data, now)
                if entry is not MISSING:
                    found[key] = entry
        return found

    def _decode(self, key: str, data: bytes, now: float) -> Entry | MissingType:
        if len(data) < _HEADER.size or data[:3] != _PREFIX:
            log.warning(
                "tier %r: key %s holds data in an unknown format; a miss",
                self.name,
                key_hash(key),
                extra=fields("undecodable", key=key, tier=self.name),
            )
            return MISSING
        _, _, codec_id, loaded_at, soft, hard, duration, expire_at, version = _HEADER.unpack_from(
            data
        )
        # Redis expires keys on its own clock; the tier must also honour the chain's clock.
        if now >= expire_at:
            return MISSING
        if codec_id != self._codec_id:
            log.warning(
                "tier %r: key %s was written with another codec (id %d); a miss",
                self.name,
                key_hash(key),
                codec_id,
                extra=fields("undecodable", key=key, tier=self.name),
            )
            return MISSING
        try:
            value = self._codec.decode(data[_HEADER.size :])
        except CodecError as exc:
            log.warning(
                "tier %r: key %s cannot be decoded (%s); a miss",
                self.name,
                key_hash(key),
                exc,
                extra=fields("undecodable", key=key, tier=self.name),
            )
            return MISSING
        return Entry(value, loaded_at, soft, hard, duration, version)

    # -- writes

    def set(self, key: str, entry: Entry) -> None:
        name, data, px = self._encode(key, entry, self._clock())
        # A write supersedes any load in flight elsewhere: dropping the lease makes that
        # load's fill_with_lease fail instead of overwriting this newer value.
        pipe = self.client.pipeline(transaction=False)
        if data is None:
            pipe.unlink(name)
        else:
            pipe.set(name, data, px=px)
        pipe.unlink(lease_key(name))
        pipe.execute()

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        if not entries:
            return
        now = self._clock()
        # Everything is encoded before anything is sent: one bad value writes nothing.
        encoded = [self._encode(key, entry, now) for key, entry in entries.items()]
        client = self.client
        pipe = client.pipeline(transaction=False)
        for name, data, px in encoded:
            if data is None:
                pipe.unlink(name)
            else:
                pipe.set(name, data, px=px)
        leases = [lease_key(name) for name, _, _ in encoded]
        if isinstance(client, RedisCluster):
            for lease in leases:  # one slot per command on a cluster
                pipe.unlink(lease)
        else:
            pipe.unlink(*leases)
        pipe.execute()

    def _encode(self, key: str, entry: Entry, now: float) -> tuple[str, bytes | None, int | None]:
        """``(redis key, bytes or None for "delete", PX milliseconds or None for no expiry)``."""
        payload = self._codec.encode(entry.value)
        expire_at = entry.hard_expiry
        if self._ttl is not None:
            ttl = self._ttl
            if self._jitter:
                ttl *= 1.0 - self._jitter * self._rng.random()
            expire_at = min(expire_at, now + ttl)
        name = self._prefix + key
        if expire_at <= now:
            return name, None, None
        try:
            header = _HEADER.pack(
                _MAGIC,
                _FORMAT,
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

    # -- deletes

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> None:
        # The lease goes with the key: a load that read the source before this invalidation
        # can then no longer fill (see leases.py).
        if keys:
            names = [self._prefix + key for key in keys]
            self._unlink(names + [lease_key(name) for name in names])

    # -- leases (tiered_cache.leases.LeasingTier)

    def can_lease(self, key: str) -> bool:
        """False for a key with braces of its own on a cluster: its lease (a hash-tagged key)
        could not share its slot."""
        return not self.is_cluster or cluster_safe(self._prefix + key)

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        """Take ``key``'s lease if nobody holds it, and read the key: one round trip.

        Returns ``(token or None, the entry or MISSING)``.
        """
        name = self._prefix + key
        self._check_lease_possible(name)
        token = uuid.uuid4().hex
        if self._acquire_script is None:
            self._acquire_script = self.client.register_script(ACQUIRE_AND_GET)
        taken, data = self._acquire_script(
            keys=[name, lease_key(name)], args=[token, max(1, int(ttl * 1000))]
        )
        entry = MISSING if not data else self._decode(key, data, self._clock())
        return (token if taken else None), entry

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        """Store ``entry`` and drop the lease, only while ``token`` holds it (atomically)."""
        name, data, px = self._encode(key, entry, self._clock())
        if data is None:
            # Nothing to keep; an older copy must not outlive this fill either.
            self.client.unlink(name)
            self.release_lease(key, token)
            return True
        if self._fill_script is None:
            self._fill_script = self.client.register_script(FILL_IF_HOLDING)
        filled = self._fill_script(keys=[name, lease_key(name)], args=[token, data, px or 0])
        return bool(filled)

    def steal_lease(self, key: str, ttl: float) -> str:
        """Take ``key``'s lease whoever holds it (for a write): one ``SET PX``."""
        name = self._prefix + key
        self._check_lease_possible(name)
        token = uuid.uuid4().hex
        self.client.set(lease_key(name), token, px=max(1, int(ttl * 1000)))
        return token

    def release_lease(self, key: str, token: str) -> None:
        """Drop the lease if ``token`` still holds it."""
        name = self._prefix + key
        if self._release_script is None:
            self._release_script = self.client.register_script(RELEASE_IF_HOLDING)
        self._release_script(keys=[lease_key(name)], args=[token])

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        """:meth:`acquire_lease` for each key: one pipelined round trip (one per key on a
        cluster, where a pipeline of scripts would have to be split by node)."""
        names = [self._prefix + key for key in keys]
        for name in names:
            self._check_lease_possible(name)
        if self._acquire_script is None:
            self._acquire_script = self.client.register_script(ACQUIRE_AND_GET)
        px = max(1, int(ttl * 1000))
        tokens = [uuid.uuid4().hex for _ in keys]
        replies = self._run_scripts(self._acquire_script, acquire_calls(names, tokens, px))
        failure = taken_on_failure(keys, tokens, replies)
        if failure is not None:
            self._release_quietly(failure[0])
            raise batch_failure(self.name, failure[1])
        now = self._clock()
        return looks(keys, tokens, replies, lambda key, data: self._decode(key, data, now))

    def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> builtins.set[str]:
        """:meth:`fill_with_lease` for each key, every value encoded before the one round trip.

        Raises :class:`~tiered_cache.leases.PartialFill` (with the keys that were written) when
        some fills failed; their leases are given back, so that nobody waits for them.
        """
        now = self._clock()
        expired, fills = plan_fills(entries, lambda key, entry: self._encode(key, entry, now))
        kept = set(expired)  # nothing to store: nothing another writer could lose
        if expired:
            self._release_quietly(expired)
        if not fills:
            return kept
        if self._fill_script is None:
            self._fill_script = self.client.register_script(FILL_IF_HOLDING)
        replies = self._run_scripts(self._fill_script, fill_calls(fills))
        kept, failed, error = fill_outcome(self.name, fills, replies, kept)
        if error is not None:
            self._release_quietly(failed)
            raise error
        return kept

    def release_leases(self, tokens: Mapping[str, str]) -> None:
        """:meth:`release_lease` for each key."""
        if self._release_script is None:
            self._release_script = self.client.register_script(RELEASE_IF_HOLDING)
        self._run_scripts(
            self._release_script,
            [([lease_key(self._prefix + key)], [token]) for key, token in tokens.items()],
        )

    def _release_quietly(self, tokens: Mapping[str, str]) -> None:
        """Best-effort release on a path that is already failing: its own error is logged."""
        if not tokens:
            return
        try:
            self.release_leases(tokens)
        except Exception as exc:  # the caller raises the first failure; the leases expire
            log.debug("tier %r: releasing %d leases failed: %s", self.name, len(tokens), exc)

    def _run_scripts(self, script: Any, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)``: pipelined on one server, one call at a time
        on a cluster. A call that failed has its exception in its place; on a cluster the
        calls stop at the first failure (the list is then shorter than ``calls``)."""
        if not calls:
            return []
        if self.is_cluster:
            replies: list[Any] = []
            for keys, args in calls:
                try:
                    replies.append(script(keys=keys, args=args))
                except Exception as exc:
                    replies.append(exc)
                    break
            return replies
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return cast(list[Any], pipe.execute(raise_on_error=False))

    def _check_lease_possible(self, name: str) -> None:
        if not cluster_safe(name) and self.is_cluster:
            raise TierUnavailable(
                f"tier {self.name!r}: key {name!r} has braces of its own, so its lease cannot "
                "share its cluster slot; loading it without a lease"
            )

    def _unlink(self, names: Sequence[str]) -> None:
        client = self.client
        if isinstance(client, RedisCluster):
            # A multi-key UNLINK must stay within one slot; a cluster pipeline of single-key
            # UNLINKs costs one round trip per node instead.
            pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
            for name in names:
                pipe.unlink(name)
            pipe.execute()
        else:
            client.unlink(*names)

    def delete_prefix(self, prefix: str) -> None:
        """Delete the keys starting with ``prefix`` and their leases: SCAN + UNLINK.

        The leases are scanned for too: a key being loaded for the first time has a lease and
        no data yet, and its load must not fill after this delete (see leases.py).
        """
        self._unlink_matching(self._prefix + prefix)

    def clear(self) -> None:
        """Delete this namespace's keys and leases (SCAN + UNLINK, every node of a cluster);
        never FLUSHDB."""
        self._unlink_matching(self._prefix)

    def _unlink_matching(self, start: str) -> None:
        # The leases ("{ns:key}:lease") first: a fill under a lease that lands before its lease
        # is unlinked wrote data that the data scan then finds; one after it fails.
        for first in ("{" + start, start):
            pattern = first.translate(_GLOB_SPECIAL) + "*"
            names = list(self.client.scan_iter(match=pattern, count=1000))
            for batch in _batches(names, _CLEAR_BATCH):
                texts = [name.decode() if isinstance(name, bytes) else str(name) for name in batch]
                if first == start:
                    texts += [lease_key(name) for name in texts]
                self._unlink(texts)

    def close(self) -> None:
        """Close the connection pool (if this tier owns the client); idempotent."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            reads, self._reads = self._reads, None
        if reads is not None:
            reads.close()
        if client is not None and self._owns_client:
            close_client(client)

    def __repr__(self) -> str:
        return f"RedisTier(name={self.name!r}, namespace={self._namespace!r})"


def _batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
