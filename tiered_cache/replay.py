"""Replay a trace of reads through the real memory tier, and the LRU and Belady baselines.

The replayer builds the memory tier exactly as a chain does (settings -> plugin -> tier with its
eviction policy) and drives it with a :class:`~tiered_cache.clocks.ManualClock`: a read is
``tier.get(key)``; a miss is followed by ``tier.set(key, entry)``, as the chain's read-through
fill does. Trace timestamps move the clock when the format has them (``twitter``); otherwise it
advances by ``tick`` seconds per read.

Trace formats:

- ``keys``: one key per line.
- ``arc``: the ARC paper's traces (Megiddo & Modha, FAST 2003): ``start_block block_count
  ignored request_number`` per line; each of the ``block_count`` blocks is one read.
- ``twitter``: Twitter's cache traces (Yang et al., OSDI 2020): CSV ``timestamp,key,key_size,
  value_size,client_id,operation,ttl``; only ``get`` and ``gets`` are reads.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from .clocks import ManualClock
from .memory_plugin import build_memory_tier
from .registry import BuildContext
from .settings import MemoryTierSettings, validate_at
from .tier import Entry

__all__ = [
    "FORMATS",
    "LIBCACHESIM_MIN_SIZE",
    "LIBCACHESIM_POLICIES",
    "ReplayResult",
    "TraceFormat",
    "belady_hits",
    "count_reads",
    "libcachesim_hits",
    "lru_hits",
    "read_trace",
    "replay",
]

logger = logging.getLogger(__name__)

TraceFormat = Literal["keys", "arc", "twitter"]
FORMATS: tuple[str, ...] = get_args(TraceFormat)

N = TypeVar("N", int, float)

#: A read: its timestamp in seconds (``None`` when the trace has none) and its key.
Request = tuple[float | None, str]

_TWITTER_READS = frozenset({"get", "gets"})

#: The peers ``libcachesim`` (an optional benchmark dependency) is asked for, by its names.
LIBCACHESIM_POLICIES = ("ARC", "S3FIFO", "WTinyLFU")
#: The smallest cache each libcachesim policy is run with: 0.3.5 aborts the process below a few
#: entries (S3-FIFO, W-TinyLFU) and reports no hit at all below these sizes (its queues round
#: down to nothing).
LIBCACHESIM_MIN_SIZE = {"LRU": 1, "ARC": 1, "S3FIFO": 20, "WTinyLFU": 100}


def read_trace(path: str | Path, fmt: TraceFormat) -> Iterator[Request]:
    """The reads of the trace at ``path`` in format ``fmt``; blank lines are skipped."""
    readers = {"keys": _read_keys, "arc": _read_arc, "twitter": _read_twitter}
    try:
        reader = readers[fmt]
    except KeyError:
        raise ValueError(f"unknown trace format {fmt!r}; expected one of {FORMATS}") from None
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        yield from reader(lines)


def _read_keys(lines: Iterable[str]) -> Iterator[Request]:
    for line in lines:
        key = line.strip()
        if key:
            yield None, key


def _read_arc(lines: Iterable[str]) -> Iterator[Request]:
    for start, count in _arc_runs(lines):
        for block in range(start, start + count):
            yield None, str(block)


def _arc_runs(lines: Iterable[str]) -> Iterator[tuple[int, int]]:
    """Each line's ``(start_block, block_count)``: one line may stand for millions of reads."""
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"line {number}: expected 'start_block block_count ...'")
        yield _number(int, fields[0], number), _number(int, fields[1], number)


def count_reads(path: str | Path, fmt: TraceFormat) -> int:
    """How many reads :func:`read_trace` yields for the trace, without holding them (an ARC
    line's block count is added, not expanded), for a progress bar's total."""
    if fmt != "arc":
        return sum(1 for _ in read_trace(path, fmt))
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        return sum(max(count, 0) for _, count in _arc_runs(lines))


def _read_twitter(lines: Iterable[str]) -> Iterator[Request]:
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split(",")
        if len(fields) < 6:
            raise ValueError(
                f"line {number}: expected 'timestamp,key,key_size,value_size,client_id,"
                "operation,ttl'"
            )
        if fields[5].strip().lower() in _TWITTER_READS:
            yield _timestamp(fields[0], number), fields[1]


def _timestamp(text: str, line: int) -> float:
    """A read's time in seconds; float() also reads "inf" and "nan", which would stop (or
    blank out) the replay's clock and give a hit ratio of nothing, so they are refused."""
    seconds = _number(float, text, line)
    if not math.isfinite(seconds):
        raise ValueError(f"line {line}: timestamp {text.strip()!r} is not a finite number")
    return seconds


def _number(kind: Callable[[str], N], text: str, line: int) -> N:
    """``kind(text)``, or ValueError naming the trace's ``line`` (int()'s own names none)."""
    try:
        return kind(text)
    except ValueError as exc:
        raise ValueError(f"line {line}: {exc}") from None


@dataclass(frozen=True)
class ReplayResult:
    """What a replay counted."""

    requests: int
    hits: int

    @property
    def hit_ratio(self) -> float:
        """Hits per request (0 for an empty trace)."""
        return self.hits / self.requests if self.requests else 0.0


def replay(
    requests: Iterable[Request],
    l1_size: int,
    *,
    admission: Literal["always", "hot-keys"] = "hot-keys",
    tick: float = 0.001,
    settings: dict[str, Any] | None = None,
) -> ReplayResult:
    """Drive a memory tier built from settings (``max_entries=l1_size``) with ``requests``.

    Args:
        requests: ``(timestamp or None, key)`` pairs, in order.
        l1_size: the tier's ``max_entries``.
        admission: the tier's ``admission`` setting.
        tick: seconds the clock advances per read that has no timestamp.
        settings: further fields of :class:`MemoryTierSettings` (``window_fraction``, ...).

    Raises :class:`~tiered_cache.ConfigError` naming each field the settings refuse.
    """
    clock = ManualClock(0.0)
    fields: dict[str, Any] = {"ttl": None, **(settings or {})}
    fields.update(max_entries=l1_size, admission=admission)
    tier_settings = validate_at(MemoryTierSettings, fields, "replay")
    tier = build_memory_tier(tier_settings, BuildContext(namespace="replay", clock=clock, index=0))
    get, put = tier.get, tier.set
    hits = count = 0
    for timestamp, key in requests:
        count += 1
        now = clock()
        if timestamp is None:
            clock.advance(tick)
        elif timestamp > now:
            clock.set(timestamp)
        if get(key):
            hits += 1
        else:
            put(key, Entry(value=True, loaded_at=clock()))
    logger.debug("replayed %d reads, %d hits", count, hits)
    return ReplayResult(requests=count, hits=hits)


def lru_hits(keys: Iterable[str], size: int) -> int:
    """Hits of a plain LRU cache of ``size`` entries that admits every key."""
    cache: OrderedDict[str, None] = OrderedDict()
    touch = cache.move_to_end
    hits = 0
    for key in keys:
        if key in cache:
            touch(key)
            hits += 1
        else:
            cache[key] = None
            if len(cache) > size:
                cache.popitem(last=False)
    return hits


def libcachesim_hits(policy: str, keys: Iterable[str], size: int) -> int | None:
    """Hits of ``libcachesim``'s ``policy`` with ``size`` unit-size objects; ``None`` when
    ``libcachesim`` is not installed (it is a benchmark dependency, never the library's) or
    ``size`` is below :data:`LIBCACHESIM_MIN_SIZE`."""
    if size < LIBCACHESIM_MIN_SIZE.get(policy, 1):
        return None
    try:
        import libcachesim
    except ImportError:
        return None
    cache = getattr(libcachesim, policy)(cache_size=size)
    request = libcachesim.Request()
    request.obj_size = 1
    numbering: dict[str, int] = {}
    number = numbering.setdefault
    get = cache.get
    hits = 0
    for key in keys:
        request.obj_id = number(key, len(numbering))
        hits += bool(get(request))
    return hits


def belady_hits(keys: Sequence[str], size: int) -> int:
    """Hits of Belady's MIN: on a miss keep the ``size`` keys read again soonest.

    The new key may itself be the one dropped (MIN with bypass), which is the upper bound for
    any policy that, like the hot-key policy, may refuse to admit a key.
    """
    infinity = len(keys)
    next_use = [infinity] * len(keys)
    last_seen: dict[str, int] = {}
    for index in range(len(keys) - 1, -1, -1):
        key = keys[index]
        next_use[index] = last_seen.get(key, infinity)
        last_seen[key] = index
    held: dict[str, int] = {}  # key -> its next use
    heap: list[tuple[int, str]] = []  # (-next use, key); stale entries skipped lazily
    hits = 0
    for index, key in enumerate(keys):
        upcoming = next_use[index]
        if key in held:
            hits += 1
            held[key] = upcoming
            heapq.heappush(heap, (-upcoming, key))
            continue
        if upcoming == infinity:
            continue  # never read again: not worth a slot
        if len(held) >= size:
            while True:
                negative, victim = heap[0]
                if held.get(victim) == -negative:
                    break
                heapq.heappop(heap)
            if -negative <= upcoming:
                continue  # every held key is read again before this one: bypass
            heapq.heappop(heap)
            del held[victim]
        held[key] = upcoming
        heapq.heappush(heap, (-upcoming, key))
    return hits
