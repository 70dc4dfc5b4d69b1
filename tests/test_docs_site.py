"""The documentation site: it builds strictly, and its generated pages are complete."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

from gen_config_reference import render  # noqa: E402


def test_the_config_reference_has_the_bus_tables_the_consistency_page_refers_to() -> None:
    page = render()
    assert "## `[tiered_cache.bus] (every kind)`" in page
    redis_bus = page[page.index("## Bus kinds") :]
    assert "### `redis`" in redis_bus
    assert "| `timeout` | duration |" in redis_bus  # docs/consistency.md: `bus.timeout`


def test_a_model_summary_is_its_whole_first_paragraph_not_its_first_line() -> None:
    page = render()
    # Protection's docstring wraps after "early refresh, load timeouts and".
    assert "leases: one model for a config file's table and for code" in page


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (the docs extra)")
    built = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("from_config", "overrides", "get_many", "loader", "CachedFunction"):
        assert name in api


def test_the_site_renders_a_fence_with_test_options_as_python() -> None:
    from hooks import _drop_test_options

    page = "```python notest\nx = 1\n```\n\n```python continuation\ny = x\n```\n"
    assert _drop_test_options(page) == "```python\nx = 1\n```\n\n```python\ny = x\n```\n"


def test_every_key_of_a_snapshot_is_in_the_operations_table() -> None:
    """docs/operations.md's table of ``cache.stats()`` had 29 of its 44 keys: an operator
    reading a snapshot found ``fills_refused``, ``deletes_owed`` or ``soft_timeouts`` in it
    and nowhere on the page."""
    import re

    from tiered_cache import TieredCache
    from tiered_cache.memory import MemoryTier

    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    table = page[page.index("## `cache.stats()`") : page.index("## Hot keys")]
    named = {
        name
        for row in re.findall(r"^\| (.*?) \|", table, re.MULTILINE)
        for name in re.findall(r"`([a-z_]+)(?:\*|\[i\]\.[a-z_]+)?`", row)
    }
    prefixes = tuple(re.findall(r"`([a-z_]+)\*`", table))
    with TieredCache([MemoryTier()]) as cache:
        keys = set(cache.stats())
    missing = {key for key in keys if key not in named and not key.startswith(prefixes)}
    assert missing == set()
