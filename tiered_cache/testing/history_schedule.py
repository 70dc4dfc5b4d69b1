"""Randomized, seeded schedules for a history run: who does what to which key, and when.

A schedule is plain data (it round-trips through JSON), so a failing one is written to a file
and replayed as it was. Schedule ``index`` of seed ``seed`` is always the same schedule.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

OpKind = Literal[
    "get",
    "get_many",
    "set",
    "write",
    "invalidate",
    "invalidate_many",
    "invalidate_prefix",
    "clear",
]
#: The invalidation a process makes after writing the source directly, as the stream follower
#: would: the write's interval ends when it returns.
FollowKind = Literal["invalidate", "invalidate_many", "invalidate_prefix", "clear"]
FaultKind = Literal["sigstop", "kill", "bus-cut"]

OP_WEIGHTS: dict[OpKind, int] = {
    "get": 30,
    "get_many": 10,
    "set": 16,
    "write": 16,
    "invalidate": 4,
    "invalidate_many": 4,
    "invalidate_prefix": 6,
    "clear": 3,
}
FOLLOWS: tuple[FollowKind, ...] = ("invalidate", "invalidate_many", "invalidate_prefix", "clear")
FAULTS: tuple[FaultKind, ...] = ("sigstop", "kill", "bus-cut")


@dataclass
class Op:
    """One call a worker makes ``at`` seconds after the schedule starts, on a thread of its own.

    Attributes:
        delay: get/get_many: ``None`` reads through the chain's source; a number passes a loader
            that reads the source and then waits that long (a slow load racing the writes).
        repeat: set: how many sets in a row (each a write of its own).
        remove: write: remove the key from the source instead of writing a new value.
        follow: write: the invalidation made through the cache after the direct write.
        prefix: invalidate_prefix, and a write followed by one: the prefix.
    """

    id: str
    process: int
    at: float
    kind: OpKind
    keys: list[str]
    delay: float | None = None
    repeat: int = 1
    remove: bool = False
    follow: FollowKind | None = None
    prefix: str | None = None


@dataclass
class Fault:
    """A fault the driver injects ``at`` seconds after the start, for ``duration`` seconds:
    Redis stopped (SIGSTOP, then SIGCONT), Redis killed (and restarted empty), or the bus
    connection of worker ``process`` cut at the TCP proxy."""

    kind: FaultKind
    at: float
    duration: float
    process: int | None = None


@dataclass
class Schedule:
    """What one schedule runs: the processes taking part, the keys, the initial source values
    (``None``: absent), the operations and the faults."""

    index: int
    seed: int
    processes: list[int]
    keys: list[str]
    initial: dict[str, str | None]
    ops: list[Op]
    faults: list[Fault] = field(default_factory=list)

    def tagged(self, tag: str) -> Schedule:
        """The same schedule on keys that start with ``tag`` (prefixes kept intact): a replay
        must not meet what an earlier run of it left in the tiers."""
        return Schedule(
            self.index,
            self.seed,
            list(self.processes),
            [tag + key for key in self.keys],
            {tag + key: value for key, value in self.initial.items()},
            [
                replace(
                    op,
                    keys=[tag + key for key in op.keys],
                    prefix=None if op.prefix is None else tag + op.prefix,
                )
                for op in self.ops
            ],
            list(self.faults),
        )

    def to_json(self) -> dict[str, Any]:
        """A plain dict (JSON)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        """The schedule :meth:`to_json` wrote."""
        return cls(
            index=int(data["index"]),
            seed=int(data["seed"]),
            processes=[int(p) for p in data["processes"]],
            keys=list(data["keys"]),
            initial=dict(data["initial"]),
            ops=[Op(**op) for op in data["ops"]],
            faults=[Fault(**fault) for fault in data.get("faults", [])],
        )


@dataclass(frozen=True)
class ScheduleShape:
    """How big schedules are: sized so that a schedule runs in about half a second."""

    workers: int = 4
    min_processes: int = 2
    users: int = 2
    keys_per_user: int = 2
    min_ops: int = 4
    max_ops: int = 10
    #: Ops start within this many seconds, around a few instants, so that they overlap.
    span: float = 0.1
    max_delay: float = 0.15
    max_repeat: int = 5
    fault_rate: float = 0.08
    max_fault: float = 0.4


def generate(seed: int, index: int, shape: ScheduleShape | None = None) -> Schedule:
    """Schedule ``index`` of the run seeded ``seed``."""
    shape = shape or ScheduleShape()
    rng = random.Random(f"{seed}:{index}")
    count = rng.randint(min(shape.min_processes, shape.workers), shape.workers)
    processes = sorted(rng.sample(range(shape.workers), count))
    prefixes = [f"s{index}:u{user}:" for user in range(shape.users)]
    keys = [f"{prefix}k{n}" for prefix in prefixes for n in range(shape.keys_per_user)]
    initial = {key: (f"{index}.init.{key}" if rng.random() < 0.8 else None) for key in keys}
    # A few instants the ops gather around: overlaps are what find races.
    instants = [rng.uniform(0, shape.span) for _ in range(3)]
    kinds = list(OP_WEIGHTS)
    weights = list(OP_WEIGHTS.values())
    ops: list[Op] = []
    for number in range(rng.randint(shape.min_ops, shape.max_ops)):
        kind = rng.choices(kinds, weights)[0]
        at = max(0.0, rng.choice(instants) + rng.uniform(-0.02, 0.02))
        op = Op(f"{index}.{number}", rng.choice(processes), round(at, 4), kind, [rng.choice(keys)])
        if kind in ("get", "get_many") and rng.random() < 0.5:
            op.delay = round(rng.uniform(0.01, shape.max_delay), 3)
        if kind in ("get_many", "invalidate_many"):
            op.keys = rng.sample(keys, rng.randint(1, len(keys)))
        if kind == "set":
            op.repeat = rng.randint(1, shape.max_repeat)
        if kind == "write":
            op.remove = rng.random() < 0.2
            op.follow = rng.choice(FOLLOWS)
        if kind == "invalidate_prefix" or op.follow == "invalidate_prefix":
            op.prefix = op.keys[0].rsplit(":", 1)[0] + ":"
        if op.follow == "invalidate_many":
            op.keys = [op.keys[0], *rng.sample(keys, 1)]
        ops.append(op)
    faults: list[Fault] = []
    if rng.random() < shape.fault_rate:
        fault_kind: FaultKind = rng.choice(FAULTS)
        at = round(rng.uniform(0, shape.span), 4)
        fault = Fault(fault_kind, at, round(rng.uniform(0.05, shape.max_fault), 3))
        if fault_kind == "bus-cut":
            fault.process = rng.choice(processes)
        faults.append(fault)
    return Schedule(index, seed, processes, keys, initial, ops, faults)


def save(path: str | Path, schedules: list[Schedule], extra: dict[str, Any]) -> None:
    """Write schedules (and what was found) to a JSON file that ``--replay`` reads."""
    document = {"schedules": [schedule.to_json() for schedule in schedules], **extra}
    Path(path).write_text(json.dumps(document, indent=1) + "\n")


def load(path: str | Path) -> list[Schedule]:
    """The schedules of a file :func:`save` wrote."""
    document = json.loads(Path(path).read_text())
    return [Schedule.from_json(item) for item in document["schedules"]]
