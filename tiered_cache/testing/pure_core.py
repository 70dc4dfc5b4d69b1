"""Run one test on the pure-Python core, in a child process.

A test that pauses or interrupts the chain at a chosen line with a trace function needs that
line to run as Python: compiled with the core (mypyc), a module has no frames to trace. Such
a test runs itself on the sources (``TIERED_CORE_PURE=1``) in a child when the core is
compiled here, so it says the same on every machine.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["on_the_pure_core"]


def on_the_pure_core(test: Callable[..., Any]) -> None:
    """Run the module-level test function ``test`` in a child pytest on the pure-Python core;
    raises with the child's output unless it passed."""
    test_id = f"{Path(inspect.getfile(test)).resolve()}::{test.__name__}"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_id],
        env={**os.environ, "TIERED_CORE_PURE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout
