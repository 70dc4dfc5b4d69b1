"""The source rests from a key it throttled when there is no stale copy to rest on.

``fail_safe_throttle`` rests the source on a stale copy, served as fresh for a while after a
failed load. A key with no copy anywhere (never cached, or past its hard expiry) had no rest:
under a throttled hot partition every caller after a failed single flight started the next
load, and a viral key that was never cached kept the table busy with one load after another.
So a :class:`~tiered_cache.SourceThrottled` that reached a caller rests its key; a load of
that key in the rest fails at once with :class:`~tiered_cache.SourceResting` (a
``SourceThrottled``, the first error its cause) and no request is made. An invalidation of
the key since the failed load read (its fence mark) ends the rest: the key was written, and
its next miss may find the source's new value.

How long: exponential back-off per key. The first rest is a tenth of ``throttle_backoff``;
each throttle of the key in a row (noted within ``throttle_backoff`` of its last rest's end)
doubles it, up to ``throttle_backoff``; a load of the key that the source answered forgets
it. A fixed rest of ``throttle_backoff`` left a key failing for up to its whole length after
a throttle that lifted sooner (a flapping table); a fixed short one asked a long throttle
several times as often. Doubling keeps the good half of each: a long throttle is asked about
once per ``throttle_backoff``, and a key rests about as long as its throttle has lasted, at
most (the strategies compared: ``benchmarks/bench_throttle_rest.py``,
docs/benchmarks/source-protection.md).

Per key: a throttled partition says nothing of the other keys. Bounded: at most ``limit`` keys
are remembered (the oldest go first; a key forgotten early is only loaded once more), pruned a
quarter at a time: a storm over many keys does not look at every resting key on each throttle.
No lock: each step is one dictionary call, atomic under the GIL, so a fork never inherits a
held lock.

The clock is the chain's, the wall clock by default: stepped back, a rest would have more left
than its length (an hour back, an hour more); such a rest is over, as is one of a NaN backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from .errors import SourceResting, SourceThrottled, frameless, said

__all__ = ["ThrottleRests"]

#: A rest: until when, how long it is, the fence mark the failed load read under, its error.
_Rest = tuple[float, float, int, SourceThrottled]

#: The first rest of a key, as a share of ``throttle_backoff`` (the longest).
FIRST_SHARE = 0.1


class ThrottleRests:
    """Keys the source throttled, each resting for a while after its failure (see above).

    Args:
        backoff: the longest rest, in seconds; 0 turns resting off.
        clock: injected time.
        overtaken: the fence's ``overtaken(mark, keys)``: the keys invalidated since ``mark``.
        limit: most keys remembered at once.
        first: the first rest (``FIRST_SHARE`` of ``backoff`` if None; ``backoff`` itself
            makes every rest as long, as before the doubling).
    """

    def __init__(
        self,
        backoff: float,
        clock: Callable[[], float],
        overtaken: Callable[[int, Collection[str]], list[str]],
        limit: int = 4096,
        first: float | None = None,
    ) -> None:
        self._backoff = backoff
        self._first = backoff * FIRST_SHARE if first is None else min(first, backoff)
        self._clock = clock
        self._overtaken = overtaken
        self._limit = limit
        self._rests: dict[str, _Rest] = {}

    def note(self, key: str, mark: int, error: BaseException) -> None:
        """A load of ``key`` that read under ``mark`` failed with ``error``, which its caller
        gets: a throttle (not a rest's own answer) rests the key."""
        if (
            not self._backoff > 0  # 0 turns it off; NaN too (given here, not by Protection)
            or not isinstance(error, SourceThrottled)
            or isinstance(error, SourceResting)
        ):
            return
        # Kept without the frames it went through (each holds its caller's, up to a service's
        # handler): a rest outlives the call, and one past its backoff stays until pruned.
        kept = frameless(error)
        if kept is None:
            kept = SourceThrottled(said(error))
        rests = self._rests
        now = self._clock()
        last = rests.pop(key, None)  # re-inserted last: the dictionary's order is their age
        if last is None or now - last[0] > self._backoff:
            rest = self._first  # not in a row: the key was not throttled lately
        else:
            rest = min(last[1] * 2, self._backoff)
        rests[key] = (now + rest, rest, mark, kept)
        if len(rests) > self._limit:
            self._prune()

    def answered(self, keys: Iterable[str]) -> None:
        """The source answered a load of ``keys``: their next throttle rests them briefly."""
        rests = self._rests
        if rests:  # the common load: nothing rests
            for key in keys:
                rests.pop(key, None)

    def _prune(self) -> None:
        now = self._clock()
        rests = self._rests
        keys = list(rests)  # one C call: no other thread changes the dict during it
        for key in keys:
            rest = rests.get(key)
            if rest is not None and now - rest[0] > self._backoff:  # no longer in a row
                rests.pop(key, None)
        # Down to three quarters of the limit, the oldest first: the next quarter of new keys
        # rest without a look at the others (pruned on each, a storm over many keys paid a
        # look at every resting key for every throttle).
        excess = len(rests) - max(1, self._limit - self._limit // 4)
        if excess > 0:
            for key in list(rests)[:excess]:
                rests.pop(key, None)

    def resting(self, keys: Iterable[str]) -> dict[str, SourceResting]:
        """The keys of ``keys`` that rest, each with the error its load gets at once (load
        the others)."""
        rests = self._rests
        if not rests:  # the common miss: nothing rests
            return {}
        now = self._clock()
        answers: dict[str, SourceResting] = {}
        for key in keys:
            found = rests.get(key)
            if found is None:
                continue
            until, rest, mark, error = found
            # Over: its end passed, or more than its length is left (the clock went back), or
            # its end is NaN; or the key was invalidated since its load read.
            if not now < until <= now + rest or self._overtaken(mark, (key,)):
                continue
            answer = SourceResting(
                f"not loading {key!r}: the source throttled it lately; resting {rest:g}s "
                f"(doubled on each throttle in a row, up to throttle_backoff "
                f"{self._backoff:g}s), {until - now:.3g}s left ({said(error)})"
            )
            answer.__cause__ = error
            answers[key] = answer
        return answers
