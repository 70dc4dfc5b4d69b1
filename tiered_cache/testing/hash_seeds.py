"""Run a scenario under several string-hash salts, each in a child process.

The memory tier's policy hashes keys with ``hash()``, which CPython salts per process for
``str`` (``PYTHONHASHSEED``): the sketch's counters collide differently and the LRU guard
samples other keys from one process to the next. A claim about how the policy adapts holds
under a share of salts, not under every one, and a test of it that runs under the salt its
process happens to get fails now and then (CI failed this way on a window that went back under
9 salts in 10). Such a test runs its scenario under fixed salts and asserts the share it claims:
the same answer on every run.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["under_hash_seeds"]

#: What the child runs: import the scenario's module by its path (test modules are not a
#: package) and print the scenario's result as JSON.
_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("_hash_seed_scenario", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(getattr(module, sys.argv[2])()))
"""


def under_hash_seeds(
    scenario: Callable[[], list[float]], seeds: Iterable[int], *, timeout: float = 300.0
) -> dict[int, list[float]]:
    """``scenario()`` run once under each ``PYTHONHASHSEED`` in ``seeds``, by seed.

    ``scenario`` is a module-level function of no arguments (the child imports it from its
    file) returning a list of numbers. The children run as many at a time as there are CPUs;
    a child that fails or runs past ``timeout`` seconds raises with its output.
    """
    path = inspect.getfile(scenario)
    name = scenario.__name__

    def run(seed: int) -> list[float]:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, path, name],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{name} under PYTHONHASHSEED={seed} failed:\n{done.stderr[-3000:]}"
            )
        result: list[float] = json.loads(done.stdout.splitlines()[-1])
        return result

    chosen = list(seeds)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(chosen, pool.map(run, chosen), strict=True))
