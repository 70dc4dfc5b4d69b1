"""A script run in a child interpreter, for tests of what a process does as it ends: its
exit's hooks, the threads it waits for or leaves, a Ctrl-C that ends it."""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["run_python"]


def run_python(script: str, *, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python source) in a child interpreter, with this one's ``sys.path``
    first on its path (so it imports what the test imports, test modules included) and
    ``faulthandler`` on (a hang killed at ``timeout`` shows where it was); its outcome, its
    output as text. Raises ``AssertionError`` naming ``what`` if it had not ended within
    ``timeout`` seconds (a guard, never a measure)."""
    path = os.pathsep.join(p for p in sys.path if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONFAULTHANDLER": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-c", script],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"never ended: {what}") from exc
