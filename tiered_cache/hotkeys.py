"""Hot-key detection with bounded memory: a frequency sketch and a decaying top-k list.

:class:`FrequencySketch` estimates how often each key was seen recently; the admission policy
(:mod:`tiered_cache.admission`) asks it whether a candidate is worth more than its victim.
:class:`TopK` keeps the few heaviest keys with their estimated request rates for
``cache.hot_keys(n)``, ``stats()`` and ``hot_ttl``.

Papers and designs followed:

- G. Cormode, S. Muthukrishnan, "An improved data stream summary: the count-min sketch and its
  applications", Journal of Algorithms 55(1), 2005: ``depth`` rows of counters, one hashed
  counter per row and key; the estimate is the minimum over the rows, so it never undercounts
  (before aging) and overcounts by at most ``e * N / width`` with probability ``1 - e^-depth``.
- C. Estan, G. Varghese, "New directions in traffic measurement and accounting", SIGCOMM 2002:
  the *conservative update* (raise only the counters at the minimum), which keeps the same
  guarantee with a smaller overcount.
- G. Einziger, R. Friedman, B. Manes, "TinyLFU: A Highly Efficient Cache Admission Policy",
  ACM Transactions on Storage 13(4), 2017: small saturating counters, the *reset* that halves
  every counter after a sample of ``W = 10 x capacity`` additions so that the sketch forgets old
  popularity, and the *doorkeeper* (a Bloom filter in front of the sketch that absorbs one-hit
  wonders). The paper's counters stop at ``W / capacity`` (4 bits for ``W = 10 C``: a key that
  earns a slot is read about ``W / C`` times per sample, so counting further tells nothing).
  Here the sample is longer for small caches (``min_sample``), so the ceiling follows the same
  rule, ``W / C`` rounded up to ``2**k - 1``, between 15 and 255 (each counter has a byte).
- Caffeine's ``FrequencySketch`` (B. Manes): the table sized from the cache's maximum (a power of
  two, so that a mask replaces a modulo) and the sample size of ten times the maximum.
- A. Metwally, D. Agrawal, A. El Abbadi, "Efficient computation of frequent and top-k elements in
  data streams", ICDT 2005 (Space-Saving), filtered as in Homem & Carvalho, "HeavyKeeper" and
  "Filtered Space-Saving" (a key enters the list only once the sketch has seen it a few times),
  with the forward decay of G. Cormode, V. Shkapenyuk, D. Srivastava, B. Xu, "Forward decay: a
  practical time decay model for streaming systems", ICDE 2009, so that yesterday's viral key
  fades from the list, and the randomized admission of R. Ben Basat, G. Einziger, R. Friedman,
  Y. Kassner, "Randomized Admission Policy for Efficient Top-k and Frequency Estimation",
  INFOCOM 2017, so that the long tail does not churn a full list.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Iterable

__all__ = ["FrequencySketch", "TopK", "counter_ceiling"]

#: The lowest counter ceiling: 15, the largest 4-bit value (TinyLFU's sample of 10 x capacity).
MIN_CEILING = 15
#: The highest: a counter is one byte.
MAX_CEILING = 255

# ``bytearray.translate`` with these tables halves every counter, or marks the odd ones, in one
# pass of C code.
_HALVE = bytes(value >> 1 for value in range(256))
_ODD_AS_ONE = bytes(value & 1 for value in range(256))
#: ``hash()`` is a signed 64-bit number (on 64-bit builds); its unsigned bits index the rows.
_MASK64 = (1 << 64) - 1


def _power_of_two_at_least(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def counter_ceiling(sample_size: int, capacity: int) -> int:
    """Where counters saturate: the reads per sample a key needs to earn one of ``capacity`` slots.

    TinyLFU's sample of ``10 x capacity`` gives 4-bit counters. A longer sample (a small cache
    with ``min_sample``) makes every key that deserves a slot reach 15, after which the sketch
    cannot tell the hottest key from the twentieth: the ceiling grows with the sample instead,
    rounded up to ``2**k - 1`` and kept within one byte.
    """
    per_slot = sample_size // capacity
    return min(MAX_CEILING, max(MIN_CEILING, (1 << per_slot.bit_length()) - 1))


class FrequencySketch:
    """A count-min sketch of small saturating counters with periodic aging (TinyLFU).

    Memory is ``4 * width`` bytes (plus ``width`` for the doorkeeper) whatever the number of
    distinct keys. Keys are hashed with Python's ``hash()``: for ``str`` it is SipHash, computed
    once per string object and cached in it (so a key that is looked up again costs nothing to
    hash), well mixed, and salted per process, which is enough here because the sketch never
    leaves the process; the salt also keeps an outsider from choosing keys that collide. The
    four row indexes are slices of the one 64-bit hash, 16 bits apart (the last one wraps
    around to the low bits, so that every row spans a table wider than 2**16). (Double hashing,
    ``h1 + i * h2``, was tried first: two keys then share all four counters when they agree
    on ``h1`` and ``h2`` modulo the width, one pair in ``width**2``; a cold key sharing all
    its counters with a hot one reads as hot, sits at the head of probation and refuses
    every candidate, a viral key included, and with a hundred hot keys that happened in a
    few percent of processes. Slices share all four counters only when about 4 x
    log2(width) bits of the hashes agree, up to all 64.)

    Args:
        capacity: the number of entries of the cache the sketch serves.
        width: counters per row; a power of two, by default the smallest one at least
            ``4 * capacity`` and half the sample size (and at least 64).
        sample_factor: counters are halved after ``sample_factor * capacity`` additions.
        min_sample: but not after fewer additions than this: a very small cache still needs
            a few thousand reads of history to tell a warm key from a cold one.
        doorkeeper: put a one-bit-per-slot filter in front of the counters, so that a key's
            first sighting since the last aging costs no counter (TinyLFU section 3.4.2).
        max_count: where a counter saturates (at most 255); by default
            :func:`counter_ceiling` of the sample size and the capacity.
    """

    def __init__(
        self,
        capacity: int,
        *,
        width: int | None = None,
        sample_factor: int = 10,
        min_sample: int = 0,
        doorkeeper: bool = False,
        max_count: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if sample_factor < 1:
            raise ValueError("sample_factor must be at least 1")
        sample_size = max(sample_factor * capacity, min_sample)
        if width is None:
            # Count-min's overcount is about e * additions / width: keep the width in step with
            # the additions between two agings, so a longer memory does not mean more noise.
            width = max(64, _power_of_two_at_least(max(4 * capacity, sample_size // 2)))
        elif width < 1 or width & (width - 1):
            raise ValueError("width must be a power of two")
        if max_count is None:
            max_count = counter_ceiling(sample_size, capacity)
        elif not 1 <= max_count <= MAX_CEILING:
            raise ValueError(f"max_count must be between 1 and {MAX_CEILING}")
        self.width = width
        #: Where a counter saturates; estimates never exceed it.
        self.max_count = max_count
        self.depth = 4
        self._mask = width - 1
        self._table = bytearray(4 * width)
        self.sample_size = sample_size
        #: Additions since the last aging (the TinyLFU "size").
        self.size = 0
        #: How many times the counters were halved.
        self.resets = 0
        #: Bumped whenever the counters change other than by counting (aging, clearing):
        #: with ``size`` it tells a caller that an estimate it kept is still current.
        self.epoch = 0
        self._doorkeeper: bytearray | None = bytearray(width) if doorkeeper else None
        #: ``increment(key, count=1) -> int``: count sightings, return the new estimate.
        self.increment: Callable[[str, int], int] = (
            self._increment_with_doorkeeper if doorkeeper else self._increment
        )
        #: ``frequency(key) -> int``: the estimated number of sightings of ``key`` since
        #: aging, at most ``max_count`` (one more with the doorkeeper).
        self.frequency: Callable[[str], int] = (
            self._frequency_with_doorkeeper if doorkeeper else self._frequency
        )

    @property
    def nbytes(self) -> int:
        """Bytes of counter storage (constant for the life of the sketch)."""
        return len(self._table) + (len(self._doorkeeper) if self._doorkeeper is not None else 0)

    def _increment(self, key: str, count: int = 1) -> int:
        """Count ``count`` sightings of ``key``; return its estimated frequency afterwards."""
        h = hash(key) & _MASK64
        mask = self._mask
        width = self.width
        table = self._table
        ceiling = self.max_count
        a = h & mask
        b = width + ((h >> 16) & mask)
        c = 2 * width + ((h >> 32) & mask)
        d = 3 * width + (((h >> 48) | (h << 16)) & mask)
        va = table[a]
        vb = table[b]
        vc = table[c]
        vd = table[d]
        # Plain comparisons rather than min(): this runs on every read, and a builtin call
        # costs more than the three tests.
        low = va
        if vb < low:  # noqa: PLR1730
            low = vb
        if vc < low:  # noqa: PLR1730
            low = vc
        if vd < low:  # noqa: PLR1730
            low = vd
        if low >= ceiling:
            return ceiling
        high = low + count
        if high > ceiling:  # noqa: PLR1730
            high = ceiling
        # Conservative update: raise each counter only up to the new minimum; that is enough
        # for the estimate and keeps other keys sharing a counter from being overcounted
        # (Estan & Varghese).
        if va < high:
            table[a] = high
        if vb < high:
            table[b] = high
        if vc < high:
            table[c] = high
        if vd < high:
            table[d] = high
        self.size += count
        if self.size >= self.sample_size:
            self.reset()
        return high

    def _increment_with_doorkeeper(self, key: str, count: int = 1) -> int:
        doorkeeper = self._doorkeeper
        assert doorkeeper is not None
        h = hash(key)
        mask = self._mask
        x = h & mask
        y = ((h >> 32) | 1) & mask
        if not (doorkeeper[x] and doorkeeper[y]):
            doorkeeper[x] = doorkeeper[y] = 1
            self.size += 1
            if count == 1:
                if self.size >= self.sample_size:
                    self.reset()
                return 1 + self._estimate(h)
            count -= 1
        return 1 + self._increment(key, count)

    def _estimate(self, h: int) -> int:
        mask = self._mask
        width = self.width
        table = self._table
        h &= _MASK64
        return min(
            table[h & mask],
            table[width + ((h >> 16) & mask)],
            table[2 * width + ((h >> 32) & mask)],
            table[3 * width + (((h >> 48) | (h << 16)) & mask)],
        )

    def _frequency(self, key: str) -> int:
        # _estimate inlined: admission asks this twice per eviction.
        h = hash(key) & _MASK64
        mask = self._mask
        width = self.width
        table = self._table
        low = table[h & mask]
        value = table[width + ((h >> 16) & mask)]
        if value < low:  # noqa: PLR1730
            low = value
        value = table[2 * width + ((h >> 32) & mask)]
        if value < low:  # noqa: PLR1730
            low = value
        value = table[3 * width + (((h >> 48) | (h << 16)) & mask)]
        if value < low:  # noqa: PLR1730
            low = value
        return low

    def _frequency_with_doorkeeper(self, key: str) -> int:
        h = hash(key)
        estimate = self._estimate(h)
        doorkeeper = self._doorkeeper
        assert doorkeeper is not None
        mask = self._mask
        if doorkeeper[h & mask] and doorkeeper[((h >> 32) | 1) & mask]:
            estimate += 1
        return estimate

    def reset(self) -> None:
        """Age: halve every counter and forget the doorkeeper (TinyLFU's reset)."""
        odd = self._table.translate(_ODD_AS_ONE).count(1)
        self._table = self._table.translate(_HALVE)
        # Halving drops the odd counters' half units; Caffeine subtracts them the same way.
        self.size = max(0, (self.size - odd // 4) // 2)
        if self._doorkeeper is not None:
            self._doorkeeper = bytearray(self.width)
        self.resets += 1
        self.epoch += 1

    def clear(self) -> None:
        """Forget everything."""
        self._table = bytearray(len(self._table))
        if self._doorkeeper is not None:
            self._doorkeeper = bytearray(self.width)
        self.size = 0
        self.epoch += 1


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
        self.add_many(((key, count),))

    def add_many(self, sightings: Iterable[tuple[str, int]]) -> None:
        """Count sightings of several keys made at the same moment (``(key, count)`` pairs)."""
        now = self._clock()
        unit = self._weight(now)
        counts = self._counts
        added = 0
        for key, count in sightings:
            weight = unit * count
            current = counts.get(key)
            if current is not None:
                counts[key] = current + weight
            else:
                self._insert(key, weight, now)
            added += 1
        self._adds_since_threshold += added
        if self._adds_since_threshold >= self.capacity:
            self._hot = None  # recomputed on the next is_hot

    def _insert(self, key: str, weight: float, now: float) -> None:
        counts = self._counts
        heap = self._heap
        if len(counts) < self.capacity:
            counts[key] = weight
            self._errors[key] = 0.0
            self._since[key] = now
            heapq.heappush(heap, (weight, key))
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
            heapq.heapreplace(heap, (current, victim))
        del counts[victim], self._errors[victim], self._since[victim]
        counts[key] = low + weight
        self._errors[key] = low
        self._since[key] = now
        heapq.heapreplace(heap, (low + weight, key))

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
