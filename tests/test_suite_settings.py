"""The suite's own settings, which every test inherits (the root conftest.py)."""

from __future__ import annotations

from hypothesis import settings


def test_property_tests_have_no_deadline() -> None:
    """Tests assert behaviour and counts, never times: hypothesis's default deadline (200 ms an
    example) failed a property test of the ghosts on a loaded machine."""
    assert settings().deadline is None
    assert settings(max_examples=5).deadline is None  # a test's own @settings inherits it
