"""A fleet of worker processes for multi-process tests: start them, let them go together,
collect what each printed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis


def run_fleet(
    worker: Path, args: Sequence[str], *, processes: int, url: str, namespace: str
) -> list[Any]:
    """Run ``processes`` copies of ``python worker *args``. Each says it is ready by
    incrementing ``<namespace>:ready`` in the Redis at ``url``, waits for ``<namespace>:go``
    (set here once all are ready), and prints its result as JSON on its last line. Returns the
    results; a worker that fails fails the call (AssertionError with its exit codes)."""
    started = [
        subprocess.Popen([sys.executable, str(worker), *args], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    control = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 60  # the processes start and build their chains
        while int(control.get(f"{namespace}:ready") or 0) < processes:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        control.set(f"{namespace}:go", 1)
        outputs = [process.communicate(timeout=120)[0] for process in started]
    finally:
        control.close()
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    codes = [process.returncode for process in started]
    assert codes == [0] * processes, codes
    return [json.loads(output.strip().splitlines()[-1]) for output in outputs]
