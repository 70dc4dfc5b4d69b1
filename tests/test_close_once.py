"""The threaded chain's close runs once, on a thread of its own, whoever asks
(:mod:`tiered_cache.closing`): a ``close()`` called where it cannot wait (a background
refresh's loader), a process forked while a close runs, a close interrupted as the process
ends. The Redis side (two closes at once, a close interrupted then finished by the next) is
in adapters/redis/tests/test_redis_close_interrupted.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from tiered_cache import ChainClosedError, MemoryTier, TieredCache
from tiered_cache.closing import CloseOnce
from tiered_cache.memory import LruPolicy
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.held_close import (
    ClosesCounted,
    HeldRefresh,
    until_the_close_waits,
    waiting_in,
)
from tiered_cache.testing.polling import until


def held() -> tuple[HeldRefresh, MemoryTier, ClosesCounted]:
    clock = FakeClock(1000.0)
    memory, source = MemoryTier(policy=LruPolicy(100), clock=clock), ClosesCounted()
    cache = TieredCache([memory], source, ttl=1.0, clock=clock)
    return HeldRefresh(cache, clock), memory, source


def test_a_close_from_a_refresh_loader_returns_and_the_chain_closes() -> None:
    """The close waits for the refresh running, whose loader called it (a loader that
    finds the service shutting down): it returns at once there. Seen failing:
    ``RuntimeError('cannot join current thread')`` out of that close (the loader's pool shut
    down from its own worker), the chain left half closed for good: the memory tier kept
    its entry after the next close, the source open."""
    clock = FakeClock(1000.0)
    memory, source = MemoryTier(policy=LruPolicy(100), clock=clock), ClosesCounted()
    cache = TieredCache([memory], source, ttl=1.0, clock=clock)
    inside = threading.Event()
    seen: list[str] = []

    def closing_loader() -> str:
        inside.set()
        try:
            cache.close()
            seen.append("closed")
        except Exception as exc:
            seen.append(repr(exc))
        return "new"

    assert cache.get("a") == "old"
    clock.advance(2.0)  # stale: served, and refreshed in the background
    assert cache.get("a", closing_loader) == "old"
    inside.wait()
    cache.close()
    assert seen == ["closed"]
    assert (len(memory), source.closes, cache.closed) == (0, 1, True)


def test_a_child_forked_while_its_parent_closes_closes_its_own_chain() -> None:
    """The parent's close waits for a refresh as the child is forked: the child's
    ``close()`` closes the child's chain (it cannot wait for the parent's close, whose
    thread the child does not have). Seen failing: it returned at once, the child's memory
    tier kept its entry (``1 == 0``) and its source open."""
    refresh, memory, source = held()
    closing = threading.Thread(target=refresh.cache.close)
    closing.start()
    until_the_close_waits()

    def child() -> list[Any]:
        refresh.cache.close()
        with pytest.raises(ChainClosedError):
            refresh.cache.get("a")
        return [len(memory), source.closes]

    try:
        assert in_a_child(child, timeout=20) == [0, 1]
    finally:
        refresh.go.set()
        closing.join()
    assert (len(memory), source.closes) == (0, 1)


SERVICE = """
import os, signal, sys, threading
sys.path[:0] = {path!r}
from tiered_cache import MemoryTier, TieredCache
from tiered_cache.closing import CloseOnce
from tiered_cache.memory import LruPolicy
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import ClosesCounted, HeldRefresh, until_the_close_waits

class Reported(ClosesCounted):
    def close(self):
        super().close()
        print("source closed", flush=True)

# Python leaves SIGINT ignored when it starts with it ignored (a test run started in the
# background by a shell without job control, nohup): Ctrl-C would then raise nothing here.
signal.signal(signal.SIGINT, signal.default_int_handler)
clock = FakeClock(1000.0)
memory = MemoryTier(policy=LruPolicy(100), clock=clock)
cache = TieredCache([memory], Reported(), ttl=1.0, clock=clock)
refresh = HeldRefresh(cache, clock)

def ctrl_c_then_let_go():
    until_the_close_waits()
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    refresh.go.set()

threading.Thread(target=ctrl_c_then_let_go, daemon=True).start()
with cache:  # the service's main ends: Ctrl-C lands in its close
    pass
"""


def test_a_close_interrupted_as_the_process_ends_finishes_before_it_exits() -> None:
    """Ctrl-C lands in the ``close()`` of a service's ``with`` as it ends, while the close
    waits for a refresh: the ``KeyboardInterrupt`` ends the process, whose exit waits for
    the close. Seen failing: the source was never closed (no ``source closed``)."""
    path = [p for p in sys.path if p]
    script = textwrap.dedent(SERVICE).format(path=path)
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    ended = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "KeyboardInterrupt" in ended.stderr
    assert ended.stdout.splitlines() == ["source closed"]


class SourceCloseHeld(ClosesCounted):
    """A source whose close waits until :attr:`go` is set: the chain's close is caught on
    its last step, its loader's pool already shut down (its workers ended)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.go = threading.Event(), threading.Event()

    def close(self) -> None:
        self.inside.set()
        self.go.wait()
        super().close()


def test_a_close_on_a_thread_that_took_an_ended_workers_ident_waits_for_the_close() -> None:
    """CPython gives a new thread the ident of one that ended (its stack reused): a thread
    started after the loader's pool shut down may carry an ended worker's ident. Its
    ``close()`` is not a refresh's loader's: it waits for the close running, as any caller's
    does, and never returns with the chain half closed. Seen failing: ``a close() returned
    with the chain half closed`` (the loader kept its ended workers' idents, and took that
    thread for one of them: for a refresh's loader, which returns at once)."""
    clock = FakeClock(1000.0)
    memory, source = MemoryTier(policy=LruPolicy(100), clock=clock), SourceCloseHeld()
    cache = TieredCache([memory], source, ttl=1.0, clock=clock)
    workers: list[int] = []

    def loader_on_a_worker() -> str:
        workers.append(threading.get_ident())
        return "new"

    assert cache.get("a") == "old"
    clock.advance(2.0)  # stale: served, and refreshed in the background on a worker
    assert cache.get("a", loader_on_a_worker) == "old"
    assert cache.wait_background(10)
    first = threading.Thread(target=cache.close)
    first.start()
    source.inside.wait()  # the pool shut down, its worker ended: the close ends on the source
    try:
        took: list[bool] = []  # per thread started: whether it has a worker's ident

        def close_if_a_workers_ident() -> None:
            mine = threading.get_ident() in workers
            took.append(mine)
            if mine:
                cache.close()

        def a_thread_checked() -> threading.Thread:
            before = len(took)
            thread = threading.Thread(target=close_if_a_workers_ident)
            thread.start()
            until(lambda: len(took) > before, "the thread's ident checked")
            return thread

        for _ in range(1000):  # the next thread started takes it, as a rule
            thread = a_thread_checked()
            if took[-1]:
                break
            thread.join()
        else:
            pytest.skip("no thread took the ended worker's ident")
        until(
            lambda: not thread.is_alive() or waiting_in(thread, "close"),
            "the close() returned or waiting",
        )
        assert thread.is_alive(), "a close() returned with the chain half closed"
    finally:
        source.go.set()
        first.join()
    thread.join()


def test_two_closes_whose_threads_both_started_leave_no_close_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two ``close()`` at once, the first's thread not yet running as the second looks (it
    is starting: a loaded machine), so each starts a close thread; the second's runs the
    steps. Each ``close()`` returns once the thread it started has ended. Seen failing:
    the first returned while its thread (finding the close done) still ran, a
    ``tiered-cache-close`` thread left (adapters/redis/tests/test_redis_bus_close_held.py,
    under load)."""
    clock = FakeClock(1000.0)
    memory, source = MemoryTier(policy=LruPolicy(100), clock=clock), ClosesCounted()
    cache = TieredCache([memory], source, ttl=1.0, clock=clock)
    starting, go, waited_for = threading.Event(), threading.Event(), threading.Event()
    first: list[threading.Thread] = []
    left: list[bool] = []

    class FirstHeld(threading.Thread):
        """The first close thread: held in ``start`` until ``go``, then in its run until
        something waits for it (a thread still finishing when the close is done)."""

        def start(self) -> None:
            if not first and self.name == "tiered-cache-close":
                first.append(self)
                starting.set()
                go.wait()
            super().start()

        def run(self) -> None:
            if self in first:
                waited_for.wait()
            super().run()

        def join(self, timeout: float | None = None) -> None:
            if self in first:
                waited_for.set()
            super().join(timeout)

    def first_close() -> None:
        cache.close()
        left.append(first[0].is_alive())

    closing = threading.Thread(target=first_close)
    monkeypatch.setattr(threading, "Thread", FirstHeld)
    try:
        closing.start()
        starting.wait()
        cache.close()  # starts a second thread (the first is not running yet), which closes
        go.set()
        closing.join()
    finally:
        monkeypatch.undo()
        go.set()
        waited_for.set()
    assert left == [False]
    assert (len(memory), source.closes, cache.closed) == (0, 1, True)


def test_each_wait_for_a_failed_close_raises_an_error_of_its_own() -> None:
    """What the close's steps raised was raised as that one object by every close() (and the
    exit's): each raise set its ``__context__`` to what that caller was handling, which the
    callers before it then saw in theirs."""

    def steps() -> None:
        raise RuntimeError("a tier's close failed")

    close = CloseOnce(steps)
    close.start()
    raised: list[RuntimeError] = []
    for caller in ("first", "second"):
        try:
            raise KeyError(caller)
        except KeyError:
            with pytest.raises(RuntimeError, match="a tier's close failed") as failed:
                close.wait()
        raised.append(failed.value)
    assert [error.__context__.args for error in raised] == [("first",), ("second",)]
