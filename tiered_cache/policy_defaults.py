"""The defaults of the memory tier's eviction policy, written once.

:class:`~tiered_cache.policy.TinyLfuPolicy` takes them as its keyword defaults and
:class:`~tiered_cache.settings.MemoryTierSettings` as its field defaults; neither imports the
other, so the settings models stay free of the policy's code.
"""

from __future__ import annotations

#: Initial share of the entries given to the admission window.
WINDOW_FRACTION = 0.01
#: Whether the window's share follows the workload (hill climbing on the hit ratio).
ADAPTIVE = True
#: Share of the main area that is protected (the rest is probation).
PROTECTED_FRACTION = 0.8
#: The sketch ages after this many reads per entry ...
SAMPLE_FACTOR = 20
#: ... but after no fewer reads than this (a small cache still needs some history).
MIN_SAMPLE = 10_000
#: Counters per sketch row; ``None``: sized from the entries and the sample.
SKETCH_WIDTH: int | None = None
#: A Bloom filter in front of the sketch.
DOORKEEPER = False
#: How many keys the hot-key list reports as hot.
TOP_K = 100
#: Seconds after which a read counts half in the hot-key rates.
HOT_HALF_LIFE = 60.0
#: How long a hot key is kept when filled; ``None``: the tier's ``ttl``.
HOT_TTL: float | None = None
