"""The benchmark scripts' own contract: a run line that says which core ran, and a --help.

Figures in docs/ are pasted from a script's output, and its first line (``timing.run_line``) is
the only record of how it ran: a venv whose compiled modules changed since its build runs the
library on its pure-Python sources without a word, so the line must say which core ran. One
owner makes that line; every script prints it. The scripts are run as a reader runs them (a
fresh process of this venv's interpreter), and none of them is timed here.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
#: Every script under benchmarks/ (a file a reader runs, not a module the scripts share).
SCRIPTS = sorted(
    path for path in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()
)
#: What prints figures for docs/: the benchmarks and the counting tools beside them.
PRINTERS = [*BENCHMARKS.glob("*.py"), *(ROOT / "tools").glob("*.py")]
#: Prints the run line and whether the core runs compiled, as a script of benchmarks/ would.
RUN_LINE = (
    f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); from timing import run_line; "
    "from tiered_cache.compiled import compiled_core; print(run_line()); print(compiled_core())"
)


def environment(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in changes.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    return env


def test_the_run_line_of_a_pure_run_says_so() -> None:
    """``TIERED_CORE_PURE=1``: the library runs its sources, and the run line says it."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_LINE],
        env=environment(TIERED_CORE_PURE="1"),
        capture_output=True,
        text=True,
        check=True,
    )
    line, compiled = done.stdout.splitlines()
    assert compiled == "False"
    assert line.startswith("run: ")
    assert line.endswith("| pure-Python core")


def test_the_run_line_names_the_core_that_runs() -> None:
    """Without the switch, the line names what ``compiled_core()`` says in that process (a
    machine without a C compiler runs the sources, and its line says so)."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_LINE],
        env=environment(TIERED_CORE_PURE=None),
        capture_output=True,
        text=True,
        check=True,
    )
    line, compiled = done.stdout.splitlines()
    expected = "compiled core" if compiled == "True" else "pure-Python core"
    assert line.endswith(f"| {expected}")


def test_no_script_makes_its_own_run_line() -> None:
    """One owner of the run line (``benchmarks/timing.py``): a script that writes its own
    leaves out what the owner says (the core that ran), as three tools once did."""
    own = [
        path.relative_to(ROOT).as_posix()
        for path in PRINTERS
        if path.name != "timing.py" and re.search(r"""["']run: """, path.read_text())
    ]
    assert own == []


def test_every_benchmark_script_is_found() -> None:
    """The list below is no empty loop: the scripts the Makefile's ``bench`` runs are in it."""
    names = {path.name for path in SCRIPTS}
    assert {"bench_redis.py", "bench_async.py", "bench_faults.py"} <= names
    assert "timing.py" not in names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_benchmark_script_describes_itself(script: Path) -> None:
    """``--help`` prints the usage and the script's description (the first line of its
    docstring) and exits 0, running nothing: a script without a parser would run its
    benchmark instead, which the timeout stops."""
    docstring = ast.get_docstring(ast.parse(script.read_text()))
    assert docstring, f"{script.name} has no docstring to describe it"
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        # Wide enough that argparse wraps no line of the description (nor at a hyphen).
        env=environment(TIERED_CORE_PURE=None, COLUMNS="1000"),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ")
    described = " ".join(docstring.splitlines()[0].split())
    assert described in " ".join(done.stdout.split())
