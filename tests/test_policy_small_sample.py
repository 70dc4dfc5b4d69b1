"""The adaptive policy's simulations on a sample of one key: a cache holding a few keys.

The LRU guard sizes its simulations by the sampled keys the cache holds at a period's end;
with a few keys cached (a cache of 1,000 entries over 8 keys, some deleted by writes) that
can be one, and its miniature W-TinyLFU then had a window as large as itself and no main
area to offer a candidate to.
"""

from __future__ import annotations

import random

from tiered_cache import MemoryTier
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.testing import FakeClock
from tiered_cache.testing.hash_seeds import under_hash_seeds
from tiered_cache.tier import Entry

READS = 40_000


def few_keys_with_deletes() -> list[float]:
    """Reads of 8 keys at random through a 1,000-entry cache, a write deleting one now and
    then; the reads that ended normally (all of them, or the count before the first failure).
    """
    clock = FakeClock()
    tier = MemoryTier(policy=TinyLfuPolicy(1000, clock=clock), clock=clock)
    draw = random.Random(2)
    for read in range(READS):
        key = str(draw.randrange(8))
        clock.advance(0.001)
        try:
            if not tier.get(key):
                tier.set(key, Entry(value=key, loaded_at=clock()))
        except Exception:  # the count says where it failed
            return [float(read)]
        if read % 50 == 0 and draw.random() < 0.5:
            tier.delete(str(draw.randrange(8)))
    return [float(READS)]


def test_a_guard_sample_of_one_key_never_fails_a_read() -> None:
    # Salt 3 samples two of the 8 keys ('0' and '4'); with one of them deleted at a period's
    # end the guard's size is 1, and in LRU mode its miniature W-TinyLFU raised StopIteration.
    assert under_hash_seeds(few_keys_with_deletes, [0, 3]) == {0: [READS], 3: [READS]}
