"""How many string-hash salts each test fails under: every test run once per salt.

CPython salts ``hash()`` of a ``str`` per process (``PYTHONHASHSEED``); the memory tier's
policy follows the hashes (the sketch's counters, the LRU guard's sample), so a test that
replays a trace and asserts a decision or a count can pass under the salt of one suite run and
fail under the next. This runs the tests named under each salt of ``--salts``, one child
process a salt, one child at a time (niced), and prints per test the salts it failed under
and the first failure's line.

A test is ``path::function`` (a module-level test function of a file of tests/), or a file
for every such function in it. Each is called as pytest would call it, with ``clock`` (a fresh
:class:`~tiered_cache.testing.FakeClock`, tests/conftest.py's fixture) and each case of its
``pytest.mark.parametrize``. Left out, and said so: functions that take another fixture,
hypothesis's (their examples are hypothesis's draw, not the salt's), those a ``skipif`` mark
skips, and those that run their scenario under fixed salts themselves (their source calls
``under_hash_seeds``: the process's salt does not reach it).

Run: ``.venv/bin/python tools/salt_sweep.py --salts 0-200 tests/test_policy.py
tests/test_sketch.py::test_the_heavy_keys_rank_above_the_light_ones`` (a test of 1 s, 200 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load(path: str) -> ModuleType:
    """The test file at ``path`` (under the root), imported once (test files are not a
    package)."""
    name = "_salt_sweep_" + Path(path).stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def argument_names(mark: Any) -> list[str]:
    """The argument names of a ``parametrize`` mark: a string of comma-separated names, or a
    sequence of them."""
    names = mark.args[0]
    return [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)


def left_out(function: Callable[..., Any]) -> str | None:
    """Why ``function`` is not run here, or None."""
    marks = getattr(function, "pytestmark", [])
    if hasattr(function, "hypothesis"):
        return "hypothesis"
    if any(mark.name == "skipif" and mark.args and mark.args[0] is True for mark in marks):
        return "skipped"
    if "under_hash_seeds(" in inspect.getsource(function):
        return "fixed salts"
    parametrized = {
        name for mark in marks if mark.name == "parametrize" for name in argument_names(mark)
    }
    fixtures = set(inspect.signature(function).parameters) - parametrized - {"clock"}
    return f"fixtures {sorted(fixtures)}" if fixtures else None


def cases(function: Callable[..., Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each parametrized case of ``function``: its id suffix and arguments."""
    marks = [mark for mark in getattr(function, "pytestmark", []) if mark.name == "parametrize"]
    if not marks:
        yield "", {}
        return
    (mark,) = marks  # one parametrize mark: the tests swept here have no more
    names = argument_names(mark)
    for values in mark.args[1]:
        row = tuple(values) if len(names) > 1 else (values,)
        yield "[" + "-".join(map(str, row)) + "]", dict(zip(names, row, strict=True))


def tests(targets: list[str]) -> tuple[list[str], dict[str, str]]:
    """The test ids the targets name, and those left out with the reason."""
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for target in targets:
        path, _, only = target.partition("::")
        module = load(path)
        for name, function in vars(module).items():
            if not inspect.isfunction(function) or function.__module__ != module.__name__:
                continue
            if not name.startswith("test_") or (only and name != only):
                continue
            reason = left_out(function)
            if reason is None:
                chosen.append(f"{path}::{name}")
            else:
                skipped[f"{path}::{name}"] = reason
    return chosen, skipped


def run_here(ids: list[str]) -> dict[str, str]:
    """Each test of ``ids`` (and each case) run in this process: "ok", or where and what
    failed."""
    from tiered_cache.testing import FakeClock

    results: dict[str, str] = {}
    for test_id in ids:
        path, name = test_id.split("::")
        function = getattr(load(path), name)
        takes_clock = "clock" in inspect.signature(function).parameters
        for suffix, parameters in cases(function):
            clock = {"clock": FakeClock()} if takes_clock else {}
            try:
                function(**parameters, **clock)
            except Exception as exc:
                frames = traceback.extract_tb(exc.__traceback__)
                ours = [frame for frame in frames if frame.filename == str(ROOT / path)]
                frame = (ours or frames)[-1]
                what = f"{path}:{frame.lineno}: {frame.line} ({type(exc).__name__}: {exc})"
                results[test_id + suffix] = what[:300]
            else:
                results[test_id + suffix] = "ok"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--salts", default="0-200", help="FIRST-LAST, both run (default 0-200)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("targets", nargs="+", help="path or path::function, under the root")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_here(args.targets)))
        return
    ids, skipped = tests(args.targets)
    for test_id, reason in skipped.items():
        print(f"left out ({reason}): {test_id}")
    first, _, last = args.salts.partition("-")
    salts = range(int(first), int(last or first) + 1)
    failed: dict[str, list[int]] = {}
    first_failure: dict[str, str] = {}
    for salt in salts:
        done = subprocess.run(
            ["nice", "-n", "10", sys.executable, __file__, "--child", *ids],
            env={**os.environ, "PYTHONHASHSEED": str(salt)},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"salt {salt}: the child failed\n{done.stderr[-3000:]}")
        for test_id, outcome in json.loads(done.stdout.splitlines()[-1]).items():
            failed.setdefault(test_id, [])
            if outcome != "ok":
                failed[test_id].append(salt)
                first_failure.setdefault(test_id, f"salt {salt}: {outcome}")
    print(f"{len(failed)} tests, salts {salts.start}-{salts.stop - 1} ({len(salts)})")
    for test_id, salts_failed in sorted(failed.items(), key=lambda item: -len(item[1])):
        line = f"{len(salts_failed):4d} / {len(salts)}  {test_id}"
        if salts_failed:
            line += f"  salts {salts_failed}\n      {first_failure[test_id]}"
        print(line)


if __name__ == "__main__":
    main()
