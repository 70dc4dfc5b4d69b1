"""The slots of timed loads: one rule for the threaded and the asyncio loader.

A timed load (one with a soft or a hard timeout) runs on a thread (or a task) of its own, and
once started it cannot be stopped: a caller that stops waiting leaves it running (abandoned,
"hung" until it ends). So a slot is taken *before* a load starts:

- at most ``protection.max_timed_loads`` timed loads run at once, hung or not (the most
  threads the loaders start for them); a miss past it waits for a slot;
- once ``protection.max_abandoned_loads`` of them hang, a miss on another key is refused at
  once (:class:`~tiered_cache.LoadTimeout`, counted ``loads_refused``): the source is in
  trouble, and each new load would likely hang too. Fail-safe may then serve a stale value,
  as for any failed load;
- the wait for a slot is part of the caller's timeout (:func:`after_wait`), so a miss that
  waits its whole timeout for a slot ran out of that timeout like a slow load: past the soft
  timeout it serves the stale value (:class:`ServeStale`, counted ``soft_timeouts``), past
  the hard one it raises :class:`~tiered_cache.LoadTimeout` (counted ``hard_timeouts``); and
  ``loads_refused`` says no load was started. (The asyncio loader raised LoadTimeout past a
  soft timeout, so with ``fail_safe`` off it failed where the threaded loader served the
  stale value, and neither counted the same.)

The threaded loader waits with :meth:`TimedSlots.take`; the asyncio loader asks
:meth:`TimedSlots.try_take` between its own awaits. A caller that stops waiting for a load
once it runs raises and counts as both loaders do (:meth:`TimedSlots.timed_out`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from .errors import LoadTimeout
from .metrics import CacheMetrics
from .protection import Protection


class ServeStale(Exception):
    """A timed load gave up on its soft timeout: serve the stale value instead."""


def after_wait(
    soft: float | None, hard: float | None, waited: float
) -> tuple[float | None, float | None]:
    """The timeout left to a load that waited ``waited`` seconds for its slot (the soft one
    when given, else the hard one): the wait is part of the caller's timeout."""
    if soft is not None:
        return max(0.0, soft - waited), hard
    if hard is not None:
        return None, max(0.0, hard - waited)
    return None, None


class Ending(Protocol):
    """A left load as both loaders hold it: a thread's future or an asyncio task."""

    def done(self) -> bool: ...


def may_join_left(load: Ending, key: str, mark: int, may_join: Callable[[str, int], bool]) -> bool:
    """Whether a miss of ``key`` waits for ``load``, a load of it its caller left (read under
    ``mark``), rather than load the key itself: only while that load runs, and only if the
    fence lets a miss join it (``may_join``: :meth:`Fence.may_join`). A load that has ended
    is not joined, though its end may not be noted yet (the done callbacks that drop it from
    the loads a miss joins run after the waiters its end woke: ``wait_background()``, or a
    task its last step woke): it filled, or was refused, and its outcome was its own
    caller's. Joined, the miss raised that load's failure as its own. The one copy of this
    rule: both loaders ask here."""
    return not load.done() and may_join(key, mark)


class Claim:
    """One load's claim on a slot: marked taken in the very step the slot is counted (no
    interrupt can land between the two), and given back once, by whoever ends the load
    (:meth:`give_back`: a no-op if no slot was taken, or if it was given back already)."""

    __slots__ = ("_slots", "taken")

    def __init__(self, slots: TimedSlots) -> None:
        self._slots = slots
        self.taken = False

    def give_back(self) -> None:
        if self.taken:
            self.taken = False
            self._slots.done()


class TimedSlots:
    """The timed loads running and hung, and the rule for starting one more (see the
    module's docstring). Thread-safe: a chain's loads may come from many threads or loops.

    Args:
        protection: ``max_timed_loads`` and ``max_abandoned_loads``.
        metrics: the chain's counters (refusals and timeouts).
        monotonic: the clock of the waits (real time, as a future's ``result(timeout)``).
    """

    def __init__(
        self,
        protection: Protection,
        metrics: CacheMetrics,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_running = protection.max_timed_loads
        self._max_hung = protection.max_abandoned_loads
        self._metrics = metrics
        self._monotonic = monotonic
        self._changed = threading.Condition()
        #: Timed loads running (hung ones included).
        self.running = 0
        #: Of those, the ones their callers stopped waiting for.
        self.hung = 0

    def take(
        self, key: str, timeout: float, *, serve_stale: bool, claim: Claim | None = None
    ) -> float:
        """Wait (within ``timeout``) for a slot to load ``key``; the seconds waited. Raises
        as :meth:`try_take` when refused. ``claim`` is marked taken with the slot: a caller
        interrupted once the slot was counted (before this returned, or before it tied the
        slot to its load) gives it back through its claim; else the slot stayed taken for
        the life of the cache.

        A waiter whose timeout ran out is refused even if a slot is free (it has no time
        left to load), and passes on the wakeup it may have taken: ``done()`` wakes one
        waiter, and that one may be a waiter whose wait was timing out, while another
        that still has time would sleep on."""
        with self._changed:
            start = self._monotonic()
            waited = 0.0
            verdict: bool | None = None
            try:
                verdict = self._verdict(claim=claim)
                while verdict is None and waited < timeout:
                    self._changed.wait(timeout - waited)
                    waited = self._monotonic() - start
                    verdict = self._verdict(in_time=waited < timeout, claim=claim)
            finally:
                if self.running < self._max_running and verdict is not True:
                    self._changed.notify()  # the wakeup, for a waiter that can use it
        if verdict:
            return waited
        raise self._refusal(key, timeout, hung=verdict is False, serve_stale=serve_stale)

    def try_take(
        self,
        key: str,
        timeout: float,
        waited: float,
        *,
        serve_stale: bool,
        claim: Claim | None = None,
    ) -> bool:
        """Take a slot to load ``key`` if one is free (True); False to wait and ask again.
        Raises :class:`~tiered_cache.LoadTimeout` when ``max_abandoned_loads`` hang, and once
        ``waited`` reaches ``timeout`` (a slot free then is left to a caller with time to
        load): :class:`ServeStale` (``serve_stale``: the timeout was the soft one) or
        LoadTimeout. ``claim``: as for :meth:`take`."""
        with self._changed:
            verdict = self._verdict(in_time=not waited or waited < timeout, claim=claim)
        if verdict:
            return True
        if verdict is None and waited < timeout:
            return False
        raise self._refusal(key, timeout, hung=verdict is False, serve_stale=serve_stale)

    def crowded(self) -> bool:
        """Whether a load asked for now would wait or be refused (read without the lock: a
        hint, for the asyncio loader to look for slots to give back first)."""
        return self.running >= self._max_running or self.hung >= self._max_hung

    def may_leave(self) -> bool:
        """Whether one more load may be left running, its caller gone: below
        ``max_abandoned_loads`` (an untimed load of the asyncio loader whose caller was
        cancelled is begun again as a left one only then: the source may be in trouble)."""
        with self._changed:
            return self.hung < self._max_hung

    def claim(self) -> Claim:
        """A claim for :meth:`take` (see there)."""
        return Claim(self)

    def _verdict(self, *, in_time: bool = True, claim: Claim | None = None) -> bool | None:
        """Under the lock: True (a slot taken, and ``claim`` marked in the same step), None
        (wait for one, or none taken: not ``in_time``), False (refused: too many hang)."""
        if self.hung >= self._max_hung:
            return False
        if self.running >= self._max_running or not in_time:
            return None
        self.running += 1
        if claim is not None:
            claim.taken = True
        return True

    def _refusal(self, key: str, timeout: float, *, hung: bool, serve_stale: bool) -> Exception:
        """What a miss refused a slot raises (and its counts)."""
        self._metrics.count("loads_refused")
        if hung:
            return LoadTimeout.no_slot(key, self.hung, hung=True, timeout=timeout)
        if serve_stale:
            self._metrics.count("soft_timeouts")
            return ServeStale()
        self._metrics.count("hard_timeouts")
        return LoadTimeout.no_slot(key, self._max_running, hung=False, timeout=timeout)

    def timed_out(
        self, key: str, timeout: float | None, *, serve_stale: bool, earlier: bool = False
    ) -> Exception:
        """What a caller that stopped waiting for a running load of ``key`` raises (and its
        count): :class:`ServeStale` past the soft timeout (``serve_stale``), else
        :class:`~tiered_cache.LoadTimeout` past the hard ``timeout``; the load goes on
        (``earlier``: an earlier caller's load, which this one joined)."""
        if serve_stale:
            self._metrics.count("soft_timeouts")
            return ServeStale()
        self._metrics.count("hard_timeouts")
        if earlier:
            waited = f"an earlier load of {key!r} is still running past the hard timeout"
        else:
            waited = f"loading {key!r} took longer than the hard timeout of {timeout}s"
        return LoadTimeout(
            f"{waited}; it goes on in the background and fills the cache when it finishes"
        )

    def done(self) -> None:
        """A timed load ended (its slot is free)."""
        with self._changed:
            self.running -= 1
            self._changed.notify()

    def abandoned(self) -> None:
        """A timed load's caller stopped waiting for it (counted ``abandoned_loads``)."""
        self._metrics.count("abandoned_loads")
        with self._changed:
            self.hung += 1
            self._changed.notify_all()  # a miss waiting for a slot may now be refused at once

    def abandoned_done(self) -> None:
        """An abandoned load ended."""
        with self._changed:
            self.hung -= 1
