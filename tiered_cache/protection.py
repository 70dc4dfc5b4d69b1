"""How the chain protects the source: stale serving, early refresh, timeouts and leases.

The options live in :class:`Protection`; the chain applies them. The defaults suit a throttled
DynamoDB table: a failing or slow source is answered from the last good value for a while,
hot entries refresh before they expire, and one process per fleet loads a missing key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: -ln(u) exceeds this with probability e^-20: past it the XFetch draw is never worth making.
_XFETCH_HORIZON = 20.0


@dataclass(frozen=True)
class Protection:
    """Source-protection options of a chain (all durations in seconds).

    Attributes:
        max_stale: how long past its freshness an entry may still be served, when the source
            fails or while a refresh runs; 0 turns stale serving off.
        stale_while_revalidate: serve a stale entry at once and refresh it in the background.
        fail_safe: serve a stale entry when the load fails (and the key was cached before).
        fail_safe_throttle: after a failed load, the stale value is served as fresh for this
            long, so a failing source is not asked again on every read.
        throttle_backoff: the longest rest of a key: after a load of a key with no stale
            value to serve was throttled (:class:`~tiered_cache.SourceThrottled`), loads of
            that key in this process fail at once with :class:`~tiered_cache.SourceResting`,
            without a request, for a tenth of this at first, twice as long after each
            throttle of the key in a row, at most this; a load the source answered, or an
            invalidation of the key, ends it; 0 turns it off (:mod:`tiered_cache.throttle_rest`).
        early_refresh_beta: the XFetch beta; 0 turns probabilistic early refresh off.
        soft_timeout: when a stale value exists, a load slower than this returns the stale
            value while the load finishes in the background.
        hard_timeout: a load slower than this raises :class:`~tiered_cache.LoadTimeout` to the
            caller (the load still finishes in the background and fills the tiers); a reader
            waiting for another caller's load gives up after :meth:`join_timeout`.
        lease: ``"auto"`` uses a lease on the first tier that offers them (Redis), so a fleet
            loads a missing key about once, through ``get`` or ``get_many``; ``"off"`` never
            does.
        lease_ttl: how long a lease holds if its holder dies.
        lease_wait: how long a process that did not get the lease waits for the holder's value
            before loading itself.
        lease_poll: pause between looks at the shared tier while waiting.
        refresh_workers: threads for background refreshes.
        max_abandoned_loads: how many loads left running after their caller gave up waiting
            (soft or hard timeout; on the asyncio chain also an untimed load begun again for
            a cancelled caller) make a miss on another key fail at once with
            :class:`~tiered_cache.LoadTimeout` instead of starting one more load: the source
            is in trouble, and the new load would likely hang too. An untimed load is not
            begun again past it.
        max_timed_loads: most timed loads (with a soft or a hard timeout) running at once,
            hung ones included. Each runs on a thread (a task) of its own, so hung loads never
            hold up the others; as none can be stopped once started, a slot is taken before
            one starts, and a miss past this bound waits for a slot within its own timeout
            (:mod:`tiered_cache.timed_slots`). So at most this many hang, whatever
            ``max_abandoned_loads`` says; kept apart from it so that a burst of healthy timed
            misses is not queued behind the bound meant for hung ones.
        close_wait: how long the asyncio chain's ``aclose()`` waits for the loads it
            cancels (loads left running by their callers, background refreshes) to end; past
            it the close gives their leases back, logs a warning and counts
            ``close_loads_left_running``, and each ends by itself, filling nothing. A load
            that ignores its cancellation (a source client that swallows it, or whose
            cleanup waits on a dead server) held the close for good. The threaded chain's
            close waits for no caller's load.
    """

    max_stale: float = 300.0
    stale_while_revalidate: bool = True
    fail_safe: bool = True
    fail_safe_throttle: float = 5.0
    throttle_backoff: float = 1.0
    early_refresh_beta: float = 1.0
    soft_timeout: float | None = 1.0
    hard_timeout: float | None = None
    lease: Literal["auto", "off"] = "auto"
    lease_ttl: float = 3.0
    lease_wait: float = 3.0
    lease_poll: float = 0.02
    refresh_workers: int = 4
    max_abandoned_loads: int = 16
    max_timed_loads: int = 64
    close_wait: float = 1.0

    @classmethod
    def never_stale(cls, **overrides: object) -> Protection:
        """Plain read-through: nothing stale is ever served, no early refresh, no timeouts.
        Leases stay as configured (``overrides`` may change anything)."""
        options: dict[str, object] = {
            "max_stale": 0.0,
            "stale_while_revalidate": False,
            "fail_safe": False,
            "early_refresh_beta": 0.0,
            "soft_timeout": None,
        }
        options.update(overrides)
        return cls(**options)  # type: ignore[arg-type]

    def join_timeout(self, leasing: bool) -> float | None:
        """How long a reader waits for another caller's load of its key (single-flight):
        the longest a timed leader takes, its lease wait and then its hard timeout. A
        leader that is not timed (a ``get_many``'s batch) held a joined ``get`` past its
        hard timeout, for as long as the source hung. ``None``: no hard timeout."""
        if self.hard_timeout is None:
            return None
        return self.hard_timeout + (self.lease_wait if leasing else 0.0)

    @property
    def xfetch_window_factor(self) -> float:
        """Multiplied by an entry's load duration: how long before its soft expiry an early
        refresh can happen at all (beyond it the draw below never fires in practice)."""
        return self.early_refresh_beta * _XFETCH_HORIZON


class RefreshDue:
    """The type of :data:`REFRESH_DUE`."""

    def __repr__(self) -> str:
        return "REFRESH_DUE"


#: Returned by the chain's L1 lookup instead of a value when XFetch picked this read to
#: refresh the key (the decorator's generated wrapper checks for it).
REFRESH_DUE = RefreshDue()


def xfetch_due(now: float, soft_expiry: float, load_duration: float, beta: float, u: float) -> bool:
    """The XFetch rule: refresh when ``now - delta * beta * ln(u) >= expiry``.

    From Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache Stampede Prevention",
    VLDB 2015: with ``u`` uniform in (0, 1], the chance of refreshing grows exponentially as the
    expiry nears, faster for values that took long (``delta``) to compute, so that about one
    reader refreshes a hot key shortly before it would expire for everyone.
    """
    if u <= 0.0:
        u = 1e-300
    return now - load_duration * beta * math.log(u) >= soft_expiry
