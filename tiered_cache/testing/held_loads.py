"""Loads held open until a test releases them, to count loads of one key at once.

Single-flight promises one load of a key at a time in a process: a test starts a load, holds
it, makes another caller miss the key meanwhile, and reads :attr:`HeldLoads.started` (which
loads began, in order) and :attr:`HeldLoads.most` (the most that ran at once).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from .polling import async_eventually, async_until, until

if TYPE_CHECKING:
    from tiered_cache import AsyncTieredCache, TieredCache
    from tiered_cache.testing import FakeClock


class HeldLoads:
    """Loads named by the value they return, each held until :meth:`release`; thread-safe
    (the asyncio loaders poll their gate)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: list[str] = []
        self.running = 0
        self.most = 0
        self.gates: dict[str, threading.Event] = {}
        self.failing: set[str] = set()

    def begin(self, value: str) -> threading.Event:
        with self._lock:
            self.started.append(value)
            self.running += 1
            self.most = max(self.most, self.running)
            return self.gates.setdefault(value, threading.Event())

    def end(self, value: str) -> str:
        """The load of ``value`` ends: it returns ``value``, or raises if released failing."""
        with self._lock:
            self.running -= 1
            if value in self.failing:
                raise RuntimeError(f"the load of {value!r} failed")
        return value

    def loader(self, value: str) -> Callable[[], str]:
        def load() -> str:
            self.begin(value).wait(10)
            return self.end(value)

        return load

    def batch_loader(self, value: str) -> Callable[[Sequence[str]], dict[str, str]]:
        def load(keys: Sequence[str]) -> dict[str, str]:
            return dict.fromkeys(keys, self.loader(value)())

        return load

    def async_loader(self, value: str) -> Callable[[], Awaitable[str]]:
        async def load() -> str:
            gate = self.begin(value)
            await async_eventually(gate.is_set, every=0.001)
            return self.end(value)

        return load

    def release(self, value: str, *, fail: bool = False) -> None:
        """Let the load of ``value`` end (now, or at once when it starts); ``fail``: raising."""
        with self._lock:
            if fail:
                self.failing.add(value)
            gate = self.gates.setdefault(value, threading.Event())
        gate.set()


def start_refresh(cache: TieredCache, clock: FakeClock, loads: HeldLoads, stale_in: float) -> None:
    """``k`` loaded (``v1``), stale ``stale_in`` seconds later: a read serves ``v1`` and
    starts the key's background refresh, whose load (``refresh``) is held until released."""
    loads.release("v1")
    assert cache.get("k", loads.loader("v1")) == "v1"
    clock.advance(stale_in)
    assert cache.get("k", loads.loader("refresh")) == "v1"
    until(lambda: loads.started == ["v1", "refresh"], "the refresh started")


async def start_async_refresh(
    cache: AsyncTieredCache, clock: FakeClock, loads: HeldLoads, stale_in: float
) -> None:
    """:func:`start_refresh` on the asyncio chain."""
    loads.release("v1")
    assert await cache.get("k", loads.async_loader("v1")) == "v1"
    clock.advance(stale_in)
    assert await cache.get("k", loads.async_loader("refresh")) == "v1"
    await async_until(lambda: loads.started == ["v1", "refresh"], "the refresh started")
