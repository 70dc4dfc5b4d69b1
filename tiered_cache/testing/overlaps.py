"""Counting loads of one key at once: single-flight promises one per key at a time in a process.

For the rigs under ``tools/`` that load under faults (``outage_loads.py``,
``refresh_overlaps.py``): their loaders call :meth:`LoadCounts.begin` and
:meth:`LoadCounts.end` around each load, their readers :meth:`LoadCounts.served` (values are
``v:<key>``) or :meth:`LoadCounts.failed`; :func:`sync_reader` and :func:`async_readers` are
such readers.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from ..async_chain import AsyncTieredCache
from ..chain import TieredCache


class LoadCounts:
    """One face's loads: per key, and how many of one key ran at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loads: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        #: Loads that began while another load of the same key ran.
        self.overlaps: Counter[str] = Counter()
        self.most = 0
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.wrong = 0

    def begin(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self.loads[key] += 1
                if self.running[key]:
                    self.overlaps[key] += 1
                self.running[key] += 1
                self.most = max(self.most, self.running[key])

    def end(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self.running[key] -= 1

    def served(self, values: dict[str, Any]) -> None:
        with self._lock:
            self.calls += 1
            self.wrong += sum(1 for key, value in values.items() if value != f"v:{key}")

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.calls += 1
            self.errors[type(exc).__name__] += 1

    def report(self, face: str) -> dict[str, Any]:
        return {
            "face": face,
            "calls": self.calls,
            "errors": dict(self.errors),
            "wrong": self.wrong,
            "loads": sum(self.loads.values()),
            "most_loads_of_a_key": max(self.loads.values(), default=0),
            "overlaps": sum(self.overlaps.values()),
            "most_at_once": self.most,
        }


#: The shortest and longest a rig's load takes, in seconds (drawn uniformly).
Delay = tuple[float, float]


def pick(rng: random.Random, keys: list[str]) -> str | list[str]:
    """A request: one key (a ``get``, 70 %) or three (a ``get_many``)."""
    return rng.choice(keys) if rng.random() < 0.7 else rng.sample(keys, 3)


def sync_reader(
    cache: TieredCache, keys: list[str], counts: LoadCounts, stop: threading.Event, delay: Delay
) -> None:
    """Read until ``stop``, loading (counted) what the chain misses."""
    rng = random.Random()

    def load(wanted: Sequence[str]) -> dict[str, str]:
        counts.begin(wanted)
        try:
            time.sleep(rng.uniform(*delay))
            return {key: f"v:{key}" for key in wanted}
        finally:
            counts.end(wanted)

    def load_one(key: str) -> str:
        return load([key])[key]

    while not stop.is_set():
        wanted = pick(rng, keys)
        try:
            if isinstance(wanted, str):
                counts.served({wanted: cache.get(wanted, partial(load_one, wanted))})
            else:
                counts.served(cache.get_many(wanted, load))
        except Exception as exc:
            counts.failed(exc)


async def async_readers(
    cache: AsyncTieredCache,
    keys: list[str],
    counts: LoadCounts,
    stop: threading.Event,
    *,
    n: int,
    delay: Delay,
) -> None:
    """``n`` coroutines reading until ``stop``, loading (counted) what the chain misses."""

    async def reader() -> None:
        rng = random.Random()

        async def load(wanted: Sequence[str]) -> dict[str, str]:
            counts.begin(wanted)
            try:
                await asyncio.sleep(rng.uniform(*delay))
                return {key: f"v:{key}" for key in wanted}
            finally:
                counts.end(wanted)

        async def load_one(key: str) -> str:
            return (await load([key]))[key]

        while not stop.is_set():
            wanted = pick(rng, keys)
            try:
                if isinstance(wanted, str):
                    value = await cache.get(wanted, partial(load_one, wanted))
                    counts.served({wanted: value})
                else:
                    counts.served(await cache.get_many(wanted, load))
            except Exception as exc:
                counts.failed(exc)
            await asyncio.sleep(0)

    await asyncio.gather(*(reader() for _ in range(n)))


def print_rounds(rounds: int, one_round: Callable[[], Iterable[dict[str, Any]]]) -> int:
    """Run ``one_round`` ``rounds`` times, print each report as a JSON line, and return the
    rigs' exit status: 1 when any report counted overlaps, caller errors or wrong values."""
    bad = False
    for _ in range(rounds):
        for report in one_round():
            sys.stdout.write(json.dumps(report) + "\n")
            sys.stdout.flush()
            bad = bad or bool(report["overlaps"] or report["errors"] or report["wrong"])
    return 1 if bad else 0
