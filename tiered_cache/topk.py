"""The heaviest keys of a stream with their recent request rates, in bounded memory.

:class:`TopK` keeps the few most read keys with their estimated request rates for
``cache.hot_keys(n)``, ``stats()`` and ``hot_ttl``; the eviction policy
(:mod:`tiered_cache.policy`) feeds it the keys its frequency sketch has seen a few times.

Papers followed: A. Metwally, D. Agrawal, A. El Abbadi, "Efficient computation of frequent and
top-k elements in data streams", ICDT 2005 (Space-Saving), filtered as in Homem & Carvalho,
"HeavyKeeper" and "Filtered Space-Saving" (a key enters the list only once the sketch has seen
it a few times), with the forward decay of G. Cormode, V. Shkapenyuk, D. Srivastava, B. Xu,
"Forward decay: a practical time decay model for streaming systems", ICDE 2009, so that
yesterday's viral key fades from the list, and the randomized admission of R. Ben Basat,
G. Einziger, R. Friedman, Y. Kassner, "Randomized Admission Policy for Efficient Top-k and
Frequency Estimation", INFOCOM 2017, so that the long tail does not churn a full list.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Final

__all__ = ["TopK"]

#: heapq's functions as statics of this module (compiled: no lookup of a module attribute per
#: call; a newcomer's admission calls the second a few times).
_heappush: Final = heapq.heappush
_heapreplace: Final = heapq.heapreplace


class TopK:
    """The heaviest keys of a stream with their recent request rates (Space-Saving + decay).

    At most ``capacity`` keys are tracked, each with an overestimated count and the error it
    inherited when it took the place of the lightest key (Space-Saving): ``count - error`` is a
    lower bound of the key's true (decayed) count. Counts decay exponentially with
    ``half_life`` (forward decay: a sighting at time ``t`` weighs ``2 ** (t / half_life)``, and
    weights are rescaled now and then so that the numbers stay small), so a key that stops
    being read sinks and leaves the list.

    Args:
        k: how many keys count as hot (:meth:`is_hot`); :meth:`top` answers up to ``capacity``.
        capacity: keys tracked; larger is more precise. Default ``4 * k``.
        half_life: seconds after which a sighting counts half.
        min_span: rates are averaged over at least this many seconds.
        clock: seconds; injected so that tests and trace replays control time.
        rng: randomness for admitting newcomers into a full list; seeded for reproducibility.
    """

    def __init__(
        self,
        k: int = 100,
        *,
        capacity: int | None = None,
        half_life: float = 60.0,
        min_span: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        if half_life <= 0:
            raise ValueError("half_life must be positive")
        self.k = k
        self.capacity = max(k, capacity if capacity is not None else 4 * k)
        self.half_life = half_life
        self.min_span = min_span
        self._clock = clock
        self._random = (rng or random.Random(0)).random
        self._landmark = clock()
        self._counts: dict[str, float] = {}
        self._errors: dict[str, float] = {}
        self._since: dict[str, float] = {}
        # (count, key) for every tracked key; an entry may be stale (lower than the key's
        # count) and is corrected when it reaches the top: counts only grow between rescales.
        self._heap: list[tuple[float, str]] = []
        self._hot: set[str] | None = None  # the k hottest keys, recomputed lazily
        self._adds_since_threshold = 0

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, key: object) -> bool:
        return key in self._counts

    def _weight(self, now: float) -> float:
        exponent = (now - self._landmark) / self.half_life
        if exponent > 32.0:
            self._rescale(now)
            exponent = 0.0
        return float(2.0**exponent)

    def add(self, key: str, count: int = 1) -> None:
        """Count ``count`` sightings of ``key``."""
        # add_many's steps for one key, without its tuple of pairs and their iteration (the
        # policy calls this on a miss of a key the sketch has seen a few times).
        now = self._clock()
        self._count(key, self._weight(now) * count, now)
        self._adds_since_threshold += 1
        if self._adds_since_threshold >= self.capacity:
            self._hot = None  # recomputed on the next is_hot

    def add_many(self, sightings: Iterable[tuple[str, int]]) -> None:
        """Count sightings of several keys made at the same moment (``(key, count)`` pairs)."""
        now = self._clock()
        unit = self._weight(now)
        added = 0
        for key, count in sightings:
            self._count(key, unit * count, now)
            added += 1
        self._adds_since_threshold += added
        if self._adds_since_threshold >= self.capacity:
            self._hot = None  # recomputed on the next is_hot

    def _count(self, key: str, weight: float, now: float) -> None:
        counts = self._counts
        current = counts.get(key)
        if current is not None:
            counts[key] = current + weight
        else:
            self._insert(key, weight, now)

    def _insert(self, key: str, weight: float, now: float) -> None:
        counts = self._counts
        heap = self._heap
        if len(counts) < self.capacity:
            counts[key] = weight
            self._errors[key] = 0.0
            self._since[key] = now
            _heappush(heap, (weight, key))
            return
        # RAP (Ben Basat, Einziger, Friedman, Kassner, "Randomized Admission Policy for
        # Efficient Top-k and Frequency Estimation", INFOCOM 2017): a newcomer takes the
        # lightest key's place only with probability weight / (lightest + weight). The tail
        # of a long stream then stops churning the list (each churn costs heap work), and a
        # key read often gets in after about lightest / weight sightings. heap[0] may be
        # stale-low, which only admits a little more often.
        if self._random() * (heap[0][0] + weight) >= weight:
            return
        while True:
            low, victim = heap[0]
            current = counts[victim]
            if current == low:
                break
            _heapreplace(heap, (current, victim))
        del counts[victim], self._errors[victim], self._since[victim]
        counts[key] = low + weight
        self._errors[key] = low
        self._since[key] = now
        _heapreplace(heap, (low + weight, key))

    def _rescale(self, now: float) -> None:
        factor = 2.0 ** ((now - self._landmark) / self.half_life)
        self._landmark = now
        for key in self._counts:
            self._counts[key] /= factor
            self._errors[key] /= factor
        self._heap = [(count, key) for key, count in self._counts.items()]
        heapq.heapify(self._heap)
        self._hot = None

    def _rate(self, key: str, now: float, scale: float) -> float:
        guaranteed = (self._counts[key] - self._errors[key]) * scale
        # Over a long watch a steady rate r yields a decayed count of r * half_life / ln 2; a
        # key watched only for `span` seconds has had less time to build up, so divide by the
        # integral of the decay over that span (at least min_span seconds, so that a key seen
        # a few times just now is not reported, or ranked, as a burst of high rate).
        span = max(now - self._since[key], self.min_span)
        window = self.half_life / math.log(2.0) * (1.0 - 2.0 ** (-span / self.half_life))
        return float(guaranteed / window)

    def _ranked(self, n: int) -> list[tuple[str, float]]:
        now = self._clock()
        scale = 2.0 ** (-(now - self._landmark) / self.half_life)
        rates = [(key, self._rate(key, now, scale)) for key in self._counts]
        return heapq.nlargest(n, rates, key=lambda item: (item[1], item[0]))

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` tracked keys read most per second lately, hottest first, with the rates.

        Ranked by rate rather than by decayed count, so that a key that went viral a second
        ago ranks above one that has been warm all day.
        """
        if n <= 0 or not self._counts:
            return []
        return self._ranked(n)

    def is_hot(self, key: str) -> bool:
        """True if ``key`` is among the ``k`` hottest keys (the set is refreshed lazily)."""
        if key not in self._counts:
            return False
        if self._hot is None:
            self._hot = {hot for hot, _ in self._ranked(self.k)}
            self._adds_since_threshold = 0
        return key in self._hot

    def clear(self) -> None:
        """Forget every key."""
        self._counts.clear()
        self._errors.clear()
        self._since.clear()
        self._heap.clear()
        self._hot = None
