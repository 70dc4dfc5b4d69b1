"""Test support that ships with tiered-cache: the tier conformance suite and a fake clock.

Import the suite from :mod:`tiered_cache.testing.conformance` (it needs pytest).
"""

from .clock import FakeClock

__all__ = ["FakeClock"]
