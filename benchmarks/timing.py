"""What every benchmark script shares: interleaved repeats, min and median, and a run line.

Figures in docs/benchmarks/ are pasted from a script's output, never typed: the first line a
script prints (:func:`run_line`) says the command, the commit, the date of the run and the
core that ran (compiled or its sources), so that the pasted block carries them. The machine is
a small one shared with other work, so contenders are interleaved (A, B, A, B, ...; the order
turns each round so that neither always runs first) and every figure is given as the minimum
(the least disturbed round) and the median of the rounds.
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=tree, capture_output=True, text=True, check=False
    ).stdout.strip()


def head(tree: Path = ROOT) -> str:
    """The commit checked out in ``tree`` (a peer's frozen clone, say), short."""
    return _git(tree, "rev-parse", "--short", "HEAD") or "unknown"


def commit() -> str:
    """The checked-out commit, ``+dirty`` when tracked files differ from it."""
    dirty = _git(ROOT, "status", "--porcelain", "--untracked-files=no")
    return head() + ("+dirty" if dirty else "")


#: How the run line names each state of the core (``tiered_cache.compiled`` decides which runs).
CORE_STATES = {True: "compiled core", False: "pure-Python core"}
#: Asked of another checkout's interpreter (:func:`core_in`).
_ASK_CORE = "from tiered_cache.compiled import compiled_core; print(compiled_core())"


def core() -> str:
    """Which core this process runs the library on: ``compiled core`` or ``pure-Python core``.

    Said in every run line because nothing else says it: a venv whose compiled modules changed
    since its build (or with ``TIERED_CORE_PURE=1``, or a build that failed to import) runs the
    pure-Python sources silently, and its figures are then the sources' (an L2 hit read 4.4x
    slower so)."""
    from tiered_cache.compiled import compiled_core

    return CORE_STATES[compiled_core()]


def core_in(tree: Path) -> str:
    """:func:`core` as ``tree``'s own interpreter (``tree/.venv``) answers it in a fresh
    process with this environment (a peer checkout measured in its own processes)."""
    try:
        # In the tree: ``-c`` puts the working directory first on the path, and the package
        # found there must be the tree's.
        asked = subprocess.run(
            [str(tree / ".venv" / "bin" / "python"), "-c", _ASK_CORE],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:  # no such tree or interpreter
        return "core unknown"
    answer = asked.stdout.strip()
    return CORE_STATES[answer == "True"] if answer in ("True", "False") else "core unknown"


def run_line() -> str:
    """``run: <command> | commit <id> | <UTC date> | <n> cores, load <1-min average> | <core>``:
    the core this process runs (:func:`core`); a script comparing two checkouts in their own
    processes names the peer's with :func:`core_in`."""
    command = " ".join(shlex.quote(arg) for arg in [".venv/bin/python", *sys.argv])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    cores = os.cpu_count()
    return (
        f"run: {command} | commit {commit()} | {when} | {cores} cores, load {load:.1f} | {core()}"
    )


@dataclass(frozen=True)
class Spread:
    """The rounds of one contender: their minimum and median (same unit as given)."""

    low: float
    middle: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        """The spread of ``samples``."""
        return cls(min(samples), statistics.median(samples))

    def scaled(self, factor: float) -> Spread:
        """Both figures times ``factor``."""
        return Spread(self.low * factor, self.middle * factor)


def interleaved(
    contenders: Mapping[str, Callable[[], object]], *, rounds: int, number: int = 1
) -> dict[str, Spread]:
    """Seconds per call of each contender: ``rounds`` rounds in which each runs ``number``
    times in turn; the order rotates by one each round."""
    samples = interleaved_samples(contenders, rounds=rounds, number=number)
    return {name: Spread.of(values) for name, values in samples.items()}


def interleaved_samples(
    contenders: Mapping[str, Callable[[], object]], *, rounds: int, number: int = 1
) -> dict[str, list[float]]:
    """:func:`interleaved`'s samples, round by round (the ``i``-th of every contender were
    taken in the same round, next to each other: see :func:`paired`)."""
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            run = contenders[name]
            started = clock()
            for _ in range(number):
                run()
            samples[name].append((clock() - started) / number)
    return samples


def paired(ours: Sequence[float], peer: Sequence[float]) -> Spread:
    """Ours over the peer's round by round (samples taken next to each other, so a slow
    spell of the machine that spans a round slows both): the least and the median ratio."""
    return Spread.of([mine / theirs for mine, theirs in zip(ours, peer, strict=True)])


def ratio(ours: Spread, peer: Spread) -> Spread:
    """Ours over the peer's: of the minima, and of the medians."""
    return Spread(ours.low / peer.low, ours.middle / peer.middle)
