"""Comparing values the way a cache must return them: equal, and of the same types."""

from __future__ import annotations

import math
from typing import Any


def assert_same_value(got: Any, want: Any) -> None:
    """Assert ``got`` equals ``want`` and has the same types all the way down.

    ``==`` alone would pass a tier that turns ``Decimal("1.50")`` into ``1.5`` or a tuple into a
    list; this does not. Leaves are compared by ``repr`` (so ``-0.0`` differs from ``0.0``),
    sets by element type and ``repr``, and NaN equals NaN.
    """
    assert type(got) is type(want), (got, want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same_value(got[key], want[key])
    elif isinstance(want, list | tuple):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same_value(a, b)
    elif isinstance(want, set | frozenset):
        assert {(type(x), repr(x)) for x in got} == {(type(x), repr(x)) for x in want}
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got)
    else:
        assert repr(got) == repr(want)  # repr-exact: -0.0, Decimal("1.50"), 2**70
