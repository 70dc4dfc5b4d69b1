"""The mutation score of core modules: how many small deliberate bugs the tests catch.

Copies the repository's tracked files into a scratch directory, runs mutmut there on the
chosen modules with the chosen test files (mutmut runs, for each mutant, only the selected
tests that reach the mutated function, in a process forked from a warmed-up pytest), and
prints per module: mutants, killed (a test failed or timed out), survived, not reached by any
selected test, and the score. Mutants listed in the equivalents file (one mutmut name per
line, ``#`` comments allowed) are left out of the second score: they change no behaviour a
caller can see (see docs/testing.md for each one and why).

Needs ``pip install -r benchmarks/requirements.txt`` (mutmut). Nothing is written in the
repository; ``--workdir`` keeps the scratch copy (``mutmut show NAME`` works there).

Run: ``.venv/bin/python benchmarks/mutation_score.py [--module tiered_cache/breaker.py ...]
[--tests tests/test_breaker.py ...] [--rev REV] [--workdir DIR] [--survivors]
[--max-children N]``. Tests added after a kept run: ``--workdir DIR --recheck --tests NEW...``
runs them against the mutants that run left alive (a killed mutant stays killed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The rebuilt chain core of issue #16 (docs/testing.md), its steps first (they are shared
#: with the asyncio chain, whose own modules are not scored). The parts it uses were scored
#: before it landed: pass ``--module`` with breaker.py, protection.py, singleflight.py or
#: invalidation_log.py to score them again.
MODULES = [
    "tiered_cache/fence.py",
    "tiered_cache/paths.py",
    "tiered_cache/steps.py",
    "tiered_cache/lease_wait.py",
    "tiered_cache/batch_load.py",
    "tiered_cache/loader.py",
    "tiered_cache/accessor.py",
    "tiered_cache/chain.py",
]
#: The core's own tests, and the Redis tests that drive leases and the breaker for real. The
#: whole suite per mutant would take hours on a shared two-core machine; mutmut runs, per
#: mutant, only those of these tests that reach the mutated function.
TESTS = [
    "tests/test_chain.py",
    "tests/test_chain_model.py",
    "tests/test_chain_invalidation.py",
    "tests/test_accessor.py",
    "tests/test_loader.py",
    "tests/test_protection.py",
    "tests/test_breaker.py",
    "tests/test_singleflight.py",
    "tests/test_coherence.py",
    "tests/test_invalidation_log.py",
    "tests/test_decorator.py",
    "tests/test_settings.py",
    "tests/test_hung_loads.py",
    # One load of a key at a time through the chain: the flights a caller may not join (an
    # invalidation since they started) and the loads that wait behind them.
    "tests/test_one_load_at_a_time.py",
    # The asyncio chain runs the same steps (paths, fence, lease wait, batch load).
    "tests/test_set_many.py",
    "tests/test_async_chain.py",
    "tests/test_async_decorator.py",
    "adapters/redis/tests/test_redis_leases.py",
    "adapters/redis/tests/test_redis_lease_give_back.py",
    "adapters/redis/tests/test_redis_faults_and_config.py",
    "adapters/redis/tests/test_redis_chain_races.py",
    "adapters/redis/tests/test_redis_coherence.py",
    "adapters/redis/tests/test_redis_two_chain_model.py",
    "adapters/redis/tests/test_redis_async.py",
    "adapters/dynamodb/tests/test_dynamodb_protection.py",
    # The fence's one-key fills and the drop window (the window's second test pauses a thread
    # with a trace function, which mutmut's trampolines defeat: left out), and the locks a
    # forked child makes anew (after_fork_in_child).
    "tests/test_fast_paths.py",
    "tests/test_drop_window.py::test_a_read_during_the_drop_does_not_copy_the_old_value_up_for_good",
    "tests/test_drop_window.py::test_a_read_during_a_clears_drop_does_not_copy_the_old_value_up_for_good",
    "tests/test_fork_held.py",
    # The asyncio chain's flights (a late waiter, other threads' loops) and its writes
    # stopped by the loop's end.
    "tests/test_async_flight.py",
    "adapters/redis/tests/test_redis_async_loop_end_writes.py",
    # The slots of timed loads at their boundaries and their refusals; the check of one-use
    # loaded values; the leases a close gives back. (tests/test_slot_leaks.py is left out: one
    # of its tests delivers an interrupt with a trace function, which the trampolines defeat.)
    "tests/test_timed_slots.py",
    "tests/test_slot_rules.py",
    "tests/test_one_use_refusals.py",
    "tests/test_held_leases.py",
    # A timed load's worker that reads its own key, at any depth (singleflight's Behalf); the
    # readers beside a background refresh (paths' read_through with beside).
    "tests/test_recursive_timed_loads.py",
    "tests/test_refresh_serves_stale.py",
    # Keys UTF-8 cannot encode, refused by every call of a chain with a Redis tier (paths'
    # check_keys with utf8_for); the threaded chain's set of one memory tier (set_alone), but
    # its signature test: the trampolines change what a signature shows.
    "adapters/redis/tests/test_redis_hostile_keys.py",
    "tests/test_set_alone.py::test_a_set_alone_answers_counts_and_feeds_the_policy_as_the_steps",
    "tests/test_set_alone.py::test_a_kept_key_written_again_enters_as_a_new_key",
    "tests/test_set_alone.py::test_the_old_copy_goes_when_the_new_one_cannot_be_weighed",
    "tests/test_set_alone.py::test_set_keeps_its_key_check_and_ttl",
    "tests/test_set_alone.py::test_the_general_set_stays_for_other_chains",
    "tests/test_set_alone.py::test_a_bad_ttl_after_the_source_took_the_value_leaves_no_old_copy",
    # What a payment of owed deletes announces again (paths' paid); what reads count while
    # the bus starts (paths' set_bus_connected with starting).
    "tests/test_bus_start_counts.py",
    "adapters/redis/tests/test_redis_owed_deletes.py::test_a_payment_announces_what_was_owed_no_less_and_no_more",
]
EQUIVALENTS = ROOT / "benchmarks" / "mutation_equivalents.txt"
KILLED = {1, 3, 24, -24, 36, 152, 255}  # a failing test, or a timeout (a hang is caught too)
SURVIVED = 0
NOT_REACHED = {5, 33}


def copy_revision(revision: str, destination: Path) -> None:
    """The repository's files at ``revision`` (to score an older or another branch's code)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)


def copy_tracked_files(destination: Path) -> None:
    """The repository as committed plus uncommitted edits, without caches or virtualenvs."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def configure(workdir: Path, modules: list[str], tests: list[str]) -> None:
    """mutmut's settings, appended to the scratch copy's pyproject.toml."""
    settings = {
        "source_paths": ["tiered_cache/"],
        "only_mutate": modules,
        # -x: the first failing test kills the mutant; a shorter per-test timeout than make
        # test's, since mutmut's own (15 x the clean run + 1 s) catches hangs first anyway.
        # The multi-process tests run their children on the original code: no use here. The
        # forked-child tests fail on the clean code under mutmut's harness: left out too.
        "pytest_add_cli_args": [
            *("-p", "no:cacheprovider", "-x", "-q", "-o", "timeout=60"),
            *("-k", "not four_processes and not two_processes and not forked"),
        ],
        # What a log call says is read by people, not by code: its wording is not mutated.
        "do_not_mutate_patterns": [
            r"^\s*\S*(log|logger)\S*\.(debug|info|warning|error|exception)\("
        ],
        "pytest_add_cli_args_test_selection": tests,
        "also_copy": ["adapters/", "examples/"],
    }
    lines = ["", "[tool.mutmut]"] + [
        f"{key} = {json.dumps(value)}" for key, value in settings.items()
    ]
    with (workdir / "pyproject.toml").open("a") as file:
        file.write("\n".join(lines) + "\n")


def load_results(workdir: Path) -> dict[str, dict[str, int | None]]:
    """Exit code of every mutant, per mutated module (from mutmut's .meta files)."""
    results: dict[str, dict[str, int | None]] = {}
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(workdir / "mutants")).removesuffix(".meta")
        results[module] = json.loads(meta.read_text())["exit_code_by_key"]
    return results


def read_equivalents(path: Path) -> set[str]:
    if not path.exists():
        return set()
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {name for name in names if name}


def report(
    results: dict[str, dict[str, int | None]], equivalents: set[str], survivors: bool
) -> None:
    header = f"{'module':34} {'mutants':>7} {'killed':>6} {'survived':>8} {'unreached':>9}"
    print(header + f" {'other':>5} {'equiv':>5} {'score':>6} {'w/o equiv':>9} {'of run':>6}")
    totals: Counter[str] = Counter()
    for module, codes in results.items():
        count = Counter(
            "killed"
            if code in KILLED
            else "survived"
            if code == SURVIVED
            else "unreached"
            if code in NOT_REACHED
            else "other"
            for code in codes.values()
        )
        count["mutants"] = len(codes)
        count["equiv"] = sum(
            1
            for name, code in codes.items()
            if name in equivalents and code is not None and code not in KILLED
        )
        totals.update(count)
        print_row(module, count)
        if survivors:
            for name, code in codes.items():
                if code is not None and code not in KILLED and name not in equivalents:
                    print(f"    {name}  (exit code {code})")
    print_row("total", totals)


def print_row(label: str, count: Counter[str]) -> None:
    mutants, killed = count["mutants"], count["killed"]
    score = killed / mutants if mutants else 1.0
    relevant = mutants - count["equiv"]
    net = killed / relevant if relevant else 1.0
    # A run stopped early leaves mutants with no result ("other"): the last column scores
    # only the mutants that were run.
    ran = relevant - count["other"]
    of_run = killed / ran if ran else 0.0
    print(
        f"{label:34} {mutants:7} {killed:6} {count['survived']:8} {count['unreached']:9} "
        f"{count['other']:5} {count['equiv']:5} {score:6.1%} {net:9.1%} "
        + (f"{of_run:6.1%}" if ran else f"{'-':>6}")
    )


def recheck(workdir: Path, tests: list[str], modules: list[str], skip: set[str]) -> None:
    """Run ``tests`` (copied from this checkout) against every mutant of ``workdir`` that
    survived or was not reached, and record the ones they kill (exit code 1).

    For tests added after a long run: the mutants the run killed stay killed (tests were only
    added), so only the others need the new tests. One pytest process per mutant
    (``MUTANT_UNDER_TEST`` picks the mutant, as in mutmut's own workers). ``tests`` may name
    single tests (``file.py::test``); they must pass on the code of the run.
    """
    mutants = workdir / "mutants"
    for test in {test.split("::", 1)[0] for test in tests}:
        target = mutants / test
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / test, target)
    adapters = [str(path) for path in sorted((mutants / "adapters").iterdir()) if path.is_dir()]
    path = os.pathsep.join([str(mutants), *adapters])

    def run(mutant: str) -> int:
        # A process per mutant: tests that configure something once (Django) stay honest.
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
        env = {**os.environ, "PYTHONPATH": path, "MUTANT_UNDER_TEST": mutant}
        done = subprocess.run(
            [*command, "-o", "timeout=60", *tests],
            cwd=mutants,
            env=env,
            capture_output=True,
            check=False,
        )
        return done.returncode

    if run("") != 0:  # tests that fail on the unmutated code would kill every mutant
        raise SystemExit("the tests fail on the code of the run: nothing rechecked")
    for module in modules:
        meta = mutants / f"{module}.meta"
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        for name, code in codes.items():
            if code is None or code in KILLED or name in skip:
                continue
            outcome = run(name)
            if outcome != 0:
                codes[name] = 1
            print(f"{'killed' if outcome else 'survived':8} {name}", flush=True)
        meta.write_text(json.dumps(data, indent=4))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="a module to mutate (repeatable)")
    parser.add_argument("--tests", action="append", help="a test file to run (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep the scratch copy here")
    parser.add_argument("--rev", help="score the code of this git revision, not the worktree")
    parser.add_argument("--equivalents", type=Path, default=EQUIVALENTS)
    parser.add_argument(
        "--survivors", action="store_true", help="list the surviving mutants by name"
    )
    parser.add_argument(
        "--max-children",
        type=int,
        default=2,
        help="mutants run at once (the machine is shared: keep it low)",
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="run --tests against the survivors already in --workdir (tests added since)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="read the results already in --workdir"
    )
    args = parser.parse_args()
    mutmut = Path(sys.executable).parent / "mutmut"
    if not mutmut.exists():
        print("mutmut is not installed: pip install -r benchmarks/requirements.txt")
        return 2
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="mutation-"))
    if args.recheck:
        if args.workdir is None or not args.tests:
            print("--recheck needs --workdir (a kept run) and --tests (the tests to add)")
            return 2
        recheck(scratch, args.tests, args.module or MODULES, read_equivalents(args.equivalents))
    elif not args.report_only:
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        if args.rev:
            copy_revision(args.rev, scratch)
        else:
            copy_tracked_files(scratch)
        configure(scratch, args.module or MODULES, args.tests or TESTS)
        print(f"mutmut run in {scratch}", flush=True)
        # The adapters' tests must import the copied adapters (mutmut puts its mutated copy of
        # tiered_cache first on the path; the editable installs would point back here).
        adapters = [
            str(scratch / "mutants" / "adapters" / path.name)
            for path in sorted((scratch / "adapters").iterdir())
            if path.is_dir()
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(adapters)}
        with (scratch / "mutmut.log").open("w") as output:
            run = subprocess.run(
                [str(mutmut), "run", "--max-children", str(args.max_children)],
                cwd=scratch,
                env=env,
                stdout=output,
                stderr=output,
                check=False,
            )
        if run.returncode != 0:
            print(f"mutmut run failed ({run.returncode}): see {scratch / 'mutmut.log'}")
    report(load_results(scratch), read_equivalents(args.equivalents), args.survivors)
    if args.workdir is None:
        shutil.rmtree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
