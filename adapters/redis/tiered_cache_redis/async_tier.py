"""The Redis tier on ``redis.asyncio``, for :class:`~tiered_cache.AsyncTieredCache`.

The stored format and key naming (:mod:`tiered_cache_redis.stored`) and what the writes,
deletes and leases send (:mod:`tiered_cache_redis.commands`, run here with ``arun``) are the
sync :class:`~tiered_cache_redis.RedisTier`'s own: a key written by either tier is read by
the other, so sync and async services share one Redis. This module only does the I/O.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar, Unpack, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tiered_cache.async_tier import AsyncTierBase
from tiered_cache.forking import keep_from_the_parent, restart_after_fork
from tiered_cache.logs import tier_logger
from tiered_cache.loop_end import LoopEnd
from tiered_cache.loops import CancellationKept
from tiered_cache.steps import Steps, arun
from tiered_cache.tier import MISSING, Entry, MissingType
from tiered_cache.units import DurationLike

from .async_coalesce import CoalescedReads
from .async_fork import forget_the_parents_connections, parents_client_error
from .async_leases import CoalescedLeases
from .async_left import close_a_left_loops_connections, drop_a_closed_loops_connections
from .async_wire import AsyncReads, async_reads_for
from .chunks import KEYS_PER_CALL, read_chunks, read_outcome
from .client import client_options, parse_url
from .commands import Command, TierCommands
from .in_flight import CallsInFlight, closed_error, current_task
from .lease_batches import Call
from .stored import Payload, StoredFormat, StoredOptions
from .unanswered import send_unanswered

T = TypeVar("T")

#: A client the async Redis tier can use.
AsyncRedisClient: TypeAlias = "aioredis.Redis | AsyncRedisCluster"

#: How long, in seconds, each step of the give-back of a loop's unused leases as that loop
#: ends (:meth:`AsyncRedisTier._give_back_the_loops_leases`) waits for Redis at most, whatever
#: the client's own timeouts: on a client made by hand with none, a stalled Redis held the
#: loop's end for as long as it stalled.
LOOP_END_WAIT = 0.5


def make_async_client(
    url: str,
    *,
    cluster: bool = False,
    timeout: DurationLike = 0.05,
    connect_timeout: DurationLike | None = None,
    pool_size: int = 50,
) -> AsyncRedisClient:
    """A ``redis.asyncio`` client for ``url`` with the sync tier's fail-fast options
    (:func:`~tiered_cache_redis.client.client_options`); neither kind connects until used."""
    target = parse_url(url, cluster=cluster)
    options = client_options(timeout=timeout, connect_timeout=connect_timeout, pool_size=pool_size)
    options["retry"] = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    if target.cluster:
        return AsyncRedisCluster.from_url(target.url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        target.url, timeout=options["socket_timeout"], **options
    )
    return aioredis.Redis.from_pool(pool)


class AsyncRedisTier(AsyncTierBase):
    """A tier in Redis or Redis Cluster with native asyncio I/O (the
    :class:`~tiered_cache.AsyncTier` protocol, leases included). Arguments as
    :class:`~tiered_cache_redis.RedisTier`, with a ``redis.asyncio`` client."""

    leases = True
    #: A ``redis.asyncio`` connection belongs to its loop: one running loop at a time
    #: (:mod:`tiered_cache.loop_end` for one loop after another).
    one_loop = True
    #: Redis keys are bytes: a key UTF-8 cannot encode is refused at the chain's face.
    utf8_keys = True

    def __init__(
        self,
        client: AsyncRedisClient | None = None,
        *,
        connect: Callable[[], AsyncRedisClient] | None = None,
        clock: Callable[[], float] = time.time,
        owns_client: bool = True,
        keys_per_call: int = KEYS_PER_CALL,
        **stored: Unpack[StoredOptions],
    ) -> None:
        if (client is None) == (connect is None):
            raise TypeError("pass either client or connect")
        self._stored = StoredFormat(**stored)
        self.name = name = self._stored.name
        self._prefix = self._stored.prefix
        self._decode = self._stored.decode
        self._clock = clock
        self._client = client
        self._connect = connect
        self._owns_client = owns_client
        self._closed = False
        #: The calls running, which aclose waits for before it closes the client.
        self._calls = CallsInFlight(name, current_task)
        #: The loop the connections belong to; they are let go of when it ends.
        self._loop_end = LoopEnd(
            name,
            self._let_go_of_connections,
            self._drop_connections,
            leave=self._close_a_left_loops_connections,
        )
        #: A forked child's tier whose given cluster client it cannot let go of: it refuses
        #: every call (async_fork.parents_client_error).
        self._forked_from_client = False
        self._reads: AsyncReads | None = None
        self._io = AsyncClientIO(self)
        self._commands = TierCommands(
            self._stored, self._io, clock, keys_per_call, loop_end_gives_back=True
        )
        self._keys_per_call = self._commands.keys_per_call  # as TierCommands checked it
        # The lease calls of one loop tick leave as one batch (async_leases.py).
        self._leases = CoalescedLeases(self._commands)
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """In a forked child the parent's connections (the pool's, and the ones the reads
        keep parked) are let go of (:mod:`tiered_cache_redis.async_fork`): a client this
        tier made is made anew on first use, a given one has its pool emptied (none is left
        once closed: the child's calls are refused as closed, as the parent's are)."""
        keep_from_the_parent(self._reads)
        self._reads = None
        self._calls = self._calls.after_fork()
        self._loop_end.stop()
        self._leases = CoalescedLeases(self._commands)
        self._commands.after_fork_in_child()
        self._io.forget_scripts()  # registered on the parent's client
        if self._connect is not None:
            keep_from_the_parent(self._client)
            self._client = None
        elif self._client is not None and not forget_the_parents_connections(self._client):
            self._forked_from_client = True
            tier_logger(self.name).warning("%s", parents_client_error(self.name))

    @property
    def client(self) -> AsyncRedisClient:
        """The ``redis.asyncio`` client; made on first use."""
        if self._forked_from_client:
            raise parents_client_error(self.name)
        if self._client is None:
            if self._closed:
                raise closed_error(self.name)
            assert self._connect is not None
            self._client = self._connect()
        return self._client

    @property
    def is_cluster(self) -> bool:
        """True when the client is a Redis Cluster client (kept once known: a closed tier
        still answers)."""
        return self._commands.is_cluster()

    @property
    def namespace(self) -> str:
        """The namespace (as given)."""
        return self._stored.namespace

    def check_value(self, value: Any) -> None:
        """CodecError if the codec cannot store ``value`` (:meth:`prepare_value`)."""
        self._stored.payload(value)

    def prepare_value(self, value: Any) -> Payload:
        """``value`` encoded, once (:meth:`StoredFormat.payload`): CodecError if the codec
        cannot store it. A chain's write asks it before anything is sent, and its fill hands
        the payload back as the entry's value, stored without a second encoding."""
        return self._stored.payload(value)

    def report(self) -> dict[str, int]:
        """What the tier counts itself, for ``stats()`` (:mod:`tiered_cache.reporting`): the
        values it read and could not decode (:meth:`StoredFormat.report`), and the times it
        moved on from a loop left open (``loops_left_open``: :mod:`tiered_cache.loop_end`)."""
        return {**self._stored.report(), "loops_left_open": self._loop_end.left_open}

    def redis_key(self, key: str) -> str:
        """The Redis key that holds ``key`` (the sync tier's)."""
        return self._prefix + key

    @property
    def _call(self) -> CallsInFlight:
        """What each call enters: on the loop of the tier's connections
        (:mod:`tiered_cache.loop_end`), counted while it runs (:mod:`.in_flight`)."""
        self._loop_end.here()
        return self._calls

    async def _let_go_of_connections(self) -> None:
        """The loop ends (:mod:`tiered_cache.loop_end`): its connections are of no use to the
        next one. The calls still on the wire end first (an async generator closed with this one may
        have made them): disconnected under them, they reconnected and left their
        connections in the pool for the next loop. Then the loop's unused leases go back
        (:meth:`_give_back_the_loops_leases`), on its connections."""
        await self._calls.settled()
        await self._give_back_the_loops_leases()
        reads, self._reads = self._reads, None
        if reads is not None:
            await reads.aclose()  # the parked ones back to the pool
        client = self._client
        if isinstance(client, aioredis.Redis):
            await client.connection_pool.disconnect()

    async def _give_back_the_loops_leases(self) -> None:
        """The loop ends: every lease taken on it that Redis has not seen used or given back
        goes back (:meth:`TierCommands.farewell`, the close's own give-back), each step
        waiting :data:`LOOP_END_WAIT` at most. Every task of the loop has ended (the sweep
        at the end of ``asyncio.run``), so nothing of this loop fills under them any more. A
        caller cancelled while its lease call was on its way had its lease given back in a
        task of the lease batches (:mod:`.async_leases`); made in the turn the service
        returned in, the sweep cancelled it on the wire or before its first step, and the
        lease held until ``lease_ttl`` (every reader of the key waiting ``lease_wait``). Those
        tasks are stopped first (their tokens are still :class:`~.doubted.Taken`: given back
        here). Bounded, as the loop's end must be: on a stalled Redis the give-back goes out
        unanswered (:mod:`.unanswered`), to run as Redis wakes."""
        await self._leases.stop_here(LOOP_END_WAIT)
        client = self._client
        if client is not None and not self._forked_from_client:
            io = AsyncClientIO(self, client, within=LOOP_END_WAIT)
            await arun(self._commands.farewell(io))

    def _drop_connections(self) -> None:
        """The loop the connections belong to was closed by hand (:mod:`.async_left`): the
        parked ones and the lease batches of that loop dropped with the pool's."""
        self._forget_the_loops_calls()
        drop_a_closed_loops_connections(self._client)

    def _close_a_left_loops_connections(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the connections belong to is left open, not running, and this one is
        another (:mod:`tiered_cache.loop_end`): they are closed without waiting
        (:mod:`.async_left`), the parked ones and the lease batches of that loop dropped,
        and this loop's calls open their own. Before, they were tried: an error of the tier
        each (``attached to a different loop``), the reads going through to the source."""
        self._forget_the_loops_calls()
        close_a_left_loops_connections(self._client, loop)

    def _forget_the_loops_calls(self) -> None:
        """The reads' parked connections and the lease batches belong to the loop the tier
        moves off: this loop's calls make their own."""
        self._reads = None
        self._leases = CoalescedLeases(self._commands)

    # -- reads

    def _read_path(self) -> AsyncReads:
        """How reads reach Redis (:mod:`tiered_cache_redis.async_wire`), chosen on the first;
        the GETs of one loop tick leave as one MGET (:mod:`tiered_cache_redis.async_coalesce`)."""
        if self._reads is None:
            self._reads = CoalescedReads(async_reads_for(self.client), self._keys_per_call)
        return self._reads

    async def get(self, key: str) -> Entry | MissingType:
        if not key.isascii():  # a flag of the str: ASCII keys pay nothing
            self._stored.check((key,))
        with self._call, CancellationKept():
            data = await (self._reads or self._read_path()).get(self._prefix + key)
        if data is None:
            return MISSING
        return self._decode(key, data, self._clock())

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        self._stored.check(keys)
        prefix = self._prefix
        names = [prefix + key for key in keys]
        with self._call, CancellationKept():
            reads = self._reads or self._read_path()
            if len(names) > self._keys_per_call:  # in calls of keys_per_call (chunks.py)
                values, error = await arun(read_chunks(reads.mget, names, self._keys_per_call))
                return read_outcome(self._stored, keys, values, error, self._clock())
            values = await reads.mget(names)
        return self._stored.decode_many(keys, values, self._clock())

    # -- writes, deletes and leases: TierCommands' steps, awaited

    async def _run(self, steps: Steps[T]) -> T:
        with self._call:
            return await arun(steps)

    async def _run_kept(self, steps: Steps[T]) -> T:
        """A call whose result may be dropped (a write, a delete, a fill or give-back under
        a lease: done either way): a cancellation lost in it is raised
        (:class:`~tiered_cache.loops.CancellationKept`). Not a call that takes a lease: its
        token would be dropped with the result (:meth:`acquire_lease` gives it back)."""
        with self._call, CancellationKept():
            return await arun(steps)

    async def set(self, key: str, entry: Entry) -> None:
        self._stored.check((key,))
        await self._run_kept(self._commands.set_many({key: entry}))

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        self._stored.check(entries)
        await self._run_kept(self._commands.set_many(entries))

    async def delete_many(self, keys: Sequence[str]) -> None:
        self._stored.check(keys)
        await self._run_kept(self._commands.delete_many(keys))

    async def delete_prefix(self, prefix: str) -> None:
        """Delete the keys starting with ``prefix`` and their leases: SCAN + UNLINK."""
        self._stored.check((prefix,))
        await self._run_kept(self._commands.delete_matching(self._prefix + prefix))

    async def clear(self) -> None:
        """Delete this namespace's keys and leases (never FLUSHDB)."""
        await self._run_kept(self._commands.delete_matching(self._prefix))

    def can_lease(self, key: str) -> bool:
        """False for a key with braces of its own on a cluster (see the sync tier)."""
        return self._commands.can_lease(key)

    async def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        self._stored.check((key,))
        if not self.can_lease(key):
            return await self._run(self._commands.acquire_lease(key, ttl))  # raises, for this key
        kept = CancellationKept()
        with self._call, kept:
            token, entry = await self._leases.acquire_lease(key, ttl)
            if token is not None and kept.lost():
                # The caller is cancelled (it raises as the block ends): nobody will use the
                # lease, nor know its token to give it back.
                await self._run(self._commands.release_lease(key, token))
        return token, entry

    async def steal_lease(self, key: str, ttl: float) -> str:
        self._stored.check((key,))
        return await self._run(self._commands.steal_lease(key, ttl))

    async def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        self._stored.check(keys)
        return await self._run(self._commands.steal_leases(keys, ttl))

    async def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        self._stored.check((key,))
        with self._call, CancellationKept():  # the lease is used or lost either way
            return await self._leases.fill_with_lease(key, entry, token)

    async def release_lease(self, key: str, token: str) -> None:
        self._stored.check((key,))
        await self._run_kept(self._commands.release_lease(key, token))

    async def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        self._stored.check(keys)
        kept = CancellationKept()
        with kept:
            looks = await self._run(self._commands.acquire_leases(keys, ttl))
            tokens = {key: token for key, (token, _) in looks.items() if token is not None}
            if tokens and kept.lost():
                await self._run(self._commands.release_leases(tokens))  # as acquire_lease
        return looks

    async def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> builtins.set[str]:
        self._stored.check(entries)
        return await self._run_kept(self._commands.fill_with_leases(entries))

    async def release_leases(self, tokens: Mapping[str, str]) -> None:
        self._stored.check(tokens)
        await self._run_kept(self._commands.release_leases(tokens))

    async def aclose(self) -> None:
        """Close the connections (if this tier owns the client), once the calls running
        have ended (:mod:`tiered_cache_redis.in_flight`) and the leases the tier took and did
        not see used or given back were given back (:meth:`TierCommands.farewell`);
        idempotent. Stopped on its way (a sweep of every task cancelled the chain's close),
        it can be run again: the client and the parked reads are let go of only once closed
        (else the client stayed open, nothing left to close it)."""
        self._closed = True
        self._loop_end.close_here()
        await self._calls.aclose()
        await self._leases.drain()
        client = self._client
        if client is not None and not self._forked_from_client:
            await arun(self._commands.farewell(AsyncClientIO(self, client)))
        reads = self._reads
        if reads is not None:
            await reads.aclose()
            self._reads = None
        if self._forked_from_client:
            keep_from_the_parent(client)  # the parent's sockets: never closed here
        elif client is not None and self._owns_client:
            await client.aclose()
        self._client = None

    def __repr__(self) -> str:
        return f"AsyncRedisTier(name={self.name!r}, namespace={self.namespace!r})"


class AsyncClientIO:
    """:class:`~tiered_cache_redis.commands.RedisIO` on the tier's ``redis.asyncio`` client
    (every call but ``is_cluster`` is a coroutine)."""

    def __init__(
        self,
        tier: AsyncRedisTier,
        client: AsyncRedisClient | None = None,
        *,
        within: float | None = None,
    ) -> None:
        self._tier = tier
        self._kept = client  # a closing tier's client (see the sync tier's ClientIO)
        self._scripts: dict[str, Any] = {}
        #: How long each script call, and each step of an unanswered send, waits at most
        #: (None: as long as the client's timeouts allow): a loop's end's give-back.
        self._within = within

    def _client(self) -> AsyncRedisClient:
        kept = self._kept
        return self._tier.client if kept is None else kept

    def is_cluster(self) -> bool:
        return isinstance(self._client(), AsyncRedisCluster)

    def node(self, name: str) -> str:
        node = cast(AsyncRedisCluster, self._client()).get_node_from_key(name)
        return name if node is None else str(node.name)  # slots unknown: a node of its own

    @contextlib.asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Any]:
        """A pipeline of the client, reset however its block ends. ``execute`` resets it in
        its own ``finally``, but a pipeline of scripts first checks they are loaded (``SCRIPT
        EXISTS``, on a connection of the pool) outside it: cancelled there (its caller went
        away), the pipeline kept the connection, which never went back to the pool -- once
        per cancellation, until every call waited for a connection and failed."""
        pipe = self._client().pipeline(transaction=False)
        try:
            yield pipe
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]

    async def send(self, commands: Sequence[Command]) -> list[Any]:
        # Queued through execute_command: a cluster pipeline's own unlink() is a coroutine
        # (it would run at once); the command queues like the others.
        async with self._pipeline() as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return cast(list[Any], await pipe.execute())

    async def command(self, *args: Any) -> Any:
        return await self._client().execute_command(*args)

    async def send_unanswered(self, commands: Sequence[Command]) -> bool:
        client = self._client()
        if isinstance(client, AsyncRedisCluster):
            return False
        pool = client.connection_pool
        plain = (aioredis.Connection, aioredis.UnixDomainSocketConnection)
        if pool.connection_class not in plain:
            return False  # TLS, or a connection of the application's own making
        # A blocking connect and write (bounded by the connect timeout): off the loop.
        await asyncio.to_thread(send_unanswered, pool.connection_kwargs, commands, self._within)
        return True

    def _script(self, source: str) -> Any:
        # The client first, each time: it raises once the tier is closed. A script kept from
        # before (bound to the client) went on reaching Redis after close, and reconnected
        # the closed client's pool (a connection nobody closed).
        client = self._client()
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = client.register_script(source)
        return script

    def forget_scripts(self) -> None:
        """Drop the scripts registered on the client (it is being replaced)."""
        self._scripts = {}

    async def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        async with asyncio.timeout(self._within):
            return await self._script(source)(keys=keys, args=args)

    async def scripts(self, source: str, calls: Sequence[Call], raise_first: bool) -> list[Any]:
        script = self._script(source)
        async with asyncio.timeout(self._within), self._pipeline() as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return cast(list[Any], await pipe.execute(raise_on_error=raise_first))

    async def scan(self, pattern: str) -> list[str]:
        return [
            name.decode() if isinstance(name, bytes) else str(name)
            async for name in self._client().scan_iter(match=pattern, count=1000)
        ]
