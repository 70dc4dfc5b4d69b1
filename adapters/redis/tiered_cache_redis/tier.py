"""The Redis tier: a small binary header plus codec bytes under ``<namespace>:<key>``
(:mod:`tiered_cache_redis.stored`), on a redis-py client.

What its writes, deletes and leases send is decided in :mod:`tiered_cache_redis.commands`
(shared with the asyncio tier); this module does the I/O: :class:`ClientIO` runs those
commands on redis-py, and reads go near the wire (:mod:`tiered_cache_redis.wire`).
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, Unpack, cast

import redis
from redis.cluster import RedisCluster

from tiered_cache.codecs import Codec
from tiered_cache.forking import restart_after_fork
from tiered_cache.steps import Steps, run
from tiered_cache.tier import MISSING, Entry, MissingType, TierBase

from .chunks import KEYS_PER_CALL, read_chunks, read_outcome
from .client import RedisClient, close_client
from .commands import Command, TierCommands
from .in_flight import CallsInFlight, closed_error
from .lease_batches import Call
from .stored import Payload, StoredFormat, StoredOptions
from .unanswered import send_unanswered
from .wire import Reads, reads_for

Clock = Callable[[], float]
T = TypeVar("T")


class RedisTier(TierBase):
    """A tier in Redis or Redis Cluster (the :class:`tiered_cache.Tier` protocol).

    Capabilities (:class:`~tiered_cache.tier.TierBase`): leases (and their batch forms), and
    ``delete_prefix`` by SCAN; it is shared between processes (not ``local``).

    Args:
        client: a redis-py ``Redis`` or ``RedisCluster`` (with ``decode_responses=False``).
        connect: instead of ``client``, makes one on first use (so a cluster that is down when
            the service starts makes calls fail, not the start).
        clock: seconds; expiry is judged by this clock (and Redis expires keys on its own time).
        owns_client: close the client in :meth:`close`.
        keys_per_call: most keys one call to Redis carries; a larger batch is sent in
            several (:mod:`tiered_cache_redis.chunks`).
        **stored: what is stored and for how long, handed on to
            :class:`~tiered_cache_redis.stored.StoredFormat` as they are (declared once, in
            :class:`~tiered_cache_redis.stored.StoredOptions`; below).

    Keyword Args:
        name (str): the tier's name in stats and logs (``"redis"``).
        namespace (str): the key prefix; each key is stored as ``<namespace>:<key>``, with
            ``\\`` and ``:`` in the namespace escaped by a backslash (``"default"``).
        ttl (float | str | timedelta | None): the longest Redis keeps an entry, in seconds
            or text such as ``"1h"``; never beyond the entry's hard expiry. ``None``: the hard
            expiry alone (3600).
        ttl_jitter (float): shorten each TTL by up to this fraction at random (0).
        codec (Codec | str): a :class:`~tiered_cache.codecs.Codec` or its name (``"json"``).
        rng (random.Random | None): the jitter's randomness.
        max_value_size (int | str | None): the most bytes a value's encoding may have to be
            kept, or text such as ``"1MiB"`` (None: any; 1 MiB by default): a larger one is not
            kept, the key's older copy deleted, counted as ``too_large``
            (:data:`~tiered_cache_redis.stored.MAX_VALUE_SIZE`).

    ``keys_per_call``, ``ttl``, ``ttl_jitter`` and ``max_value_size`` are checked by the rules
    of a config file's Redis tier (:class:`~tiered_cache_redis.settings.RedisTierSettings`):
    one they refuse raises :class:`~tiered_cache.ConfigError` naming it (``ttl: ...``), never
    its value.

    Connection errors and timeouts propagate (as redis-py's exceptions): the chain and the
    circuit breaker decide what they mean. Only data this tier cannot read (another format or
    codec, corrupt bytes) is logged and treated as a miss, so that the next fill overwrites it.
    """

    leases = True
    #: Redis keys are bytes: a key UTF-8 cannot encode is refused at the chain's face.
    utf8_keys = True

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        connect: Callable[[], RedisClient] | None = None,
        clock: Clock = time.time,
        owns_client: bool = True,
        keys_per_call: int = KEYS_PER_CALL,
        **stored: Unpack[StoredOptions],
    ) -> None:
        self._stored = StoredFormat(**stored)
        self.name = name = self._stored.name
        self._prefix = self._stored.prefix
        #: The hot read path's decoder (bound once: one call per hit, as before).
        self._decode = self._stored.decode
        self._clock = clock
        self._owns_client = owns_client
        # Reentrant: a signal handler that closes the tier by hand runs on the main thread
        # between two of its steps, maybe while that thread holds this lock making the client
        # (the first connect(), outside any call: can_lease asks before a write's first call);
        # with a plain lock the handler's close waited for the frame it interrupted, for ever.
        self._lock = threading.RLock()
        if (client is None) == (connect is None):
            raise TypeError("pass either client or connect")
        self._client = client
        self._connect = connect
        self._closed = False
        #: The calls running, which close waits for before it closes the client.
        self._calls = CallsInFlight(name, threading.get_ident)
        self._reads: Reads | None = None
        self._commands = TierCommands(self._stored, ClientIO(self), clock, keys_per_call)
        self._keys_per_call = self._commands.keys_per_call  # as TierCommands checked it
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """A new lock: another thread of the parent may have held it at the fork (making the
        client with ``connect``: a cluster client's discovery is round trips), and the
        child's first read would wait for ever. (The connections restart by themselves:
        redis-py's pool checks its pid, the wire reader forgets its parked ones.)"""
        self._lock = threading.RLock()
        self._calls = self._calls.after_fork()
        self._commands.after_fork_in_child()

    # -- properties

    @property
    def client(self) -> RedisClient:
        """The redis-py client (shared with leases and the invalidation bus); made on first use."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None and not self._closed:
                    assert self._connect is not None
                    self._client = self._connect()
                client = self._client
                if self._closed or client is None:
                    # Closed as it was made, by a signal handler's close landing on this
                    # thread anywhere above (the lock is reentrant): the close let go of the
                    # client it found (read here as None: its caller got an AttributeError)
                    # or found none yet (the one made then kept open by a closed tier). Each
                    # is closed here too (twice is harmless), and the tier's error raised.
                    self._client = None
                    if client is not None and self._owns_client:
                        close_client(client)
                    raise closed_error(self.name)
        return client

    @property
    def namespace(self) -> str:
        """The namespace (as given: unescaped, without the ``:``)."""
        return self._stored.namespace

    @property
    def codec(self) -> Codec:
        """The codec values are stored with."""
        return self._stored.codec

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
        values it read and could not decode (:meth:`StoredFormat.report`)."""
        return self._stored.report()

    @property
    def is_cluster(self) -> bool:
        """True when the client is a Redis Cluster client (kept once known: a closed tier
        still answers)."""
        return self._commands.is_cluster()

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
        try:
            with self._calls:
                data = (self._reads or self._read_path()).get(self._prefix + key)
        except UnicodeEncodeError as exc:
            raise self._stored.refused([key], exc) from None
        if data is None:
            return MISSING
        return self._decode(key, data, self._clock())

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        prefix = self._prefix
        # One MGET (on a cluster: one per hash slot, pipelined per node); a batch of more
        # than keys_per_call keys, one per keys_per_call (chunks.py).
        try:
            with self._calls:
                reads = self._reads or self._read_path()
                names = [prefix + key for key in keys]
                if len(names) > self._keys_per_call:
                    values, error = run(read_chunks(reads.mget, names, self._keys_per_call))
                    return read_outcome(self._stored, keys, values, error, self._clock())
                values = reads.mget(names)
        except UnicodeEncodeError as exc:
            raise self._stored.refused(keys, exc) from None
        return self._stored.decode_many(keys, values, self._clock())

    # -- writes, deletes and leases: TierCommands' steps, run on this thread

    def set(self, key: str, entry: Entry) -> None:
        self._run(self._commands.set_many({key: entry}), [key])

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self._run(self._commands.set_many(entries), entries)

    def delete(self, key: str) -> None:
        self._run(self._commands.delete_many([key]), [key])

    def delete_many(self, keys: Sequence[str]) -> None:
        self._run(self._commands.delete_many(keys), keys)

    def delete_prefix(self, prefix: str) -> None:
        """Delete the keys starting with ``prefix`` and their leases: SCAN + UNLINK."""
        self._run(self._commands.delete_matching(self._prefix + prefix), [prefix])

    def clear(self) -> None:
        """Delete this namespace's keys and leases (SCAN + UNLINK, every node of a cluster);
        never FLUSHDB."""
        with self._calls:
            run(self._commands.delete_matching(self._prefix))

    def can_lease(self, key: str) -> bool:
        """False for a key with braces of its own on a cluster (see :mod:`.leases`)."""
        return self._commands.can_lease(key)

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        """Take ``key``'s lease if nobody holds it, and read the key: one round trip.

        Returns ``(token or None, the entry or MISSING)``.
        """
        return self._run(self._commands.acquire_lease(key, ttl), [key])

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        """Store ``entry`` and drop the lease, only while ``token`` holds it (atomically)."""
        return self._run(self._commands.fill_with_lease(key, entry, token), [key])

    def steal_lease(self, key: str, ttl: float) -> str:
        """Take ``key``'s lease whoever holds it (for a write): one ``SET PX``."""
        return self._run(self._commands.steal_lease(key, ttl), [key])

    def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        """:meth:`steal_lease` for each key: one pipelined round trip (one per node on a
        cluster)."""
        return self._run(self._commands.steal_leases(keys, ttl), keys)

    def release_lease(self, key: str, token: str) -> None:
        """Drop the lease if ``token`` still holds it."""
        self._run(self._commands.release_lease(key, token), [key])

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        """:meth:`acquire_lease` for each key: one pipelined round trip (one per key on a
        cluster, where a pipeline of scripts would have to be split by node)."""
        return self._run(self._commands.acquire_leases(keys, ttl), keys)

    def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> builtins.set[str]:
        """:meth:`fill_with_lease` for each key (see :meth:`TierCommands.fill_with_leases`)."""
        return self._run(self._commands.fill_with_leases(entries), entries)

    def release_leases(self, tokens: Mapping[str, str]) -> None:
        """:meth:`release_lease` for each key."""
        self._run(self._commands.release_leases(tokens), tokens)

    def _run(self, steps: Steps[T], keys: Iterable[str]) -> T:
        """``run(steps)``; a key UTF-8 cannot encode raises UnencodableKey, as a chain's
        face does (:meth:`StoredFormat.refused`; nothing is paid on good keys)."""
        try:
            with self._calls:
                return run(steps)
        except UnicodeEncodeError as exc:
            raise self._stored.refused(keys, exc) from None

    def close(self) -> None:
        """Close the connection pool (if this tier owns the client), once the calls running
        have ended (:mod:`tiered_cache_redis.in_flight`) and the leases the tier took and did
        not see used or given back were given back (:meth:`TierCommands.farewell`); idempotent.

        Called from a signal handler that landed in a call of this tier on the same thread,
        it refuses new calls and returns: the call cannot end before the handler returns, so
        the rest of the close is left to it, run as it ends (:meth:`CallsInFlight.close`'s
        ``then``). Closed under the call, the client's pool disconnected its connection, the
        call's retry reconnected, and the closed pool kept that connection open."""
        self._calls.close(then=self._close_client)

    def _close_client(self) -> None:
        """The close once no call runs: the client let go of, its leases given back, closed."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            reads, self._reads = self._reads, None
        if reads is not None:
            reads.close()
        if client is None:
            return
        run(self._commands.farewell(ClientIO(self, client)))
        if self._owns_client:
            close_client(client)

    def __repr__(self) -> str:
        return f"RedisTier(name={self.name!r}, namespace={self.namespace!r})"


class ClientIO:
    """:class:`~tiered_cache_redis.commands.RedisIO` on the tier's redis-py client, or on
    ``client``: the client of a closing tier, which calls can no longer reach."""

    def __init__(self, tier: RedisTier, client: RedisClient | None = None) -> None:
        self._tier = tier
        self._kept = client
        self._scripts: dict[str, Any] = {}

    def _client(self) -> RedisClient:
        kept = self._kept
        return self._tier.client if kept is None else kept

    def is_cluster(self) -> bool:
        return isinstance(self._client(), RedisCluster)

    def node(self, name: str) -> str:
        node = cast(RedisCluster, self._client()).get_node_from_key(name)  # type: ignore[no-untyped-call]
        return name if node is None else str(node.name)  # slots unknown: a node of its own

    def send(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self._client().pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return cast(list[Any], pipe.execute())

    def command(self, *args: Any) -> Any:
        return self._client().execute_command(*args)  # type: ignore[no-untyped-call]

    def send_unanswered(self, commands: Sequence[Command]) -> bool:
        client = self._client()
        if isinstance(client, RedisCluster):
            return False
        pool = client.connection_pool
        if pool.connection_class not in (redis.Connection, redis.UnixDomainSocketConnection):
            return False  # TLS, or a connection of the application's own making
        send_unanswered(pool.connection_kwargs, commands)
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

    def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        return self._script(source)(keys=keys, args=args)

    def scripts(self, source: str, calls: Sequence[Call], raise_first: bool) -> list[Any]:
        script = self._script(source)
        pipe = self._client().pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return cast(list[Any], pipe.execute(raise_on_error=raise_first))

    def scan(self, pattern: str) -> list[str]:
        return [
            name.decode() if isinstance(name, bytes) else str(name)
            for name in self._client().scan_iter(match=pattern, count=1000)
        ]
