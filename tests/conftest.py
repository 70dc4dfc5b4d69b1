"""Fixtures shared by the core's tests."""

from __future__ import annotations

import pytest

from tiered_cache.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, the loop the async chain targets."""
    return "asyncio"
