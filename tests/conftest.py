"""Fixtures shared by the core's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiered_cache.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, the loop the async chain targets."""
    return "asyncio"


@pytest.fixture
def broken_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution (its metadata on sys.path) whose tier kind, source kind and
    subcommand name a module that cannot be imported: an adapter installed without its client
    library (``pip install --no-deps``), or one broken by an upgrade."""
    import importlib

    info = tmp_path / "tiered_cache_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tiered-cache-broken\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[tiered_cache.tiers]\nbroken = tiered_cache_no_such_module:plugin\n"
        "[tiered_cache.sources]\nbroken = tiered_cache_no_such_module:plugin\n"
        "[tiered_cache.commands]\nbroken = tiered_cache_no_such_module:command\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
