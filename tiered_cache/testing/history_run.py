"""The driver of a history run: real processes, a real Redis, one source, faults, the check.

:class:`HistoryRig` starts a private ``redis-server``, the versioned store
(:mod:`.history_source`), a TCP :class:`~.servers.FaultProxy` per worker for its bus connection,
and the worker processes (:mod:`.history_worker`), once; every schedule then uses fresh keys, so
nothing needs resetting between schedules. :meth:`HistoryRig.run` plays one schedule, reads every
key once more from every process it involved, and checks the history (:mod:`.history`).

The bound a read is checked against is the consistency contract's (docs/consistency.md):

* in the writing process, none: ``set`` and ``invalidate*`` change Redis and its memory before
  they return;
* in another process, ``bus_delay``: its memory drops the copy when the bus message arrives;
  after the last op the driver publishes probes and waits until every process heard them, so
  the final reads may lag nothing;
* near a fault (injected, or one a chain counted on its own: a tier error or skip, a failed
  publish, a bus disconnect), the contract only promises that an old copy goes at its hard
  expiry: ``ttl + max_stale`` after it was loaded, plus the longest slow load.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from .history import CheckResult, History, Read, Violation, Write, check
from .history_schedule import Fault, Op, Schedule, ScheduleShape, save
from .history_source import StoreClient, StoreServer
from .history_worker import Record, worker_main
from .polling import eventually
from .servers import FaultProxy, RedisServer

#: Counters of ``stats()`` that say a chain met a failure: the contract's weaker bound applies.
#: Not ``bus_gaps``: on a connection that neither dropped (``bus_disconnects``) nor failed a
#: publish, Redis pub/sub loses nothing, and a "gap" is two messages of one sender published by
#: two threads out of order; the receiver clears its memory, which makes nothing staler.
_TROUBLE_EVENTS = ("bus_publish_errors", "bus_publish_skipped", "bus_disconnects")
#: Counters of ``stats()`` that show which paths of the chain a run went through.
_PATH_EVENTS = (
    "loads",
    "singleflight_waits",
    "stale_served",
    "early_refreshes",
    "refreshes",
    "lease_waits",
    "lease_lost",
    "bus_received",
    "bus_gaps",
)


@dataclass(frozen=True)
class RunConfig:
    """How the workers' chains are configured, and the bounds that follows from it (seconds).

    The chains are the product's memory + Redis + bus chain, with short TTLs so that expiry,
    stale-while-revalidate and early refresh happen inside a half-second schedule.
    """

    workers: int = 4
    ttl: float = 0.4
    max_stale: float = 0.6
    redis_timeout: float = 0.25
    cool_down: float = 0.5
    bus_health_check: float = 1.0
    bus_timeout: float = 0.5
    #: How long another process's memory may keep an old copy: until the bus message arrives.
    bus_delay: float = 0.25
    shape: ScheduleShape = field(default_factory=ScheduleShape)

    @property
    def fault_bound(self) -> float:
        """The bound near a fault: an old copy lives at most until its hard expiry."""
        return self.ttl + self.max_stale + self.shape.max_delay + self.bus_delay

    @property
    def recovery(self) -> float:
        """How long after a fault its effects may still show (breaker cool-down, bus checks)."""
        return self.cool_down + self.bus_health_check + self.bus_timeout

    def chain_config(self, namespace: str, redis_url: str, bus_url: str) -> dict[str, Any]:
        """The ``TieredCache.from_config`` overrides of one worker."""
        return {
            "namespace": namespace,
            "ttl": self.ttl,
            "negative_ttl": self.ttl,
            "protection": {"max_stale": self.max_stale},
            "tiers": [
                {"kind": "memory", "admission": "always"},
                {
                    "kind": "redis",
                    "url": redis_url,
                    "timeout": self.redis_timeout,
                    "breaker": {"cool_down": self.cool_down},
                },
            ],
            "bus": {
                "kind": "redis",
                "url": bus_url,
                "health_check_interval": self.bus_health_check,
                "timeout": self.bus_timeout,
            },
            "source": {"kind": "history"},
        }


@dataclass
class Outcome:
    """What one schedule gave."""

    schedule: Schedule
    result: CheckResult
    #: Reads checked against the fault bound rather than the bus delay.
    widened_reads: int = 0
    #: The chains counted a failure nobody injected (a timeout on a busy machine, say).
    troubled: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    #: The failure counters of ``stats()`` that grew during the schedule, summed over workers.
    trouble: dict[str, int] = field(default_factory=dict)
    #: How often the chains went through each path (``_PATH_EVENTS``), summed over workers.
    paths: dict[str, int] = field(default_factory=dict)

    @property
    def violations(self) -> list[Violation]:
        """The reads no order of the writes explains."""
        return self.result.violations


class _WorkerHandle:
    def __init__(self, process: BaseProcess, conn: Connection, proxy: FaultProxy) -> None:
        self.process = process
        self.conn = conn
        self.proxy = proxy

    def ask(self, command: str, payload: Any = None, timeout: float = 60.0) -> Any:
        self.conn.send((command, payload))
        return self.receive(timeout)

    def receive(self, timeout: float = 60.0) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"worker {self.process.name} did not answer in {timeout}s")
        try:
            answer = self.conn.recv()
        except EOFError:
            # The worker's end of the pipe closed: it died without sending its traceback (a
            # kill from outside, a crash in C). Say which worker and how it ended, not just EOF.
            self.process.join(timeout=5.0)
            raise RuntimeError(
                f"worker {self.process.name} closed its pipe without answering "
                f"(exit code {self.process.exitcode})"
            ) from None
        if isinstance(answer, BaseException):
            raise answer
        return answer


class HistoryRig:
    """Servers and worker processes shared by every schedule of a run."""

    def __init__(self, config: RunConfig | None = None) -> None:
        self.config = config or RunConfig()
        self.namespace = f"hc-{uuid.uuid4().hex[:8]}"
        self.redis = RedisServer()
        self.store_server = StoreServer()
        self.workers: list[_WorkerHandle] = []
        self._store: StoreClient | None = None
        self._runs = 0

    # -- life cycle

    def start(self) -> HistoryRig:
        """Start Redis, the store, the proxies and the workers; wait until the bus works."""
        try:
            self.redis.start()
            self.store_server.start()
            self._store = self.store_server.client()
            context = get_context("spawn")
            for index in range(self.config.workers):
                proxy = FaultProxy(self.redis.host, self.redis.port)
                config = self.config.chain_config(
                    self.namespace, self.redis.url, proxy.url("redis")
                )
                parent, child = context.Pipe()
                process = context.Process(
                    target=worker_main,
                    args=(
                        child,
                        index,
                        self.store_server.address,
                        self.store_server.authkey,
                        config,
                    ),
                    name=f"history-worker-{index}",
                    daemon=True,
                )
                process.start()
                child.close()
                self.workers.append(_WorkerHandle(process, parent, proxy))
            for worker in self.workers:
                if worker.receive(timeout=120) != "ready":
                    raise RuntimeError(f"{worker.process.name} did not start")
            self._wait_for_bus()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the workers, the proxies, the store and Redis."""
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.conn.send(("close", None))
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.proxy.close()
        self.workers = []
        with contextlib.suppress(Exception):
            self.store_server.close()
        self.redis.close()

    def __enter__(self) -> HistoryRig:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def store(self) -> StoreClient:
        """The driver's client of the store."""
        assert self._store is not None, "the rig is not started"
        return self._store

    # -- one schedule

    def run(self, original: Schedule) -> Outcome:
        """Play a schedule, read every key once more from each of its processes, check."""
        self._runs += 1
        schedule = original.tagged(f"r{self._runs}:")
        involved = [self.workers[index] for index in schedule.processes]
        before = [_counters(worker.ask("stats")) for worker in involved]
        records = self._setup(schedule)
        t0 = time.monotonic() + 0.02
        windows: list[tuple[float, float]] = []
        injectors = [
            threading.Thread(target=self._inject, args=(fault, t0, windows), daemon=True)
            for fault in schedule.faults
        ]
        for thread in injectors:
            thread.start()
        records += self._play(schedule, schedule.ops, t0)
        for thread in injectors:
            thread.join()
        if schedule.faults:
            self._recover()
        # Every write is over. Once probes published after them have reached every process, so
        # has every invalidation the writes announced (one channel, delivered in order, handled
        # one at a time): from then on no process may lag any of them.
        quiet = time.monotonic()
        self._wait_for_bus()
        heard = time.monotonic()
        records += self._play(schedule, _final_reads(schedule), heard)
        after = [_counters(worker.ask("stats")) for worker in involved]
        # A failure nobody injected (a timeout on a busy machine): the whole schedule gets
        # the contract's weaker bound, and the run says how often that happened.
        grown = _increase(before, after)
        trouble = {name: n for name, n in grown.items() if name not in _PATH_EVENTS}
        paths = {name: n for name, n in grown.items() if name in _PATH_EVENTS}
        troubled = bool(trouble) and not schedule.faults
        if troubled:
            windows.append((t0, math.inf))
        history = self._history(schedule, records)
        near_fault = self._near_fault(windows)
        result = check(history, self._bound(near_fault, quiet, heard))
        widened = sum(1 for read in history.reads if near_fault(read))
        self.store.forget(schedule.keys)
        return Outcome(original, result, widened, troubled, records, trouble, paths)

    def _setup(self, schedule: Schedule) -> list[dict[str, Any]]:
        records = []
        for key, value in schedule.initial.items():
            if value is None:
                continue  # every key starts absent in the history
            start = time.monotonic()
            self.store.store(key, value, value)
            end = time.monotonic()
            records.append(asdict(Record(value, "driver", "write", start, end)))
        return records

    def _play(self, schedule: Schedule, ops: list[Op], t0: float) -> list[dict[str, Any]]:
        by_process: dict[int, list[dict[str, Any]]] = {}
        for op in ops:
            by_process.setdefault(op.process, []).append(asdict(op))
        for index, mine in by_process.items():
            self.workers[index].conn.send(("run", (mine, t0)))
        records: list[dict[str, Any]] = []
        for index in by_process:
            records += self.workers[index].receive()
        return records

    def _inject(self, fault: Fault, t0: float, windows: list[tuple[float, float]]) -> None:
        pause = t0 + fault.at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        start = time.monotonic()
        with self._fault(fault):
            time.sleep(fault.duration)
        end = time.monotonic()
        windows.append((start, end + self.config.recovery))

    @contextlib.contextmanager
    def _fault(self, fault: Fault) -> Iterator[None]:
        if fault.kind == "sigstop":
            pid = self.redis.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                yield
            finally:
                os.kill(pid, signal.SIGCONT)
        elif fault.kind == "kill":
            self.redis.kill()
            try:
                yield
            finally:
                self.redis.start()  # same port, no data: as after a crash
        elif fault.kind == "bus-cut":
            assert fault.process is not None
            proxy = self.workers[fault.process].proxy
            proxy.cut()
            try:
                yield
            finally:
                proxy.restore()
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _recover(self, timeout: float = 30.0) -> None:
        """After a fault: wait until every chain uses its bus again and every breaker (the
        tiers', the publish's) is closed, so that the next schedule starts on a healthy system.

        A breaker closes only when a call succeeds after its cool-down (the bus's publish
        breaker has its own, 1 s by default, longer than the Redis tier's): a chain whose
        breaker is half-open gets a probe (an invalidation, a Redis call and a publish). Left
        half-open, its first call in a later schedule would be the probe and the calls beside
        it refused, counted as a failure nobody injected."""
        deadline = time.monotonic() + timeout
        while True:
            unready = {
                index: states
                for index, worker in enumerate(self.workers)
                if (states := _unready(worker.ask("stats")))
            }
            if not unready:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not recover within {timeout}s: {unready}")
            for index, states in unready.items():
                # Only a half-open breaker lets a call through; an open one is waited out.
                if "half-open" in states.values() and "open" not in states.values():
                    self.workers[index].ask("probe", f"recover:{uuid.uuid4().hex}")
            time.sleep(0.05)
        self._wait_for_bus()

    def _wait_for_bus(self, timeout: float = 30.0) -> None:
        """Two probes (from worker 0, then 1) must reach every other worker: then every
        message published before them has reached every worker too."""
        deadline = time.monotonic() + timeout
        for sender in range(min(2, len(self.workers))):
            while not self._probe(sender):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the bus did not deliver within {timeout}s (probes from worker "
                        f"{sender}); the workers' bus counters: {self._bus_counters()}"
                    )

    def _bus_counters(self) -> list[dict[str, Any]]:
        """Each worker's bus state and counters, for a failure's message."""
        names = ("bus", "bus_sent", "bus_received", "bus_gaps", *_TROUBLE_EVENTS)
        return [
            {name: stats.get(name) for name in names}
            for stats in (worker.ask("stats") for worker in self.workers)
        ]

    def _probe(self, sender: int) -> bool:
        """True if an invalidation by worker ``sender`` reached every other within a second."""
        others = [worker for index, worker in enumerate(self.workers) if index != sender]
        before = [worker.ask("stats")["bus_received"] for worker in others]
        self.workers[sender].ask("probe", f"probe:{uuid.uuid4().hex}")
        return eventually(
            lambda: all(
                worker.ask("stats")["bus_received"] > seen
                for worker, seen in zip(others, before, strict=True)
            ),
            within=1.0,
        )

    def _history(self, schedule: Schedule, records: list[dict[str, Any]]) -> History:
        history = History()
        intervals = {record["op"]: record for record in records}
        for key, entries in self.store.log(schedule.keys).items():
            for op_id, value in entries:
                record = intervals.get(op_id)
                if record is None:  # cannot happen; if it does, any instant explains it
                    start, end, process = -math.inf, math.inf, "?"
                else:
                    start, end, process = record["start"], record["end"], record["process"]
                history.write(Write(key, value, start, end, process, op_id))
        for record in records:
            for key, value in record["reads"].items():
                history.read(
                    Read(
                        key, value, record["start"], record["end"], record["process"], record["op"]
                    )
                )
        return history

    def _near_fault(self, windows: list[tuple[float, float]]) -> Callable[[Read], bool]:
        """Whether a read's window, at the fault bound, meets a fault's effects."""
        widened = self.config.fault_bound

        def near(read: Read) -> bool:
            return any(start <= read.end and read.start - widened <= end for start, end in windows)

        return near

    def _bound(
        self, near_fault: Callable[[Read], bool], quiet: float, heard: float
    ) -> Callable[[Read, Write], float]:
        """The contract's bound for a read lagging a write: none in the writer's own process
        (``set``/``invalidate*`` change its memory before they return), the bus delay in
        another until the bus is known to have delivered (``heard``, for writes done by
        ``quiet``), a copy's hard expiry near a fault."""
        config = self.config

        def bound(read: Read, write: Write) -> float:
            if near_fault(read):
                return config.fault_bound
            if write.process == read.process:
                return 0.0
            if write.end <= quiet and read.start >= heard:
                return 0.0
            return config.bus_delay

        return bound


def _final_reads(schedule: Schedule) -> list[Op]:
    ops = []
    for process in schedule.processes:
        prefix = f"{schedule.index}.final.p{process}"
        ops.append(Op(f"{prefix}.many", process, 0.0, "get_many", list(schedule.keys)))
        for number, key in enumerate(schedule.keys):
            ops.append(Op(f"{prefix}.{number}", process, 0.0, "get", [key]))
    return ops


def _counters(stats: dict[str, Any]) -> dict[str, int]:
    """The failures a chain has counted so far, and the paths it went through, by counter."""
    counts = {event: int(stats[event]) for event in (*_TROUBLE_EVENTS, *_PATH_EVENTS)}
    for tier in stats["tiers"]:
        counts[f"{tier['name']}.errors"] = int(tier["errors"])
        counts[f"{tier['name']}.skips"] = int(tier["skips"])
    return counts


def _unready(stats: dict[str, Any]) -> dict[str, str]:
    """What of a chain has not recovered from a fault: its bus if not connected, each breaker
    (the publish's, the tiers') not closed; by name, with its state."""
    states = {"bus": stats["bus"], "bus_publish_breaker": stats["bus_publish_breaker"]}
    for tier in stats["tiers"]:
        states[f"{tier['name']}.breaker"] = tier.get("breaker")
    healthy = ("connected", "closed", None)
    return {name: state for name, state in states.items() if state not in healthy}


def _increase(before: list[dict[str, int]], after: list[dict[str, int]]) -> dict[str, int]:
    """Counters that grew, summed over the workers."""
    grown: dict[str, int] = {}
    for old, new in zip(before, after, strict=True):
        for name, value in new.items():
            if value > old.get(name, 0):
                grown[name] = grown.get(name, 0) + value - old.get(name, 0)
    return grown


@dataclass
class Summary:
    """A run's totals."""

    schedules: int = 0
    reads: int = 0
    widened_reads: int = 0
    troubled: int = 0
    violations: int = 0
    failing: list[Outcome] = field(default_factory=list)
    #: Paths the chains went through, summed over the run.
    paths: dict[str, int] = field(default_factory=dict)
    #: Failure counters that grew, summed over the run (injected faults included).
    trouble: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        """Count one schedule's outcome."""
        self.schedules += 1
        self.reads += outcome.result.reads_checked
        self.widened_reads += outcome.widened_reads
        self.troubled += int(outcome.troubled)
        for totals, grown in ((self.paths, outcome.paths), (self.trouble, outcome.trouble)):
            for name, count in grown.items():
                totals[name] = totals.get(name, 0) + count
        if outcome.violations:
            self.violations += len(outcome.violations)
            self.failing.append(outcome)


def run_schedules(
    rig: HistoryRig,
    schedules: Iterable[Schedule],
    on_outcome: Callable[[Outcome, Summary], None] | None = None,
) -> Summary:
    """Run every schedule on ``rig``; the totals (and the failing outcomes)."""
    summary = Summary()
    for schedule in schedules:
        outcome = rig.run(schedule)
        summary.add(outcome)
        if on_outcome is not None:
            on_outcome(outcome, summary)
    return summary


def save_failures(path: str | Path, summary: Summary, config: RunConfig) -> None:
    """Write the failing schedules, their violations and their records to ``path`` (JSON),
    which ``benchmarks/check_history.py --replay`` and the tests read back."""
    save(
        path,
        [outcome.schedule for outcome in summary.failing],
        {
            "config": asdict(config),
            "violations": [
                [violation.to_json() for violation in outcome.violations]
                for outcome in summary.failing
            ],
            "records": [outcome.records for outcome in summary.failing],
        },
    )
