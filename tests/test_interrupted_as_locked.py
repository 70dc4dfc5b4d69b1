"""A signal handler that raises (Ctrl-C's KeyboardInterrupt) as a locked step of the core
takes its lock leaves the lock free: held, every later call on that cache would wait for it
for ever. On the pure-Python core, CPython 3.11 runs a pending handler as a call returns, so
``lock.acquire()`` followed by ``try: ... finally: lock.release()`` raised there, before the
``try``, with the lock held. The signal lands on the thread that held the lock, as a signal
sent to the process may (it breaks no wait of the main thread's). And one that lands in the
main thread while it waits for the lock (librt's, since) ends the wait, the lock not taken."""

from __future__ import annotations

from collections.abc import Callable
from types import CodeType
from typing import Any

from tiered_cache import MemoryTier
from tiered_cache.compiled import compiled_core
from tiered_cache.invalidation_log import InvalidationLog
from tiered_cache.memory_core import MemoryCore
from tiered_cache.singleflight import LEAD, FlightTable, SingleFlight
from tiered_cache.testing.interrupts import interrupted_at_lock
from tiered_cache.testing.pure_core import on_the_pure_core
from tiered_cache.tier import Entry


def _memory() -> tuple[MemoryCore, Any]:
    tier = MemoryTier(max_entries=100)
    tier.set("k", Entry("old", 1e12))
    return tier._core, tier


def _set() -> tuple[Any, CodeType, Callable[[], object]]:
    core, tier = _memory()
    return core.lock, MemoryCore.set.__code__, lambda: tier.set("k", Entry("new", 1e12))


def _replace() -> tuple[Any, CodeType, Callable[[], object]]:
    core, tier = _memory()
    return core.lock, MemoryCore.replace.__code__, lambda: tier.replace("k", Entry("new", 1e12))


def _delete_many() -> tuple[Any, CodeType, Callable[[], object]]:
    core, tier = _memory()
    return core.lock, MemoryCore.delete_many.__code__, lambda: tier.delete_many(["k"])


def _land_one() -> tuple[Any, CodeType, Callable[[], object]]:
    flights = SingleFlight()
    flight, role = flights.join_or_lead("k", tag=0)
    assert role == LEAD
    return (
        flights._lock,
        FlightTable.land_one.__code__,
        lambda: flights.land_one("k", flight, "loaded", None),
    )


def _record() -> tuple[Any, CodeType, Callable[[], object]]:
    log = InvalidationLog()
    return log._lock, InvalidationLog._record.__code__, lambda: log.record_key("k")


SITES = {
    "MemoryCore.set": _set,
    "MemoryCore.replace": _replace,
    "MemoryCore.delete_many": _delete_many,
    "FlightTable.land_one": _land_one,
    "InvalidationLog._record": _record,
}
#: The steps whose wait for their lock an interrupt ends. Not a flight's landing: stopped,
#: it lands again (``singleflight.LANDINGS``), waiting for the lock again, so that the
#: flight's waiters are woken (tests/test_stopped_landings.py).
WAITS = {name: site for name, site in SITES.items() if name != "FlightTable.land_one"}


def test_an_interrupt_as_a_locked_step_takes_its_lock_leaves_the_lock_free() -> None:
    """Each of the core's locked steps, interrupted as its lock is taken: the lock is free
    after (a later call would take it), on the pure core, where the instant exists."""
    if compiled_core():
        on_the_pure_core(test_an_interrupt_as_a_locked_step_takes_its_lock_leaves_the_lock_free)
        return
    held = []
    for name, site in SITES.items():
        lock, code, call = site()
        interrupted_at_lock(lock, code, call)
        if not lock.acquire(False):  # not locked() alone: taking it is what a later call does
            held.append(name)
        else:
            lock.release()
    assert held == []


def test_an_interrupt_while_a_locked_step_waits_for_its_lock_ends_the_wait_without_it() -> None:
    """Interrupted while it waits for the lock another thread holds, each step raises there
    and then (not once the lock comes), and leaves the lock to its holder: free once the
    holder lets it go. The wait is the lock's C code, the same compiled; the frames that say
    the main thread waits there are the pure core's."""
    if compiled_core():
        on_the_pure_core(
            test_an_interrupt_while_a_locked_step_waits_for_its_lock_ends_the_wait_without_it
        )
        return
    outcomes = {}
    for name, site in WAITS.items():
        lock, code, call = site()
        in_the_wait = interrupted_at_lock(lock, code, call, in_the_wait=True)
        free = lock.acquire(False)
        if free:
            lock.release()
        outcomes[name] = (in_the_wait, free)
    assert outcomes == dict.fromkeys(WAITS, (True, True))
