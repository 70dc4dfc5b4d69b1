"""Test support that ships with tiered-cache: the tier conformance suite, a fake clock
and a sleep that does not wait.

Import the suite from :mod:`tiered_cache.testing.conformance` (it needs pytest).
"""

from .clock import FakeClock, RecordingSleep

__all__ = ["FakeClock", "RecordingSleep"]
