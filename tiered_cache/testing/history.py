"""A history checker for a cache, in the spirit of Jepsen's Elle: was every read legal?

A :class:`History` holds, per key, every write the source took (in the source's own order, each
with the interval of the call that made it) and every read served by the cache (value, interval,
process). :func:`check` then asks of each read: did the source hold this value at some moment of
``[start - bound, end]``? A read may lag the source by at most ``bound`` seconds (how long the
contract lets an old copy live, e.g. the bus delay), never more ("stale"), and may never return a
value the source never held ("never-held") or held only after the read ended ("not-yet-written").
The bound may depend on the read and on the write that replaced the value: a process reads its
own writes at once, another process's after the bus delay, anyone's after a fault much later.

``None`` is a value like any other: the source not having the key (negative caching).

Time is whatever clock the recorder used for every interval (``time.monotonic`` is one clock for
every process of a Linux host). A write takes effect at one unknown moment of its interval; the
checker only flags a read that no choice of those moments explains, so it has no false alarms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: What a violation is: a copy older than the bound allows, a value the source never held, or a
#: value the source took only after the read had returned.
ViolationKind = Literal["stale", "never-held", "not-yet-written"]


@dataclass(frozen=True)
class Event:
    """A value of ``key`` seen by a call that ran within ``[start, end]`` in ``process``, as
    operation ``op``."""

    key: str
    value: Any
    start: float
    end: float
    process: str = ""
    op: str = ""


@dataclass(frozen=True)
class Write(Event):
    """A write the source took (``value`` ``None``: the key removed)."""


@dataclass(frozen=True)
class Read(Event):
    """A value the cache returned."""


@dataclass(frozen=True)
class Violation:
    """A read no order of the writes explains, and why."""

    kind: ViolationKind
    read: Read
    detail: str

    def to_json(self) -> dict[str, Any]:
        """A plain dict for a schedule file."""
        return {"kind": self.kind, "read": asdict(self.read), "detail": self.detail}


@dataclass
class CheckResult:
    """What :func:`check` found."""

    reads_checked: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every read was legal."""
        return not self.violations


class History:
    """Per key, the source's writes in the order the source applied them, and the reads.

    Every key starts with the value given to :meth:`initial` (``None`` by default: absent),
    held since before any read.
    """

    def __init__(self) -> None:
        self._initial: dict[str, Any] = {}
        self._writes: dict[str, list[Write]] = {}
        self._reads: list[Read] = []

    def initial(self, key: str, value: Any) -> None:
        """``key`` held ``value`` before the history began."""
        self._initial[key] = value

    def write(self, write: Write) -> None:
        """Append a write; call in the order the source applied the writes of that key."""
        self._writes.setdefault(write.key, []).append(write)

    def read(self, read: Read) -> None:
        """Record a read."""
        self._reads.append(read)

    @property
    def reads(self) -> list[Read]:
        """Every read, in the order recorded."""
        return list(self._reads)

    def writes(self, key: str) -> list[Write]:
        """The writes of ``key``, in the source's order."""
        return list(self._writes.get(key, []))

    def versions(self, key: str) -> list[Version]:
        """The values ``key`` held, oldest first, each with when it can have been current."""
        writes = self._writes.get(key, [])
        versions = [Version(0, self._initial.get(key), -math.inf, None)]
        latest_start = -math.inf
        for number, write in enumerate(writes, start=1):
            # The source applied the writes in this order, so write i took effect after every
            # earlier write started (and before it, and every later write, returned).
            latest_start = max(latest_start, write.start)
            versions.append(Version(number, write.value, latest_start, write))
        return versions


@dataclass
class Version:
    """Version ``number`` of a key, written by ``write`` (``None``: the initial value); it took
    effect after ``earliest_effect``."""

    number: int
    value: Any
    earliest_effect: float
    write: Write | None


#: How far (seconds) a read may lag a write that replaced the value it returned: one number for
#: every read, or per read and write (the writer's own process may not lag at all; a fault
#: widens the bound).
Bound = float | Callable[[Read, Write], float]


def check(history: History, bound: Bound) -> CheckResult:
    """Check every read of ``history`` against ``bound``."""
    bound_of = bound if callable(bound) else (lambda read, write, _b=float(bound): _b)
    versions: dict[str, list[Version]] = {}
    result = CheckResult()
    for read in history.reads:
        if read.key not in versions:
            versions[read.key] = history.versions(read.key)
        result.reads_checked += 1
        violation = _check_read(read, versions[read.key], bound_of)
        if violation is not None:
            result.violations.append(violation)
    return result


def _check_read(
    read: Read, versions: list[Version], bound_of: Callable[[Read, Write], float]
) -> Violation | None:
    matching = [index for index, version in enumerate(versions) if version.value == read.value]
    if not matching:
        return Violation("never-held", read, f"{_describe(read)}: the source never held it")
    begun = [index for index in matching if versions[index].earliest_effect <= read.end]
    if not begun:
        first = versions[matching[0]]
        return Violation(
            "not-yet-written",
            read,
            f"{_describe(read)}: the source took it only later ({_origin(first)}, started at "
            f"{first.earliest_effect:.3f})",
        )
    # Version i explains the read unless a later write had surely replaced it (it returned)
    # longer than that write's bound before the read started.
    for index in begun:
        if _worst_overtaker(read, versions[index + 1 :], bound_of)[0] <= 0:
            return None
    newest = begun[-1]
    lag, overtaker = _worst_overtaker(read, versions[newest + 1 :], bound_of)
    assert overtaker is not None and overtaker.write is not None
    bound = bound_of(read, overtaker.write)
    return Violation(
        "stale",
        read,
        f"{_describe(read)}: version {versions[newest].number} ({_origin(versions[newest])}) "
        f"was replaced by version {overtaker.number} ({_origin(overtaker)}, value "
        f"{overtaker.value!r}, returned at {overtaker.write.end:.3f}), {lag:.3f} s more than "
        f"the {bound:g} s a read may lag it",
    )


def _worst_overtaker(
    read: Read, later: list[Version], bound_of: Callable[[Read, Write], float]
) -> tuple[float, Version | None]:
    """How much longer than allowed the read lagged the later write it lagged most (<= 0: no
    later write rules the read out), and that write's version."""
    worst, worst_version = -math.inf, None
    for version in later:
        assert version.write is not None
        lag = read.start - version.write.end - bound_of(read, version.write)
        if lag > worst:
            worst, worst_version = lag, version
    return worst, worst_version


def _describe(read: Read) -> str:
    return (
        f"{read.process or '?'} op {read.op or '?'} read {read.key!r} = {read.value!r} in "
        f"[{read.start:.3f}, {read.end:.3f}]"
    )


def _origin(version: Version) -> str:
    if version.write is None:
        return "the initial value"
    write = version.write
    return f"written by {write.process or '?'} op {write.op or '?'}"
