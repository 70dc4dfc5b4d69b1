"""How long a throttled key should rest: back-off strategies replayed on virtual time.

A key the source throttled with no stale copy to serve rests (``protection.throttle_backoff``,
tiered_cache/throttle_rest.py): its loads fail at once with ``SourceResting``. Resting longer
saves requests while the table throttles, and costs errors once it answers again. This
replays three throttles against the asyncio chain (a memory tier, ``ttl`` 0.5 s, ``max_stale``
0.5 s; 10 keys, 5 read before the throttle and 5 never; 50 reader tasks, every other one
reading with ``get_many`` of two keys, each pausing 10 ms between reads; 2 writer tasks
``set`` three keys each every 0.25 s, one of them a never-cached key) and counts, per
strategy:

- requests: source calls (``load``, ``load_many``), all and while the table throttles (from
  its first switch on to its last switch off);
- errors: key reads answered with an error (``SourceThrottled``, ``SourceResting``), all and
  while the table would have answered them ("while open": a rest outlasting the throttle).

Throttles: ``flapping`` (on and off every 50 ms for 6 s), ``steady`` (6 s), ``burst``
(0.3 s). The source answers a throttled request after 40 ms (botocore's retries) and a served
one after 5 ms.

Deterministic: an event loop on a fake clock (a wait moves the clock, nothing sleeps), the
chain on that clock, its random draws seeded. A round's seed shifts the readers' start times
and the requests' latencies (by up to 20 %); every figure is the minimum / the median over
the rounds, the contenders interleaved in each (the order turning each round).

Strategies: ``none`` (0: every miss asks), ``fixed 1s`` (the rest before the doubling),
``fixed 0.1s``, ``half-open`` (0.1 s, then one load is let through and the key's other loads
keep resting until it answers), ``grow to .5s`` and ``grow to 2s`` (the committed rule with
``throttle_backoff`` 0.5 s and 2 s: a first rest of a tenth of it, doubled on each throttle of
the key in a row, up to it; forgotten once a load answers), and ``default``: what
``Protection()`` builds (the committed rule and default).

The pick (printed last): of the strategies that ask the steady throttle at most a quarter as
often as ``none`` (the rest's purpose), the one with the fewest errors while open, summed over
the throttles (medians).

    .venv/bin/python benchmarks/bench_throttle_rest.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import selectors
import statistics
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from timing import run_line

from tiered_cache import AsyncTieredCache, MemoryTier, PartialBatchError
from tiered_cache.async_tier import AsyncSourceBase
from tiered_cache.errors import SourceResting, SourceThrottled
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.throttle_rest import ThrottleRests

KEYS = [f"tweet:{n}" for n in range(10)]
#: Read before the throttle starts (cached, then stale); the others were never cached.
WARM = KEYS[:5]
READERS = 50
#: A reader's pause between its reads: 50 readers make about 5,000 reads a second.
THINK = 0.01
#: The fence's ``overtaken(mark, keys)``: the keys invalidated since ``mark``.
Overtaken = Callable[[int, Collection[str]], list[str]]
WRITERS = 2
WRITE_EVERY = 0.25
THROTTLED_LATENCY = 0.04
SERVED_LATENCY = 0.005
#: The throttle starts this long after the warm-up.
START = 0.5


@dataclass(frozen=True)
class Throttle:
    """When the table throttles: ``on(t)`` for seconds since the start; the run lasts
    ``length`` seconds; ``lifted`` is when it stops for good."""

    name: str
    on: Callable[[float], bool]
    lifted: float
    length: float


def flapping(t: float) -> bool:
    """On for 50 ms, off for 50 ms, for 6 s."""
    return START <= t < START + 6.0 and int((t - START) / 0.05) % 2 == 0


THROTTLES = [
    Throttle("flapping", flapping, 6.5, 8.0),
    Throttle("steady", lambda t: START <= t < START + 6.0, 6.5, 8.0),
    Throttle("burst", lambda t: START <= t < START + 0.3, 0.8, 2.5),
]


# -- the strategies: ThrottleRests's, and a half-open probe with the same three calls ---------


class HalfOpen:
    """``rest`` seconds; then the first load is the probe and the key's other loads keep
    resting until it answers (a throttle rests the key again, an answer forgets it)."""

    def __init__(self, rest: float, clock: Callable[[], float], overtaken: Overtaken) -> None:
        self._rest, self._clock, self._overtaken = rest, clock, overtaken
        self._rests: dict[str, tuple[float, int, SourceThrottled]] = {}
        self._probing: set[str] = set()

    def note(self, key: str, mark: int, error: BaseException) -> None:
        if isinstance(error, SourceThrottled) and not isinstance(error, SourceResting):
            self._probing.discard(key)
            self._rests[key] = (self._clock() + self._rest, mark, error)

    def answered(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._probing.discard(key)
            self._rests.pop(key, None)

    def resting(self, keys: Iterable[str]) -> dict[str, SourceResting]:
        now = self._clock()
        answers: dict[str, SourceResting] = {}
        for key in keys:
            found = self._rests.get(key)
            if found is None or self._overtaken(found[1], (key,)):
                continue
            until, _, error = found
            if now >= until and key not in self._probing:
                self._probing.add(key)  # this load is the probe
                continue
            answers[key] = SourceResting(f"not loading {key!r}: resting or probing")
            answers[key].__cause__ = error
        return answers


#: Each contender: the rests of a chain on ``clock`` whose fence says ``overtaken``; None:
#: the ones the chain builds from ``Protection()`` (the committed rule).
CONTENDERS: dict[str, Callable[[Callable[[], float], Overtaken], Any] | None] = {
    "none": lambda clock, overtaken: ThrottleRests(0.0, clock, overtaken),
    "fixed 1s": lambda clock, overtaken: ThrottleRests(1.0, clock, overtaken, first=1.0),
    "fixed 0.1s": lambda clock, overtaken: ThrottleRests(0.1, clock, overtaken, first=0.1),
    "half-open": lambda clock, overtaken: HalfOpen(0.1, clock, overtaken),
    "grow to .5s": lambda clock, overtaken: ThrottleRests(0.5, clock, overtaken),
    "grow to 2s": lambda clock, overtaken: ThrottleRests(2.0, clock, overtaken),
    "default": None,
}


# -- virtual time ------------------------------------------------------------------------------


class _Selector(selectors.SelectSelector):
    """Never waits: a wait for the next timer moves the fake clock to it instead."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._fake = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if not events and timeout is not None and timeout > 0:
            self._fake.advance(timeout)
        return events


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is ``clock``'s."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(_Selector(clock))
        self._fake = clock

    def time(self) -> float:
        return self._fake()


# -- one run -----------------------------------------------------------------------------------


@dataclass
class Counts:
    """What one run counted."""

    #: Source calls, and those made while the table throttled (first switch on to last off).
    requests: int = 0
    requests_throttling: int = 0
    #: Key reads answered with an error, and those while the table would have answered.
    errors: int = 0
    errors_open: int = 0


class ThrottledSource(AsyncSourceBase):
    """An async source whose requests the ``throttle`` fails, after a latency."""

    name = "throttled"

    def __init__(
        self, clock: FakeClock, throttle: Throttle, begin: float, rng: random.Random
    ) -> None:
        self.items = {key: {"id": key, "v": 0} for key in KEYS}
        self.counts = Counts()
        self._clock, self._throttle, self._begin, self._rng = clock, throttle, begin, rng

    async def _request(self, keys: Sequence[str]) -> None:
        at = self._clock() - self._begin
        self.counts.requests += 1
        blocked = self._throttle.on(at)
        if at < self._throttle.lifted and at >= START:
            self.counts.requests_throttling += 1
        latency = THROTTLED_LATENCY if blocked else SERVED_LATENCY
        await asyncio.sleep(latency * self._rng.uniform(0.8, 1.2))
        if blocked:
            raise SourceThrottled("ProvisionedThroughputExceededException (injected)")

    async def load(self, key: str) -> Any:
        await self._request([key])
        return self.items[key]

    async def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        await self._request(keys)
        return {key: self.items[key] for key in keys}

    async def store(self, key: str, value: Any) -> None:
        self.items[key] = value

    async def remove(self, key: str) -> None:
        self.items.pop(key, None)

    async def aclose(self) -> None:
        pass


def replay(name: str, throttle: Throttle, seed: int) -> Counts:
    """The throttle replayed against a chain resting as ``name`` says."""
    clock = FakeClock()
    rng = random.Random(seed)
    loop = VirtualLoop(clock)
    try:
        return loop.run_until_complete(_replay(name, throttle, clock, rng))
    finally:
        loop.close()


async def _replay(name: str, throttle: Throttle, clock: FakeClock, rng: random.Random) -> Counts:
    protection = Protection(max_stale=0.5, early_refresh_beta=0.0, lease="off")
    # The memory tier a user gets (its default policy): 10 keys never fill it.
    tier = MemoryTier(name="l1", max_entries=1000, ttl=0.5, clock=clock)
    begin = clock()
    source = ThrottledSource(clock, throttle, begin, rng)
    cache = AsyncTieredCache(
        [tier], source, ttl=0.5, clock=clock, protection=protection, rng=random.Random(0).random
    )
    make = CONTENDERS[name]
    if make is not None:
        batching = cache._loader._batching  # the contender's rule swapped in
        object.__setattr__(batching, "rests", make(clock, batching.fence.overtaken))
    for key in WARM:
        await cache.get(key)
    counts = source.counts
    end = begin + throttle.length

    def failed(error: BaseException) -> None:
        counts.errors += 1
        if not isinstance(error, SourceThrottled):  # SourceResting is one too
            raise error
        at = clock() - begin
        if at >= START and not throttle.on(at):  # the table would have answered
            counts.errors_open += 1

    async def reader(index: int) -> None:
        await asyncio.sleep(START + THINK * rng.random())  # the never-cached keys stay so
        turn = index
        while clock() < end:
            turn += 1
            if index % 2:
                keys = [KEYS[turn % len(KEYS)], KEYS[(turn + 5) % len(KEYS)]]
                try:
                    await cache.get_many(keys)
                except PartialBatchError as exc:
                    for error in exc.errors.values():
                        failed(error)
            else:
                try:
                    await cache.get(KEYS[turn % len(KEYS)])
                except SourceThrottled as exc:
                    failed(exc)
            await asyncio.sleep(THINK)

    async def writer(index: int) -> None:
        version = 0
        await asyncio.sleep(START)
        while clock() < end:
            await asyncio.sleep(WRITE_EVERY)
            version += 1
            for key in KEYS[3 * index : 3 * index + 3]:
                await cache.set(key, {"id": key, "v": version})

    tasks = [reader(i) for i in range(READERS)] + [writer(i) for i in range(WRITERS)]
    await asyncio.gather(*tasks)
    await cache.aclose()
    return counts


# -- the table ---------------------------------------------------------------------------------


def spread(values: Sequence[int]) -> str:
    return f"{min(values):,} / {statistics.median(values):,.0f}"


def ratio(values: Sequence[int], baseline: Sequence[int]) -> str:
    def over(mine: float, theirs: float) -> str:
        return f"{mine / theirs:.2f}" if theirs else "-"

    return (
        f"{over(min(values), min(baseline))} / "
        f"{over(statistics.median(values), statistics.median(baseline))}"
    )


def pick(runs: dict[str, dict[str, list[Counts]]]) -> str:
    """The rule of the module's docstring, on the throttles run."""
    steady = runs["steady"]
    ceiling = statistics.median(c.requests_throttling for c in steady["none"]) / 4
    protective = [
        name
        for name, got in steady.items()
        if statistics.median(c.requests_throttling for c in got) <= ceiling
    ]

    def errors_open(name: str) -> float:
        return sum(statistics.median(c.errors_open for c in by[name]) for by in runs.values())

    best = min(protective, key=errors_open)
    return (
        f"pick: {best} (asks the steady throttle at most {ceiling:g} times: "
        f"{', '.join(protective)}; errors while open, medians summed: "
        + ", ".join(f"{name} {errors_open(name):,.0f}" for name in protective)
        + ")"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--throttles", nargs="*", default=[t.name for t in THROTTLES])
    args = parser.parse_args()
    print(run_line())
    default = Protection()
    print(f"default: throttle_backoff {default.throttle_backoff:g}s")
    names = list(CONTENDERS)
    every: dict[str, dict[str, list[Counts]]] = {}
    for throttle in [t for t in THROTTLES if t.name in args.throttles]:
        runs: dict[str, list[Counts]] = {name: [] for name in names}
        every[throttle.name] = runs
        for seed in range(args.rounds):
            shift = seed % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(replay(name, throttle, seed))
        print()
        print(
            f"{throttle.name} (lifted {throttle.lifted - START:g}s after it began), "
            f"{args.rounds} rounds, min / median"
        )
        header = (
            f"{'strategy':<11} | {'requests':>13} | {'while throttling':>16} | "
            f"{'errors':>15} | {'errors while open':>17} | {'requests vs none':>16} | "
            f"{'errors vs none':>14}"
        )
        print(header)
        print("-" * len(header))
        base = runs["none"]
        for name in names:
            got = runs[name]
            requests = [c.requests for c in got]
            print(
                f"{name:<11} | {spread(requests):>13} | "
                f"{spread([c.requests_throttling for c in got]):>16} | "
                f"{spread([c.errors for c in got]):>15} | "
                f"{spread([c.errors_open for c in got]):>17} | "
                f"{ratio(requests, [c.requests for c in base]):>16} | "
                f"{ratio([c.errors for c in got], [c.errors for c in base]):>14}"
            )
    if "steady" in every:
        print()
        print(pick(every))


if __name__ == "__main__":
    main()
