"""What every benchmark script shares: interleaved repeats, min and median, and a run line.

Figures in docs/benchmarks/ are pasted from a script's output, never typed: the first line a
script prints (:func:`run_line`) says the command, the commit and the date of the run, so
that the pasted block carries them. The machine is a small one shared with other work, so
contenders are interleaved (A, B, A, B, ...; the order turns each round so that neither always
runs first) and every figure is given as the minimum (the least disturbed round) and the
median of the rounds.
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


def run_line() -> str:
    """``run: <command> | commit <id> | <UTC date> | <n> cores, load <1-min average>``."""
    command = " ".join(shlex.quote(arg) for arg in [".venv/bin/python", *sys.argv])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    cores = os.cpu_count()
    return f"run: {command} | commit {commit()} | {when} | {cores} cores, load {load:.1f}"


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
