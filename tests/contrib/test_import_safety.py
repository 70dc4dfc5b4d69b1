"""The core never imports an exporter's library: they are optional extras."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_and_the_series_imports_no_optional_library() -> None:
    code = (
        "import sys, tiered_cache, tiered_cache.contrib.series, tiered_cache.logs\n"
        "from tiered_cache import TieredCache\n"
        "TieredCache([]).stats()\n"
        "optional = ('prometheus_client', 'opentelemetry', 'django')\n"
        "loaded = [m for m in optional if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
