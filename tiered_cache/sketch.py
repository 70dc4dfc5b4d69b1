"""A frequency sketch with bounded memory and aging: how often was each key read lately?

:class:`FrequencySketch` estimates how often each key was seen recently; the eviction policy
(:mod:`tiered_cache.policy`) asks it whether a candidate is worth more than its victim, and
filters the keys the hot-key list (:mod:`tiered_cache.topk`) considers.

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
  rule, ``W / C`` rounded up to ``2**k - 1``, between 15 and 255; each counter takes the
  ``k`` bits its ceiling needs (5 by default: the table is 5/8 of a byte per counter).
- Caffeine's ``FrequencySketch`` (B. Manes): the table sized from the cache's maximum (a power of
  two, so that a mask replaces a modulo) and the sample size of ten times the maximum.

The counters' updates and estimates (:class:`Counters`) have a C twin, ``_sketch.c``, which the
compiled core uses (:data:`COUNTERS`); aging stays here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from .compiled import compiled_core

__all__ = [
    "COUNTERS",
    "MAX_CEILING",
    "MAX_WIDTH",
    "MIN_CEILING",
    "CounterTable",
    "Counters",
    "FrequencySketch",
    "counter_ceiling",
    "sketch_width",
]

#: The lowest counter ceiling: 15, the largest 4-bit value (TinyLFU's sample of 10 x capacity).
MIN_CEILING = 15
#: The highest: a counter is one byte.
MAX_CEILING = 255

#: ``hash()`` is a signed 64-bit number (on 64-bit builds); its unsigned bits index the rows,
#: taken as two 32-bit halves: a 64-bit number is a boxed integer to mypyc (the compiled core),
#: and every operation on it made a new object, where a half is a machine word.
_LOW32: Final = (1 << 32) - 1
#: The widest row the halves can index (a wider sketch would take over 10 GiB).
MAX_WIDTH: Final = 1 << 32
#: Aging works on the table this many counters at a time, as one Python integer each: a
#: shift and a mask halve them all, a mask and ``bit_count`` count the odd ones (C code).
_AGING_CHUNK = 1 << 16


def _repeated(pattern: int, bits: int, count: int) -> int:
    """``pattern`` (a ``bits``-wide field) in each of ``count`` fields (a multiple of 8), as one
    integer."""
    eight = sum(pattern << (index * bits) for index in range(8))  # eight fields: ``bits`` bytes
    return int.from_bytes(eight.to_bytes(bits, "little") * (count // 8), "little")


def _store(table: bytearray, index: int, shift: int, old: int, new: int) -> None:
    """Write ``new`` over the counter holding ``old`` at bit ``shift`` of bytes ``index`` and
    ``index + 1`` (``new`` > ``old``: adding the difference changes that counter alone)."""
    pair = (table[index] | table[index + 1] << 8) + ((new - old) << shift)
    table[index] = pair & 0xFF
    table[index + 1] = pair >> 8


def _power_of_two_at_least(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def sketch_width(
    capacity: int, *, width: int | None = None, sample_factor: int = 10, min_sample: int = 0
) -> int:
    """Counters per row of a sketch for ``capacity`` entries (see :class:`FrequencySketch`'s
    arguments); ValueError when it would be wider than :data:`MAX_WIDTH`. The settings ask it
    too, so that a bound too large is refused naming its field, not at the build."""
    if width is None:
        # Count-min's overcount is about e * additions / width: keep the width in step with
        # the additions between two agings, so a longer memory does not mean more noise.
        sample_size = max(sample_factor * capacity, min_sample)
        width = max(64, _power_of_two_at_least(max(4 * capacity, sample_size // 2)))
    elif width < 1 or width & (width - 1):
        raise ValueError("width must be a power of two")
    if width > MAX_WIDTH:
        raise ValueError(f"width must be at most {MAX_WIDTH}, not {width}")
    return width


def counter_ceiling(sample_size: int, capacity: int) -> int:
    """Where counters saturate: the reads per sample a key needs to earn one of ``capacity`` slots.

    TinyLFU's sample of ``10 x capacity`` gives 4-bit counters. A longer sample (a small cache
    with ``min_sample``) makes every key that deserves a slot reach 15, after which the sketch
    cannot tell the hottest key from the twentieth: the ceiling grows with the sample instead,
    rounded up to ``2**k - 1`` and kept within one byte.
    """
    per_slot = sample_size // capacity
    return min(MAX_CEILING, max(MIN_CEILING, (1 << per_slot.bit_length()) - 1))


class CounterTable(Protocol):
    """The operations on the counters of every read and admission contest: :class:`Counters`
    (the reference) or its C twin, ``tiered_cache/_sketch.c``."""

    def add(self, key: str, count: int) -> int:
        """Raise ``key``'s counters by ``count`` (0 or more), conservatively; the new estimate,
        or -1 when they were all saturated already and nothing was added."""
        ...

    def frequency(self, key: str) -> int:
        """``key``'s estimate: the least of its four counters."""
        ...


class Counters:
    """The counters of a :class:`FrequencySketch`: four rows of ``width`` counters of ``bits``
    bits each, packed end to end in ``table`` (shared with the sketch, which ages it in place).

    The reference for ``tiered_cache/_sketch.c``, which the compiled core uses instead: the
    compiled core (mypyc) has no fast path for ``bytearray`` items, each byte read or written
    was a generic call and an int object (about 9,000 instructions an update). Written to be
    read beside the C (a row at a time), not for speed: without a compiler a miss runs a few
    more Python calls. ``tests/test_sketch.py`` runs the same operations on both and demands
    identical answers and tables.
    """

    def __init__(self, table: bytearray, width: int, bits: int, ceiling: int) -> None:
        if width < 1 or width > MAX_WIDTH or width & (width - 1):
            raise ValueError("width must be a power of two, at most 2**32")
        if not 1 <= bits <= 8:  # a counter lies within two bytes
            raise ValueError("bits must be between 1 and 8")
        if not 1 <= ceiling <= (1 << bits) - 1:
            raise ValueError("ceiling must be between 1 and the largest counter")
        if len(table) < (4 * width * bits + 7) // 8 + 1:
            raise ValueError("the table is too small for 4 rows of width counters")
        self._table = table
        self._width = width
        self._mask = width - 1
        self._bits = bits
        self._field = (1 << bits) - 1
        self._ceiling = ceiling

    def _rows(self, key: str) -> list[tuple[int, int, int]]:
        """``key``'s counter in each row, as (byte, shift within the two bytes read, value).

        The rows' indexes are bits 0, 16, 32 and 48 (wrapping around) of the unsigned hash,
        made from its halves (the mask is narrower than 32 bits: MAX_WIDTH).
        """
        h = hash(key)
        low32 = h & _LOW32
        high32 = (h >> 32) & _LOW32
        mask, width, bits, field, table = (
            self._mask,
            self._width,
            self._bits,
            self._field,
            self._table,
        )
        rows = []
        for row, sliced in enumerate(
            (low32, (low32 >> 16) | (high32 << 16), high32, (high32 >> 16) | (low32 << 16))
        ):
            at = (row * width + (sliced & mask)) * bits  # the counter's bit offset
            index, shift = at >> 3, at & 7
            rows.append((index, shift, ((table[index] | table[index + 1] << 8) >> shift) & field))
        return rows

    def add(self, key: str, count: int) -> int:
        """See :meth:`CounterTable.add`."""
        if count < 0:
            raise ValueError("count must not be negative")
        rows = self._rows(key)
        low = min(value for _, _, value in rows)
        if low >= self._ceiling:
            return -1
        high = min(low + count, self._ceiling)
        # Conservative update: raise each counter only up to the new minimum; that is enough
        # for the estimate and keeps other keys sharing a counter from being overcounted
        # (Estan & Varghese).
        for index, shift, value in rows:
            if value < high:
                _store(self._table, index, shift, value, high)
        return high

    def frequency(self, key: str) -> int:
        """See :meth:`CounterTable.frequency`."""
        return min(value for _, _, value in self._rows(key))


def _counter_table() -> Callable[[bytearray, int, int, int], CounterTable]:
    """The C counters with the compiled core (built with it), the reference otherwise."""
    if compiled_core():
        from ._sketch import Counters as CCounters

        return CCounters
    return Counters


#: The counters a sketch uses unless told otherwise (chosen once, like the core itself).
COUNTERS: Final = _counter_table()


class FrequencySketch:
    """A count-min sketch of small saturating counters with periodic aging (TinyLFU).

    Memory is ``4 * width`` counters of ``max_count.bit_length()`` bits each, packed end to end
    in one ``bytearray`` (plus ``width`` bytes for the doorkeeper), whatever the number of
    distinct keys: counter ``i`` is bits ``i * bits`` to ``i * bits + bits - 1`` of the table
    read as one little-endian number, so it lies within two adjacent bytes.

    Keys are hashed with Python's ``hash()``: for ``str`` it is SipHash, computed once per
    string object and cached in it (so a key that is looked up again costs nothing to
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
        counters: makes the counter table, ``(table, width, bits, max_count)``; by default
            :data:`COUNTERS` (the C one with the compiled core, :class:`Counters` without).
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
        counters: Callable[[bytearray, int, int, int], CounterTable] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if sample_factor < 1:
            raise ValueError("sample_factor must be at least 1")
        sample_size = max(sample_factor * capacity, min_sample)
        width = sketch_width(
            capacity, width=width, sample_factor=sample_factor, min_sample=min_sample
        )
        if max_count is None:
            max_count = counter_ceiling(sample_size, capacity)
        elif not 1 <= max_count <= MAX_CEILING:
            raise ValueError(f"max_count must be between 1 and {MAX_CEILING}")
        self.width = width
        #: Where a counter saturates; estimates never exceed it.
        self.max_count = max_count
        self.depth = 4
        self._mask = width - 1
        bits = max_count.bit_length()
        self._bits = bits
        self._field = (1 << bits) - 1
        # One spare byte: the last counter is read two bytes at a time like the others.
        self._table = bytearray((4 * width * bits + 7) // 8 + 1)
        # Aging masks for a chunk of counters (a multiple of 8 counters is whole bytes, so no
        # counter crosses a chunk's edge; the table of a sketch narrower than 2 is one chunk):
        # each counter's low bit (the odd ones), and what is left of each counter after a
        # shift right (its own bits but the top one).
        chunk = max(8, min(_AGING_CHUNK, 4 * width))
        self._chunk_bytes = chunk * bits // 8
        self._low_bits = _repeated(1, bits, chunk)
        self._halved_bits = _repeated(self._field >> 1, bits, chunk)
        self.sample_size = sample_size
        #: Additions since the last aging (the TinyLFU "size").
        self.size = 0
        #: How many times the counters were halved.
        self.resets = 0
        #: Bumped whenever the counters change other than by counting (aging, clearing):
        #: with ``size`` it tells a caller that an estimate it kept is still current.
        self.epoch = 0
        self._doorkeeper: bytearray | None = bytearray(width) if doorkeeper else None
        made = counters if counters is not None else COUNTERS
        self._counters: CounterTable = made(self._table, width, bits, max_count)
        self._add = self._counters.add
        #: ``increment(key, count=1) -> int``: count sightings, return the new estimate.
        self.increment: Callable[[str, int], int] = (
            self._increment_with_doorkeeper if doorkeeper else self._increment
        )
        #: ``frequency(key) -> int``: the estimated number of sightings of ``key`` since
        #: aging, at most ``max_count`` (one more with the doorkeeper).
        self.frequency: Callable[[str], int] = (
            self._frequency_with_doorkeeper if doorkeeper else self._counters.frequency
        )
        #: How many of the agings a caller asked for before the sample was full
        #: (:meth:`age_early`): ``epoch`` less these counts the sketch's own agings and clears.
        #: Set last: the compiled core lays out attributes in the order they are set, and the
        #: ones every read uses keep their places.
        self.early_resets = 0

    @property
    def nbytes(self) -> int:
        """Bytes of counter storage (constant for the life of the sketch)."""
        return len(self._table) + (len(self._doorkeeper) if self._doorkeeper is not None else 0)

    def _increment(self, key: str, count: int = 1) -> int:
        """Count ``count`` sightings of ``key``; return its estimated frequency afterwards."""
        high = self._add(key, count)
        if high < 0:  # saturated: nothing was added, the sample does not grow
            return self.max_count
        self.size += count
        if self.size >= self.sample_size:
            self.reset()
        return high

    def _increment_with_doorkeeper(self, key: str, count: int = 1) -> int:
        # No sighting leaves the doorkeeper alone (the count past it would be -1).
        if count < 1:
            if count < 0:
                raise ValueError("count must not be negative")
            return self._frequency_with_doorkeeper(key)
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
                return 1 + self._counters.frequency(key)
            count -= 1
        return 1 + self._increment(key, count)

    def counter(self, index: int) -> int:
        """Counter ``index`` of the table (row ``index // width``), for tests and diagnostics."""
        at = index * self._bits
        table = self._table
        return ((table[at >> 3] | table[(at >> 3) + 1] << 8) >> (at & 7)) & self._field

    def _frequency_with_doorkeeper(self, key: str) -> int:
        h = hash(key)
        estimate = self._counters.frequency(key)
        doorkeeper = self._doorkeeper
        assert doorkeeper is not None
        mask = self._mask
        if doorkeeper[h & mask] and doorkeeper[((h >> 32) | 1) & mask]:
            estimate += 1
        return estimate

    def reset(self) -> None:
        """Age: halve every counter and forget the doorkeeper (TinyLFU's reset)."""
        table = self._table
        low_bits, halved_bits = self._low_bits, self._halved_bits
        odd = 0
        end = len(table) - 1  # the spare byte stays 0
        step = self._chunk_bytes
        for start in range(0, end, step):
            stop = min(start + step, end)
            counters = int.from_bytes(table[start:stop], "little")
            odd += (counters & low_bits).bit_count()
            # Each counter's bits move down one; the bit it takes from its upper neighbour is
            # masked off (a chunk holds whole counters, so none crosses its edge).
            table[start:stop] = ((counters >> 1) & halved_bits).to_bytes(stop - start, "little")
        # Halving drops the odd counters' half units; Caffeine subtracts them the same way.
        self.size = max(0, (self.size - odd // 4) // 2)
        if self._doorkeeper is not None:
            self._doorkeeper = bytearray(self.width)
        self.resets += 1
        self.epoch += 1

    def clear(self) -> None:
        """Forget everything."""
        # In place: the counters (maybe C) keep this table.
        self._table[:] = bytes(len(self._table))
        if self._doorkeeper is not None:
            self._doorkeeper = bytearray(self.width)
        self.size = 0
        self.epoch += 1

    def age_early(self) -> None:
        """Age now, before the sample is full, as a caller asks (a popularity shift): the
        same halving as :meth:`reset`, counted in ``early_resets`` too, so that the caller can
        tell these agings from the sketch's own."""
        self.reset()
        self.early_resets += 1
