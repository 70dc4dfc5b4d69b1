"""Leases whose call timed out: Redis may hold them, or take them later, under a token the
caller never saw.

A call that takes leases (a read's acquire, a write's steal) sent to a Redis that stalls (a
fork for a save, a swap storm, a paused VM: SIGSTOP) times out, but stays in Redis's socket
and runs when Redis wakes up: the lease is taken under a token nobody holds, until
``lease_ttl``, and every process reading the key waits ``lease_wait``. Given back at once, the
release would stall as well, and might run before the call it undoes. So the tokens are kept
here and given back after the tier's next lease call that Redis answered: Redis read the
stalled call in its first turn after waking, before anything sent after an answer.

A tier that closes cannot wait for that answer: once its calls ended
(:mod:`tiered_cache_redis.in_flight`), it gives back every lease it took that Redis has not
seen used or given back (:class:`Taken`) and the doubted ones
(:meth:`~tiered_cache_redis.commands.TierCommands.farewell`) before its pool closes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: At most this many tokens are kept (a long outage adds one per miss); the others expire.
KEPT = 10_000


class Doubted:
    """``token: (key, until)`` for each lease call that timed out, until given back (or past
    ``until``, when Redis let it expire). No lock: a dict's item store and ``popitem`` are
    atomic, and a lock held by a thread at a fork would stay held in the child."""

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def add(self, tokens: Mapping[str, str], until: float) -> None:
        """Keep ``tokens`` (``key: token``), whose leases would expire by ``until``."""
        kept = self._tokens
        for key, token in tokens.items():
            if len(kept) >= KEPT:
                return
            kept[token] = (key, until)

    def add_pairs(self, pairs: list[tuple[str, str]], until: float) -> None:
        """Keep ``(key, token)`` pairs again (their give-back failed)."""
        kept = self._tokens
        for key, token in pairs[: max(0, KEPT - len(kept))]:
            kept[token] = (key, until)

    def take(self, now: float) -> list[tuple[str, str]]:
        """``(key, token)`` of every token kept whose lease may still hold at ``now``, no
        longer kept."""
        taken: list[tuple[str, str]] = []
        tokens = self._tokens
        while True:
            try:
                token, (key, until) = tokens.popitem()
            except KeyError:
                return taken
            if until > now:
                taken.append((key, token))


class Taken:
    """The leases this tier took, or may have (a call on its way), that Redis has not yet
    seen used or given back through it: ``token: (key, until)``, kept until a fill or a
    give-back under the token was answered, or ``until`` (the lease's ttl) passed. What a
    closing tier gives back: its loads' fills and give-backs can no longer reach Redis. No
    lock, as :class:`Doubted`."""

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}

    def start(self, tokens: Mapping[str, str], until: float, now: float) -> None:
        """A call taking the leases ``tokens`` (``key: token``), held until ``until`` at
        most, goes out at ``now``."""
        kept = self._tokens
        if len(kept) >= KEPT:  # leases dropped with their keys (an invalidation) expire here
            for token, (_, expiry) in list(kept.items()):
                if expiry <= now:
                    kept.pop(token, None)
        if len(kept) < KEPT:
            for key, token in tokens.items():
                kept[token] = (key, until)

    def settle(self, tokens: Iterable[str]) -> None:
        """Redis answered a fill or a give-back under ``tokens``, or a lease call that did
        not take them: they hold nothing of this tier's any more."""
        kept = self._tokens
        for token in tokens:
            kept.pop(token, None)

    def pairs(self, now: float) -> list[tuple[str, str]]:
        """``(key, token)`` of every lease kept that may still hold at ``now``."""
        # A copy first (one call, atomic under the GIL): calls go on on other threads.
        return [(key, token) for token, (key, until) in list(self._tokens.items()) if until > now]
