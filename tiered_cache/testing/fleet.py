"""A fleet of worker processes for multi-process tests: start them, let them go together,
collect what each printed; and what a worker does on its side (:func:`ready_then_wait_for_go`,
:func:`print_changes`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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


def ready_then_wait_for_go(control: redis.Redis, namespace: str) -> None:
    """A worker's side of :func:`run_fleet`: count itself ready, then wait for the go (at most
    60 s: then ``SystemExit``)."""
    control.incr(f"{namespace}:ready")
    deadline = time.monotonic() + 60
    while not control.exists(f"{namespace}:go"):
        if time.monotonic() > deadline:
            raise SystemExit("the test never said go")
        time.sleep(0.005)


def print_changes(read: Callable[[], Any], seen: Any, seconds: float, pause: float) -> None:
    """Call ``read`` for ``seconds``, ``pause`` apart, and write ``[wall time, value]`` (a JSON
    line) to stdout, the worker's channel to its test, each time it returns other than the
    value written last (``seen`` at first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = read()
        if value != seen:
            sys.stdout.write(json.dumps([time.time(), value]) + "\n")
            sys.stdout.flush()
            seen = value
        time.sleep(pause)
