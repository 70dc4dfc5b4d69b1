"""The Redis tier on ``redis.asyncio``, for :class:`~tiered_cache.AsyncTieredCache`.

The stored format, the key naming, the codecs, the Lua scripts of the leases and the reading
of their batch replies are the sync :class:`~tiered_cache_redis.RedisTier`'s own (this tier
holds one, unconnected, for its format): a key written by either tier is read by the other,
so sync and async services share one Redis. Only the round trips are awaited.
"""

from __future__ import annotations

import builtins
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeAlias, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tiered_cache.async_tier import AsyncTierBase
from tiered_cache.codecs import Codec
from tiered_cache.errors import TierUnavailable
from tiered_cache.tier import MISSING, Entry, MissingType

from .client import client_options, parse_url
from .lease_batches import (
    acquire_calls,
    batch_failure,
    fill_calls,
    fill_outcome,
    looks,
    plan_fills,
    taken_on_failure,
)
from .leases import ACQUIRE_AND_GET, FILL_IF_HOLDING, RELEASE_IF_HOLDING, cluster_safe, lease_key
from .tier import _GLOB_SPECIAL, RedisTier, _batches

log = logging.getLogger(__name__)

#: A client the async Redis tier can use.
AsyncRedisClient: TypeAlias = "aioredis.Redis | AsyncRedisCluster"

#: Keys deleted per UNLINK by clear().
_CLEAR_BATCH = 500


def make_async_client(
    url: str,
    *,
    cluster: bool = False,
    timeout: float = 0.05,
    connect_timeout: float | None = None,
    pool_size: int = 50,
) -> AsyncRedisClient:
    """A ``redis.asyncio`` client for ``url`` with the sync tier's fail-fast options
    (:func:`~tiered_cache_redis.client.client_options`); neither kind connects until used."""
    target = parse_url(url, cluster=cluster)
    options = client_options(timeout=timeout, connect_timeout=connect_timeout, pool_size=pool_size)
    options["retry"] = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    if target.cluster:
        return AsyncRedisCluster.from_url(target.url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(target.url, timeout=timeout, **options)
    return aioredis.Redis.from_pool(pool)


def _unconnected() -> NoReturn:  # pragma: no cover - the format tier never does I/O
    raise RuntimeError("the async tier's format holder has no connection")


class AsyncRedisTier(AsyncTierBase):
    """A tier in Redis or Redis Cluster with native asyncio I/O (the
    :class:`~tiered_cache.AsyncTier` protocol, leases included). Arguments as
    :class:`~tiered_cache_redis.RedisTier`, with a ``redis.asyncio`` client."""

    leases = True

    def __init__(
        self,
        client: AsyncRedisClient | None = None,
        *,
        connect: Callable[[], AsyncRedisClient] | None = None,
        name: str = "redis",
        namespace: str = "default",
        ttl: float | None = 3600.0,
        ttl_jitter: float = 0.0,
        codec: Codec | str = "json",
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        owns_client: bool = True,
    ) -> None:
        if (client is None) == (connect is None):
            raise TypeError("pass either client or connect")
        # The stored format (header, codec, TTLs, key prefix) is the sync tier's.
        self._format = RedisTier(
            connect=_unconnected,
            name=name,
            namespace=namespace,
            ttl=ttl,
            ttl_jitter=ttl_jitter,
            codec=codec,
            clock=clock,
            rng=rng,
            owns_client=False,
        )
        self.name = name
        self._prefix = self._format.redis_key("")
        self._clock = clock
        self._client = client
        self._connect = connect
        self._owns_client = owns_client
        self._closed = False
        self._scripts: dict[str, Any] = {}

    @property
    def client(self) -> AsyncRedisClient:
        """The ``redis.asyncio`` client; made on first use."""
        if self._client is None:
            if self._closed:
                raise RuntimeError(f"tier {self.name!r} is closed")
            assert self._connect is not None
            self._client = self._connect()
        return self._client

    @property
    def is_cluster(self) -> bool:
        """True when the client is a Redis Cluster client."""
        return isinstance(self.client, AsyncRedisCluster)

    @property
    def namespace(self) -> str:
        """The namespace (as given)."""
        return self._format.namespace

    def redis_key(self, key: str) -> str:
        """The Redis key that holds ``key`` (the sync tier's)."""
        return self._prefix + key

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    def _decode(self, key: str, data: bytes, now: float) -> Entry | MissingType:
        return self._format._decode(key, data, now)

    # -- reads

    async def get(self, key: str) -> Entry | MissingType:
        data = await self.client.get(self._prefix + key)
        if data is None:
            return MISSING
        return self._decode(key, cast(bytes, data), self._clock())

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        client = self.client
        names = [self._prefix + key for key in keys]
        if isinstance(client, AsyncRedisCluster):
            values = await client.mget_nonatomic(names)
        else:
            values = await client.mget(names)
        now = self._clock()
        found: dict[str, Entry] = {}
        for key, data in zip(keys, values, strict=True):
            if data is not None:
                entry = self._decode(key, data, now)
                if entry is not MISSING:
                    found[key] = entry
        return found

    # -- writes

    async def set(self, key: str, entry: Entry) -> None:
        await self.set_many({key: entry})

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        if not entries:
            return
        now = self._clock()
        # Everything is encoded before anything is sent: one bad value writes nothing.
        encoded = [self._format._encode(key, entry, now) for key, entry in entries.items()]
        client = self.client
        pipe = client.pipeline(transaction=False)
        # UNLINK through execute_command: a cluster pipeline's own unlink() is a coroutine
        # (it would run at once), the command queues like the others.
        for name, data, px in encoded:
            if data is None:
                pipe.execute_command("UNLINK", name)
            else:
                pipe.set(name, data, px=px)
        # A write supersedes any load in flight elsewhere: its lease goes (see leases.py).
        for name, _, _ in encoded:  # one slot per command on a cluster
            pipe.execute_command("UNLINK", lease_key(name))
        await pipe.execute()

    async def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            names = [self._prefix + key for key in keys]
            await self._unlink(names + [lease_key(name) for name in names])

    # -- leases

    def can_lease(self, key: str) -> bool:
        """False for a key with braces of its own on a cluster (see the sync tier)."""
        return not self.is_cluster or cluster_safe(self._prefix + key)

    def _check_lease_possible(self, name: str) -> None:
        if not cluster_safe(name) and self.is_cluster:
            raise TierUnavailable(
                f"tier {self.name!r}: key {name!r} has braces of its own, so its lease cannot "
                "share its cluster slot; loading it without a lease"
            )

    async def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        return (await self.acquire_leases([key], ttl))[key]

    async def steal_lease(self, key: str, ttl: float) -> str:
        name = self._prefix + key
        self._check_lease_possible(name)
        token = uuid.uuid4().hex
        await self.client.set(lease_key(name), token, px=max(1, int(ttl * 1000)))
        return token

    async def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        return key in await self.fill_with_leases({key: (entry, token)})

    async def release_lease(self, key: str, token: str) -> None:
        await self.release_leases({key: token})

    async def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        names = [self._prefix + key for key in keys]
        for name in names:
            self._check_lease_possible(name)
        tokens = [uuid.uuid4().hex for _ in keys]
        px = max(1, int(ttl * 1000))
        replies = await self._run_scripts(ACQUIRE_AND_GET, acquire_calls(names, tokens, px))
        failure = taken_on_failure(keys, tokens, replies)
        if failure is not None:
            await self._release_quietly(failure[0])
            raise batch_failure(self.name, failure[1])
        now = self._clock()
        return looks(keys, tokens, replies, lambda key, data: self._decode(key, data, now))

    async def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> builtins.set[str]:
        now = self._clock()
        expired, fills = plan_fills(
            entries, lambda key, entry: self._format._encode(key, entry, now)
        )
        kept = set(expired)  # nothing to store: nothing another writer could lose
        if expired:
            # Nothing to keep; an older copy must not outlive this fill either.
            await self._unlink([self._prefix + key for key in expired])
            await self._release_quietly(expired)
        if not fills:
            return kept
        replies = await self._run_scripts(FILL_IF_HOLDING, fill_calls(fills))
        kept, failed, error = fill_outcome(self.name, fills, replies, kept)
        if error is not None:
            await self._release_quietly(failed)
            raise error
        return kept

    async def release_leases(self, tokens: Mapping[str, str]) -> None:
        await self._run_scripts(
            RELEASE_IF_HOLDING,
            [([lease_key(self._prefix + key)], [token]) for key, token in tokens.items()],
            raise_first=True,
        )

    async def _release_quietly(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            return
        try:
            await self.release_leases(tokens)
        except Exception as exc:  # the caller raises the first failure; the leases expire
            log.debug("tier %r: releasing %d leases failed: %s", self.name, len(tokens), exc)

    async def _run_scripts(
        self,
        source: str,
        calls: Sequence[tuple[list[str], list[Any]]],
        *,
        raise_first: bool = False,
    ) -> list[Any]:
        """As the sync tier's: pipelined on one server, one call at a time on a cluster
        (stopping at the first failure); a failed call has its exception in its place."""
        if not calls:
            return []
        script = self._script(source)
        replies: list[Any] = []
        if self.is_cluster:
            for keys, args in calls:
                try:
                    replies.append(await script(keys=keys, args=args))
                except Exception as exc:
                    if raise_first:
                        raise
                    replies.append(exc)
                    break
            return replies
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            await script(keys=keys, args=args, client=pipe)
        replies = await pipe.execute(raise_on_error=raise_first)
        return replies

    # -- deletes

    async def _unlink(self, names: Sequence[str]) -> None:
        client = self.client
        if isinstance(client, AsyncRedisCluster):
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.execute_command("UNLINK", name)  # queued (see set_many)
            await pipe.execute()
        else:
            await client.unlink(*names)

    async def delete_prefix(self, prefix: str) -> None:
        """Delete the keys starting with ``prefix`` and their leases: SCAN + UNLINK."""
        await self._unlink_matching(self._prefix + prefix)

    async def clear(self) -> None:
        """Delete this namespace's keys and leases (never FLUSHDB)."""
        await self._unlink_matching(self._prefix)

    async def _unlink_matching(self, start: str) -> None:
        # The leases first, as the sync tier does (see its _unlink_matching).
        for first in ("{" + start, start):
            pattern = first.translate(_GLOB_SPECIAL) + "*"
            names = [name async for name in self.client.scan_iter(match=pattern, count=1000)]
            for batch in _batches(names, _CLEAR_BATCH):
                texts = [name.decode() if isinstance(name, bytes) else str(name) for name in batch]
                if first == start:
                    texts += [lease_key(name) for name in texts]
                await self._unlink(texts)

    async def aclose(self) -> None:
        """Close the connections (if this tier owns the client); idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

    def __repr__(self) -> str:
        return f"AsyncRedisTier(name={self.name!r}, namespace={self.namespace!r})"
