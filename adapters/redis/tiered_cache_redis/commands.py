"""What the Redis tiers send, decided once: the writes, deletes and leases as steps.

Which commands a write sends (the value, or an UNLINK for an entry already past its TTL; the
key's lease dropped with it), how a batch of leases is taken and filled, how a prefix is
cleared: :class:`TierCommands` yields each round trip it needs, ``(function, arguments)``
(:mod:`tiered_cache.steps`), on a :class:`RedisIO`. The sync
:class:`~tiered_cache_redis.RedisTier` runs the steps with ``run`` on a redis-py client, the
:class:`~tiered_cache_redis.AsyncRedisTier` with ``arun`` on a ``redis.asyncio`` one; the
tiers themselves only do I/O. (Reads are not steps: a GET is one call and its decoding is
:class:`~tiered_cache_redis.stored.StoredFormat`'s, and the sync hit path stays as short as
it was.)
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError, ResponseError

from tiered_cache.errors import TierUnavailable
from tiered_cache.loop_end import in_final_sweep
from tiered_cache.settings import checked
from tiered_cache.steps import Steps
from tiered_cache.tier import MISSING, Entry, MissingType

from .chunks import KEYS_PER_CALL, chunks
from .doubted import Doubted, Taken
from .lease_batches import (
    Call,
    acquire_calls,
    batch_failure,
    fill_calls,
    fill_outcome,
    looks,
    plan_fills,
    taken_on_failure,
)
from .leases import ACQUIRE_AND_GET, FILL_IF_HOLDING, RELEASE_IF_HOLDING, cluster_safe, lease_key
from .settings import RedisTierSettings
from .stored import StoredFormat

log = logging.getLogger("tiered_cache_redis.tier")

T = TypeVar("T")

#: One command: ``("SET", name, data, "PX", 1000)``.
Command = tuple[Any, ...]

#: How long the token of a fill or give-back that timed out is kept to give back (its lease's
#: ttl is not known there): past its lease's ttl, a give-back finds nothing and costs a call.
LATER = 600.0
# Characters that SCAN MATCH treats as a pattern.
_GLOB_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\*?[]^"})


class RedisIO(Protocol):
    """The round trips of one Redis tier. Each returns its result (the sync tier) or an
    awaitable of it (the asyncio tier); ``is_cluster`` is plain."""

    def is_cluster(self) -> bool:
        """The client is a Redis Cluster client."""
        ...

    def node(self, name: str) -> str:
        """The address of the cluster node that holds ``name`` (a cluster client only)."""
        ...

    def send(self, commands: Sequence[Command]) -> Any:
        """The commands in one pipeline (not a transaction; on a cluster, split by node);
        raises the first error."""
        ...

    def command(self, *args: Any) -> Any:
        """One command, its reply."""
        ...

    def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """One call of the Lua script ``source``, its reply."""
        ...

    def scripts(self, source: str, calls: Sequence[Call], raise_first: bool) -> Any:
        """One call of ``source`` per ``(keys, args)`` in one pipeline (one server): the
        replies, a failed call's exception in its place; with ``raise_first`` the first
        failure is raised instead."""
        ...

    def scan(self, pattern: str) -> Any:
        """Every key matching ``pattern`` (SCAN MATCH, every node of a cluster), as text."""
        ...

    def send_unanswered(self, commands: Sequence[Command]) -> Any:
        """The commands on a connection of their own, without waiting for an answer to
        anything (its handshake's included): what a closing tier can still send to a Redis
        that does not answer (:mod:`tiered_cache_redis.unanswered`); True if they went out."""
        ...


class TierCommands:
    """The writes, deletes and leases of one Redis tier, as steps on its :class:`RedisIO`."""

    def __init__(
        self,
        stored: StoredFormat,
        io: RedisIO,
        clock: Callable[[], float],
        keys_per_call: int = KEYS_PER_CALL,
        *,
        loop_end_gives_back: bool = False,
    ) -> None:
        # The rule of a config file's Redis tier (its settings' field).
        keys_per_call = checked(RedisTierSettings, "keys_per_call", keys_per_call)
        self.stored = stored
        self.io = io
        self._clock = clock
        #: Most keys one round trip carries: a larger batch is sent in several (chunks.py).
        self._keys_per_call = keys_per_call
        #: The tier gives back every lease of its event loop as that loop ends (the asyncio
        #: tier: :meth:`farewell`, bounded), so a give-back under the sweep at the end of
        #: ``asyncio.run`` is left to it (:meth:`_left_to_the_loops_end`).
        self._loop_end_gives_back = loop_end_gives_back
        #: Tokens of lease calls that timed out, to give back once Redis answers again.
        self._doubted = Doubted()
        #: The leases taken and not seen used or given back: what a closing tier gives back
        #: (:meth:`farewell`).
        self._taken = Taken()
        self._cluster: bool | None = None  # the client's kind, once known

    @property
    def keys_per_call(self) -> int:
        """Most keys one round trip carries (the tiers' reads split their batches by it too)."""
        return self._keys_per_call

    def is_cluster(self) -> bool:
        """The client is a Redis Cluster client. Kept once known: a closing or closed tier
        still answers (it would ask for the closed client, and a read in flight as its chain
        closed raised the tier's RuntimeError bare from get)."""
        cluster = self._cluster
        if cluster is None:
            cluster = self._cluster = self.io.is_cluster()
        return cluster

    def after_fork_in_child(self) -> None:
        """The parent's leases are not the child's: its close would give back the leases the
        parent's loads hold."""
        self._taken = Taken()

    def _run_scripts(
        self, source: str, calls: Sequence[Call], raise_first: bool
    ) -> Steps[list[Any]]:
        """One call of ``source`` per ``(keys, args)``: pipelined on one server (one pipeline
        per ``keys_per_call`` calls, :mod:`.chunks`), one at a time on a cluster (a pipeline
        of scripts would have to be split by node), stopping at the first failure of either
        (the list is then shorter than ``calls``). A failed call has its exception in its
        place (a pipeline that failed whole, in the place of each of its calls); with
        ``raise_first`` the first failure is raised instead, as it is when no call was
        answered."""
        if not calls:
            return []
        replies: list[Any] = []
        if not self.is_cluster():
            for chunk in chunks(calls, self._keys_per_call):
                try:
                    replies += yield self.io.scripts, (source, chunk, raise_first)
                except Exception as exc:
                    if raise_first or not replies:
                        raise
                    replies += [exc] * len(chunk)
                    break
            return replies
        for keys, args in calls:
            try:
                replies.append((yield self.io.script, (source, keys, args)))
            except Exception as exc:
                if raise_first:
                    raise
                replies.append(exc)
                break
        return replies

    def _unlinks(self, names: Sequence[str]) -> list[Command]:
        # A multi-key UNLINK must stay within one slot; on a cluster, one UNLINK per key
        # (pipelined: one round trip per node).
        if self.is_cluster():
            return [("UNLINK", name) for name in names]
        return [("UNLINK", *names)] if names else []

    # -- writes

    def set_many(self, entries: Mapping[str, Entry]) -> Steps[None]:
        """Store entries (an entry already past its TTL deletes the key). Everything is
        encoded before anything is sent: one bad value writes nothing. A write supersedes
        any load in flight elsewhere: dropping the key's lease makes that load's fill fail
        instead of overwriting this newer value (see leases.py). One pipeline per
        ``keys_per_call`` keys (:mod:`.chunks`); the first that fails is raised, the keys of
        those before it written (as by a pipeline that failed part-way)."""
        if not entries:
            return
        now = self._clock()
        encode = self.stored.encode
        encoded = [encode(key, entry, now) for key, entry in entries.items()]
        for chunk in chunks(encoded, self._keys_per_call):
            commands: list[Command] = []
            for name, data, px in chunk:
                if data is None:
                    commands.append(("UNLINK", name))
                elif px is None:
                    commands.append(("SET", name, data))
                else:
                    commands.append(("SET", name, data, "PX", px))
            commands += self._unlinks([lease_key(name) for name, _, _ in chunk])
            yield self.io.send, (commands,)

    def delete_many(self, keys: Sequence[str]) -> Steps[None]:
        """Remove keys with their leases: a load that read the source before this
        invalidation can then no longer fill (see leases.py). One call per
        ``keys_per_call`` keys (:mod:`.chunks`): an UNLINK of 100,000 names kept Redis
        busy past the timeout on its own."""
        prefix = self.stored.prefix
        for chunk in chunks(keys, self._keys_per_call):
            names = [prefix + key for key in chunk]
            yield self.io.send, (self._unlinks(names + [lease_key(name) for name in names]),)

    def delete_matching(self, start: str) -> Steps[None]:
        """Delete the keys starting with ``start`` (a prefixed name) and their leases: SCAN
        and UNLINK. The leases (``{ns:key}:lease``) go first: a fill under a lease that lands
        before its lease is unlinked wrote data that the data scan then finds; one after it
        fails. (A key being loaded for the first time has a lease and no data yet.)"""
        for first in ("{" + start, start):
            names = yield self.io.scan, (first.translate(_GLOB_SPECIAL) + "*",)
            for batch in batches(names, self._keys_per_call):
                if first == start:
                    batch += [lease_key(name) for name in batch]
                yield self.io.send, (self._unlinks(batch),)

    # -- leases, one key

    def acquire_lease(self, key: str, ttl: float) -> Steps[tuple[str | None, Entry | MissingType]]:
        """Take ``key``'s lease if nobody holds it, and read the key: one round trip."""
        name = self.stored.prefix + key
        self._check_lease_possible(name)
        token = uuid.uuid4().hex
        call = self._call(
            self.io.script,
            (ACQUIRE_AND_GET, [name, lease_key(name)], [token, max(1, int(ttl * 1000))]),
        )
        taken, data = yield from self._taking(call, {key: token}, ttl)
        if not taken:
            self._taken.settle((token,))
        entry = MISSING if not data else self.stored.decode(key, data, self._clock())
        return (token if taken else None), entry

    def steal_lease(self, key: str, ttl: float) -> Steps[str]:
        """Take ``key``'s lease whoever holds it (for a write): one ``SET PX``."""
        name = self.stored.prefix + key
        self._check_lease_possible(name)
        token = uuid.uuid4().hex
        command = ("SET", lease_key(name), token, "PX", max(1, int(ttl * 1000)))
        yield from self._taking(self._call(self.io.command, command), {key: token}, ttl, steal=True)
        return token

    def steal_leases(self, keys: Sequence[str], ttl: float) -> Steps[dict[str, str]]:
        """:meth:`steal_lease` for each key: the ``SET PX`` commands in one pipeline (on a
        cluster, one per node). All or nothing: on a failure the leases taken are given
        back (best effort; else they expire) and the error is raised."""
        names = [self.stored.prefix + key for key in keys]
        for name in names:
            self._check_lease_possible(name)
        px = max(1, int(ttl * 1000))
        tokens = {key: uuid.uuid4().hex for key in keys}
        commands = [
            ("SET", lease_key(name), token, "PX", px)
            for name, token in zip(names, tokens.values(), strict=True)
        ]
        yield from self._taking(self._send(commands), tokens, ttl, some_may_run=True, steal=True)
        return tokens

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> Steps[bool]:
        """Store ``entry`` and drop the lease, only while ``token`` holds it (atomically)."""
        ((keys, args),) = fill_calls(plan_fills({key: (entry, token)}, self._encoder()))
        try:
            filled = yield self.io.script, (FILL_IF_HOLDING, keys, args)
        except RedisError as exc:
            self._doubt(exc, {key: token}, LATER)
            raise
        self._taken.settle((token,))
        return bool(filled)

    def _encoder(self) -> Callable[[str, Entry], tuple[str, bytes | None, int | None]]:
        """How a fill's entries are encoded: all at the one instant of the fill."""
        now = self._clock()
        encode = self.stored.encode
        return lambda key, entry: encode(key, entry, now)

    def release_lease(self, key: str, token: str) -> Steps[None]:
        """Drop the lease if ``token`` still holds it."""
        if self._left_to_the_loops_end():
            return
        name = self.stored.prefix + key
        try:
            yield self.io.script, (RELEASE_IF_HOLDING, [lease_key(name)], [token])
        except RedisError as exc:
            self._doubt(exc, {key: token}, LATER)
            raise
        self._taken.settle((token,))

    # -- leases, a batch (one pipelined round trip; one per key on a cluster)

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> Steps[dict[str, tuple[str | None, Entry | MissingType]]]:
        """:meth:`acquire_lease` for each key, all or nothing (see lease_batches.py)."""
        names = [self.stored.prefix + key for key in keys]
        for name in names:
            self._check_lease_possible(name)
        px = max(1, int(ttl * 1000))
        tokens = [uuid.uuid4().hex for _ in keys]
        calls = self._run_scripts(ACQUIRE_AND_GET, acquire_calls(names, tokens, px), False)
        replies = yield from self._taking(calls, dict(zip(keys, tokens, strict=True)), ttl)
        # Not taken, or not sent (a cluster stops at its first failure): nothing to give back.
        self._taken.settle(
            token
            for index, token in enumerate(tokens)
            if index >= len(replies)
            or (not isinstance(replies[index], Exception) and not replies[index][0])
        )
        failure = taken_on_failure(keys, tokens, replies)
        if failure is not None:
            # A call that timed out in its place (a cluster's, one key at a time) may run
            # when its node wakes, as a batch that timed out whole may (_give_back_stopped).
            for key, token, reply in zip(keys, tokens, replies, strict=False):
                if isinstance(reply, Exception):
                    self._doubt(reply, {key: token}, ttl)
            yield from self.release_quietly(failure[0])
            raise batch_failure(self.stored.name, failure[1])
        now = self._clock()
        decode = self.stored.decode
        return looks(keys, tokens, replies, lambda key, data: decode(key, data, now))

    def fill_with_leases(
        self, entries: Mapping[str, tuple[Entry, str]]
    ) -> Steps[builtins.set[str]]:
        """:meth:`fill_with_lease` for each key, every value encoded before the one round
        trip. Raises :class:`~tiered_cache.leases.PartialFill` (with the keys that were
        written) when some fills failed; their leases are given back, so that nobody waits
        for them."""
        fills = plan_fills(entries, self._encoder())
        try:
            replies = yield from self._run_scripts(FILL_IF_HOLDING, fill_calls(fills), False)
        except RedisError as exc:
            self._doubt(exc, {key: token for key, _, token, _, _ in fills}, LATER)
            raise
        self._taken.settle(token for _, _, token, _, _ in fills)  # a failed one: given back below
        kept, failed, error = fill_outcome(self.stored.name, fills, replies)
        if error is not None:
            yield from self.release_quietly(failed)
            raise error
        return kept

    def release_leases(self, tokens: Mapping[str, str]) -> Steps[None]:
        """:meth:`release_lease` for each key; raises the first failure. On a cluster (a call
        per key) a failure skips the other leases of its node (each would wait its timeout)
        but not those of the nodes that answer: left there, they held until ``lease_ttl``,
        and every process reading their keys waited ``lease_wait`` (a partial fill's
        give-back stopped at the first lease of a node that hangs). Asking the client for a
        key's node may fail too (its slot map refreshed, and that failed): that key is
        skipped, not the give-back of the others."""
        if self._left_to_the_loops_end():
            return
        prefix = self.stored.prefix
        calls = [([lease_key(prefix + key)], [token]) for key, token in tokens.items()]
        if not self.is_cluster():
            try:
                yield from self._run_scripts(RELEASE_IF_HOLDING, calls, True)
            except RedisError as exc:
                self._doubt(exc, tokens, LATER)
                raise
            self._taken.settle(tokens.values())
            return
        first: Exception | None = None
        failing: set[str] = set()
        for keys, args in calls:
            node: str | None = None
            try:
                node = self.io.node(keys[0])
                if node in failing:
                    continue
                yield self.io.script, (RELEASE_IF_HOLDING, keys, args)
                self._taken.settle(args)
            except Exception as exc:
                first = exc if first is None else first
                if node is not None:
                    failing.add(node)
        if first is not None:
            self._doubt(first, tokens, LATER)
            raise first

    def _left_to_the_loops_end(self) -> bool:
        """Whether a give-back is left to the loop's end: it runs under the sweep of every
        task at the end of ``asyncio.run`` (:func:`~tiered_cache.loop_end.in_final_sweep`),
        on a tier that gives back every lease of its loop as that loop ends, each step
        bounded (:meth:`farewell`). The one home of the rule, for every give-back (a load's,
        a stopped or cancelled lease call's, a batch's for callers that went away): that
        end waits for the tasks it swept without limit, and a give-back there to a stalled
        Redis, on a client with no socket timeout, held ``asyncio.run`` for as long as
        Redis stalled (with timeouts, as long as its reconnects took). The tokens stay
        taken (:class:`~.doubted.Taken`) until then."""
        return self._loop_end_gives_back and in_final_sweep()

    def _send(self, commands: Sequence[Command]) -> Steps[None]:
        """``commands``, one key's each, in pipelines of ``keys_per_call`` (:mod:`.chunks`);
        the first failure raised."""
        for chunk in chunks(commands, self._keys_per_call):
            yield self.io.send, (chunk,)

    @staticmethod
    def _call(function: Callable[..., Any], arguments: tuple[Any, ...]) -> Steps[Any]:
        """One round trip, as steps of its own (for :meth:`_taking`)."""
        reply = yield function, arguments
        return reply

    def _taking(
        self,
        call: Steps[T],
        tokens: Mapping[str, str],
        ttl: float,
        *,
        some_may_run: bool = False,
        steal: bool = False,
    ) -> Steps[T]:
        """Run ``call``, which takes the leases ``tokens`` (``key: token``) for ``ttl``: a
        read's acquire or a write's steal. The one home of what becomes of such a call's
        tokens: kept from the start until Redis answered a fill or give-back under them, for
        a closing tier to give back (:meth:`farewell`); stopped, given back now or kept
        (:meth:`_give_back_stopped`); answered, it is the answer the tokens of earlier calls
        that timed out waited for (:meth:`_give_back_doubted`), a stop during which stops
        the call. ``some_may_run``: a pipeline
        of several commands (a write's steals), all or nothing: a failure gives back the
        leases some of them may have taken, whatever the failure. ``steal``: a write's; one
        stopped by a cancellation keeps its tokens doubted (:meth:`_doubt`), given back at
        Redis's next answer or by the tier's close, not now: an asyncio write task is
        cancelled only by the sweep of its loop's end, and its finishing unlinks the key's
        lease with the key, that call bounded by the bus's ``close_wait``
        (``WriteTasks.bounded``). Given back here, the loop's end waited for the give-back
        as long as Redis stalled, on a client with no socket timeout."""
        now = self._clock()
        self._taken.start(tokens, now + ttl, now)
        try:
            answer = yield from call
            if self._doubted:
                # Inside the try: stopped while it gives them back (an interrupt, a
                # cancellation), the answer never reaches the caller, whose tokens then go
                # as a stopped call's (else its leases held until their ttl).
                yield from self._give_back_doubted()
        except BaseException as exc:
            if steal and isinstance(exc, asyncio.CancelledError):
                self._doubted.add(tokens, now + ttl)
            elif some_may_run:
                if isinstance(exc, RedisError):
                    self._doubt(exc, tokens, ttl)
                yield from self.release_quietly(tokens)
            else:
                yield from self._give_back_stopped(exc, tokens, ttl)
            raise
        return answer

    def _give_back_stopped(
        self, stopped: BaseException, tokens: Mapping[str, str], ttl: float
    ) -> Steps[None]:
        """A call that takes leases under ``tokens`` (a read's, or a write's steal) was stopped
        between its send and its reply by something other than Redis (a ``KeyboardInterrupt``,
        a signal-raised time limit, a cancelled task): Redis may hold the leases, and only
        these tokens, which its caller never saw, can give them back (a token that holds
        nothing releases nothing). Left, they held until ``lease_ttl``, and every process
        reading their keys waited ``lease_wait`` for a holder that was gone. When Redis
        timed out (or the connection failed) the call may still run, later: the tokens are
        given back once Redis answers again (doubted.py). When the tier refused the call, or
        Redis answered with an error, nothing was taken."""
        if self._doubt(stopped, tokens, ttl):
            return
        if not isinstance(stopped, RedisError | TierUnavailable):
            yield from self.release_quietly(tokens)

    def _doubt(self, stopped: BaseException, tokens: Mapping[str, str], ttl: float) -> bool:
        """Keep ``tokens`` to give back later if ``stopped`` leaves their call's outcome
        unknown (Redis did not answer: a timeout, a connection that failed). For a fill or
        a give-back too: it may never have gone out (a connection made during a stall times
        out in its handshake), and its lease would then hold until ``lease_ttl``."""
        if isinstance(stopped, RedisError) and not isinstance(stopped, ResponseError):
            self._doubted.add(tokens, self._clock() + ttl)
            return True
        return False

    def _give_back_doubted(self) -> Steps[None]:
        """Give back the tokens of lease calls that timed out (best effort), now that Redis
        answered a call sent after theirs. Those it cannot tell were given back are kept for
        Redis's next answer: all of them when the give-back failed whole or was stopped (an
        interrupt, a cancellation: raised), and those of a call that failed in its place or
        was not sent (a later one of several, :mod:`.chunks`; a cluster's node). Counted
        given back with the others, their leases held until ``lease_ttl``."""
        prefix = self.stored.prefix
        now = self._clock()
        doubted: list[tuple[str, str]] = []
        try:  # from the take on: stopped anywhere here, they are kept
            doubted = self._doubted.take(now)
            calls = [([lease_key(prefix + key)], [token]) for key, token in doubted]
            replies = yield from self._run_scripts(RELEASE_IF_HOLDING, calls, False)
        except Exception as exc:
            if isinstance(exc, RedisError):  # Redis stalled again: kept for its next answer
                self._doubted.add_pairs(doubted, now + LATER)
            log.debug(  # else they expire
                "tier %r: giving back %d leases failed: %s", self.stored.name, len(doubted), exc
            )
            return
        except BaseException:
            self._doubted.add_pairs(doubted, now + LATER)
            raise
        for (key, token), reply in zip(doubted, replies, strict=False):
            if isinstance(reply, Exception):
                self._doubt(reply, {key: token}, LATER)
            else:
                self._taken.settle((token,))
        self._doubted.add_pairs(doubted[len(replies) :], now + LATER)

    def release_quietly(self, tokens: Mapping[str, str]) -> Steps[None]:
        """Best-effort release on a path that is already failing: its own error is logged."""
        if not tokens:
            return
        try:
            yield from self.release_leases(tokens)
        except Exception as exc:  # the caller raises the first failure; the leases expire
            log.debug("tier %r: releasing %d leases failed: %s", self.stored.name, len(tokens), exc)

    # -- closing

    def farewell(self, io: RedisIO) -> Steps[None]:
        """Give back, as the tier closes (its calls ended: :mod:`.in_flight`), or as the
        asyncio tier's event loop ends (its tasks ended), every lease it took that Redis has
        not seen used or given back, and every one kept in doubt, on ``io`` (the tier's
        client, which calls no longer reach), before its pool closes (a loop's end: ``io``
        bounds each step, as that end must be). A chain closing gives back what its loads
        and writes hold, but a lease call still waiting for Redis was in none: its answer
        came back after that give-back, to a load whose fill and give-back then found the
        tier closed, or (Redis stalled past the timeout) it ran when Redis woke, its token
        dropped with the tier. The lease held
        until ``lease_ttl``, and every process reading the key waited ``lease_wait``. A
        lease given back or used meanwhile makes this give-back release nothing. Redis not
        answering (stalled), the give-back goes out unanswered (:mod:`.unanswered`), to run
        after the stalled calls as Redis wakes. Never raises (logged)."""
        now = self._clock()
        pairs = list(dict.fromkeys(self._taken.pairs(now) + self._doubted.take(now)))
        if not pairs:
            return
        prefix = self.stored.prefix
        calls = [([lease_key(prefix + key)], [token]) for key, token in pairs]
        try:
            if not self.is_cluster():
                for chunk in chunks(calls, self._keys_per_call):
                    yield io.scripts, (RELEASE_IF_HOLDING, chunk, True)
            else:
                for keys, args in calls:
                    yield io.script, (RELEASE_IF_HOLDING, keys, args)
            # Answered: not given back again by a later loop's end (a chain kept across
            # asyncio.run calls gives back as each of its loops ends).
            self._taken.settle(token for _, token in pairs)
            return
        except Exception as exc:
            log.debug(
                "tier %r: giving back %d leases as it closes failed: %s",
                self.stored.name,
                len(calls),
                exc,
            )
        try:
            commands = [("EVAL", RELEASE_IF_HOLDING, 1, *keys, *args) for keys, args in calls]
            if not (yield io.send_unanswered, (commands,)):
                log.warning(
                    "tier %r: %d leases taken by calls Redis did not answer may hold until "
                    "lease_ttl (no unanswered give-back on a cluster or over TLS)",
                    self.stored.name,
                    len(calls),
                )
        except Exception as exc:
            log.warning(
                "tier %r: %d leases taken by calls Redis did not answer may hold until "
                "lease_ttl: giving them back failed: %s",
                self.stored.name,
                len(calls),
                exc,
            )

    def can_lease(self, key: str) -> bool:
        """False for a key with braces of its own on a cluster: its lease (a hash-tagged key)
        could not share its slot."""
        return not self.is_cluster() or cluster_safe(self.stored.prefix + key)

    def _check_lease_possible(self, name: str) -> None:
        if not cluster_safe(name) and self.is_cluster():
            raise TierUnavailable(
                f"tier {self.stored.name!r}: key {name!r} has braces of its own, so its lease "
                "cannot share its cluster slot; loading it without a lease"
            )


def batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """``items`` in lists of at most ``size``."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
