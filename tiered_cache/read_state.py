"""What a read took the bus to be: decided once, at its memory lookup, and carried through
the whole read (its tiers, its load or the load it joined, its counts).

While the bus is down (or starting) in-process tiers are bounded or bypassed, and every read
counts memory's hit or miss, or a read gone past memory (``bus_down_bypasses``). A read that
asked "is the bus down" twice -- at the L1 lookup, and again later -- was counted twice when
the bus went down between the two (memory's miss and a bypass) and not at all when it came
back (memory skipped, then read as connected): found by an adversarial pass through a proxy
cutting the bus. One :class:`ReadState`, taken once, answers every later question of the read.
"""

from __future__ import annotations

from typing import NamedTuple


class BoundedCounts(NamedTuple):
    """The counters of reads while memory is bounded: ``served`` by a bounded in-process
    tier, or ``bypassed`` (gone past it)."""

    served: str
    bypassed: str


#: What those reads count while the bus is down, and while it is starting (its first
#: subscription not yet confirmed: no outage).
BUS_DOWN_COUNTS = BoundedCounts(served="bus_down_served", bypassed="bus_down_bypasses")
BUS_STARTING_COUNTS = BoundedCounts(served="bus_starting_served", bypassed="bus_starting_bypasses")


class ReadState(NamedTuple):
    """The bus as one read takes it (:meth:`~tiered_cache.paths.ChainPaths.set_bus_connected`
    makes one per change; a read keeps the one it found at its memory lookup)."""

    #: Down or starting: the read is counted as served by memory or gone past it.
    down: bool
    #: In-process tiers are not read (``max_stale_when_disconnected`` 0).
    bypass: bool
    #: In-process tiers serve what was filled during the outage, within the bound.
    bounded: bool
    #: Which counters the read counts (down, or starting).
    counts: BoundedCounts


#: The bus connected (or no bus): memory read and counted as always.
CONNECTED = ReadState(down=False, bypass=False, bounded=False, counts=BUS_DOWN_COUNTS)
