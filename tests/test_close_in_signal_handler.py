"""``close()`` from a signal handler that interrupted a call of the chain on the main thread
(a worker's SIGTERM handler closing its cache while the main thread reads).

The handler runs between two steps of the interrupted call, maybe under a lock the close
needs. Each test raises the signal from inside the memory tier's lock (a policy that raises
it as a key is offered or looked up), in a forked child so that a hang is a report missing,
not a hung test run; the rounds of tools/signal_close.py find the same at random instants."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from tiered_cache import ChainClosedError, MemoryTier, TieredCache
from tiered_cache.memory import LruPolicy
from tiered_cache.signal_frames import in_signal_handler
from tiered_cache.slot import Slot
from tiered_cache.testing.forked import in_a_child


class SignalUnderTheLock(LruPolicy):
    """An LRU whose ``put`` (or ``get``) raises SIGUSR1 once armed: called with the memory
    tier's lock held, so the handler runs under it."""

    def __init__(self, on: str) -> None:
        super().__init__(100)
        self.on = on
        self.armed = False

    def _maybe_signal(self, what: str) -> None:
        if self.armed and what == self.on:
            self.armed = False
            signal.raise_signal(signal.SIGUSR1)

    def put(self, key: str, slot: Slot) -> bool:
        self._maybe_signal("put")
        return super().put(key, slot)

    def get(self, key: str) -> Slot | None:
        self._maybe_signal("get")
        return super().get(key)


@pytest.mark.parametrize("on", ["put", "get"], ids=["a fill", "a miss"])
def test_close_from_a_handler_interrupting_the_memory_tier_under_its_lock(on: str) -> None:
    """Seen failing before close() finished aside in a handler: the child reported nothing
    within 20 s (the handler's close waited in ``MemoryTier.clear`` for the lock its own
    thread held). Now the handler's close returns, the interrupted call ends with its value,
    the next call is refused, and a ``close()`` after the handler waits for the rest (the
    memory tier emptied, the background work stopped)."""

    def body() -> list[Any]:
        policy = SignalUnderTheLock(on)
        memory = MemoryTier(policy=policy)
        cache = TieredCache([memory])
        seen: list[Any] = []

        def on_signal(signum: int, frame: Any) -> None:
            cache.close()
            seen.append(("handler closed", cache.closed))

        signal.signal(signal.SIGUSR1, on_signal)
        assert cache.get("warm", lambda: "up") == "up"
        policy.armed = True
        seen.append(("interrupted call", cache.get("k", lambda: "v")))
        try:
            cache.get("later", lambda: "v")
        except ChainClosedError:
            seen.append("later call refused")
        cache.close()  # the finally of a service's main: waits for the close begun aside
        seen.append(("memory entries", len(memory)))
        seen.append(
            (
                "close threads",
                [t.name for t in threading.enumerate() if t.name == "tiered-cache-close"],
            )
        )
        return seen

    assert in_a_child(body, timeout=20) == [
        ["handler closed", True],
        ["interrupted call", "v"],
        "later call refused",
        ["memory entries", 0],
        ["close threads", []],
    ]


def test_a_close_outside_a_handler_is_done_when_it_returns() -> None:
    """The usual close is done when it returns, with a handler installed for some signal or
    not: its thread (tiered_cache.closing) has ended too."""
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    try:
        memory = MemoryTier()
        cache = TieredCache([memory])
        cache.get("k", lambda: "v")
        before = threading.active_count()
        cache.close()
        assert (len(memory), threading.active_count() - before, cache.closed) == (0, 0, True)
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_in_signal_handler_sees_the_handlers_frame_only() -> None:
    """The handler's frame found below the caller, for each kind of handler signal.signal
    takes; outside the handler, and on another thread, False."""

    class Handler:
        def __call__(self, signum: int, frame: Any) -> None:
            seen.append(in_signal_handler())

        def method(self, signum: int, frame: Any) -> None:
            seen.append(in_signal_handler())

    def function(signum: int, frame: Any) -> None:
        seen.append(in_signal_handler())

    import functools

    seen: list[bool] = []
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        for handler in (function, Handler(), Handler().method, functools.partial(function)):
            signal.signal(signal.SIGUSR2, handler)
            signal.raise_signal(signal.SIGUSR2)
            seen.append(in_signal_handler())
        other: list[bool] = []
        signal.signal(signal.SIGUSR2, function)
        thread = threading.Thread(target=lambda: other.append(in_signal_handler()))
        thread.start()
        thread.join()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [True, False] * 4
    assert other == [False]


#: Held by ``Thread._stop``, which ``join()`` and ``is_alive()`` run once a thread that is not
#: a daemon has ended, and taken by every such thread as it begins (``_set_tstate_lock``),
#: before ``Thread.start`` returns to its caller: a plain lock (CPython 3.11 and 3.12).
THREAD_STOP_HELPER = getattr(threading, "_maintain_shutdown_locks", None)


def sigterm_as_threading_stops_a_thread() -> object:
    """A trace function that sends the process SIGTERM (``os.kill``) once, as the main thread
    enters ``_maintain_shutdown_locks`` under ``threading``'s lock of the ended threads: the
    handler runs there, the lock held by the frame it interrupted."""

    def calls(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is THREAD_STOP_HELPER.__code__:  # type: ignore[union-attr]
            sys.settrace(None)
            os.kill(os.getpid(), signal.SIGTERM)

    return calls


def join_a_thread_of_ones_own() -> None:
    worker = threading.Thread(target=lambda: None)  # not a daemon: the main thread's kind
    worker.start()
    worker.join()


def close_another_chain() -> None:
    TieredCache([MemoryTier()]).close()  # waits for (joins) that chain's close thread


@pytest.mark.skipif(THREAD_STOP_HELPER is None, reason="threading keeps no such lock here")
@pytest.mark.parametrize(
    "joining", [join_a_thread_of_ones_own, close_another_chain], ids=["a join", "a close"]
)
def test_close_from_a_sigterm_handler_landing_as_the_main_thread_joins_a_thread_returns(
    joining: Callable[[], None],
) -> None:
    """SIGTERM lands while the main thread joins a thread that has ended (the service's own
    worker, or another chain's close thread), inside ``threading``'s lock of the ended
    threads; the handler closes the chain. Seen failing: the child reported nothing within 20
    s (the handler's close waited in ``Thread.start`` for its close thread to begin, which
    waited for that lock). Now the handler's close returns, the join ends, and a close after
    the handler waits for the rest (the memory tier emptied, no close thread left)."""

    def body() -> list[Any]:
        memory = MemoryTier()
        cache = TieredCache([memory])
        cache.get("k", lambda: "v")
        seen: list[Any] = []

        def on_term(signum: int, frame: Any) -> None:
            cache.close()
            seen.append(("handler closed", cache.closed))

        signal.signal(signal.SIGTERM, on_term)
        sys.settrace(sigterm_as_threading_stops_a_thread())  # type: ignore[arg-type]
        try:
            joining()
        finally:
            sys.settrace(None)
        seen.append("joined")
        cache.close()
        seen.append(("memory entries", len(memory)))
        close_threads = [t for t in threading.enumerate() if t.name == "tiered-cache-close"]
        seen.append(("close threads", len(close_threads)))
        return seen

    assert in_a_child(body, timeout=20) == [
        ["handler closed", True],
        "joined",
        ["memory entries", 0],
        ["close threads", 0],
    ]
