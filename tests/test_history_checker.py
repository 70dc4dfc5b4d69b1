"""The history checker: unit tests that it tells legal histories from each kind of violation,
and a short run over real processes, a real Redis and faults (the long run is
benchmarks/check_history.py)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import pytest

from tiered_cache.testing.history import History, Read, Write, check
from tiered_cache.testing.history_run import HistoryRig, RunConfig, _WorkerHandle, run_schedules
from tiered_cache.testing.history_schedule import (
    Fault,
    Op,
    Schedule,
    ScheduleShape,
    generate,
    load,
    save,
)
from tiered_cache.testing.servers import redis_server_binary

FIXTURES = Path(__file__).with_name("fixtures") / "history"


def history(*writes: tuple[str, float, float], initial: str | None = None) -> History:
    """Writes of key "k" in the source's order: (value, start, end)."""
    result = History()
    result.initial("k", initial)
    for number, (value, start, end) in enumerate(writes):
        result.write(Write("k", value, start, end, "w", f"w{number}"))
    return result


def read(h: History, value: str | None, start: float, end: float) -> History:
    h.read(Read("k", value, start, end, "r", "r0"))
    return h


# -- legal histories -------------------------------------------------------------------------


def test_reads_of_the_current_value_are_legal() -> None:
    h = history(("v1", 1.0, 1.1), ("v2", 2.0, 2.1), initial="v0")
    for value, start, end in [("v0", 0.0, 0.5), ("v1", 1.5, 1.6), ("v2", 3.0, 3.1)]:
        read(h, value, start, end)
    result = check(h, 0.0)
    assert result.ok
    assert result.reads_checked == 3


def test_a_read_overlapping_a_write_may_return_either_value() -> None:
    h = history(("v1", 1.0, 2.0), initial="v0")
    read(h, "v0", 1.5, 1.6)  # the write may not have taken effect yet
    read(h, "v1", 1.5, 1.6)  # or it may have
    read(h, "v1", 0.5, 1.0)  # a read that ends when the write starts may see it too
    assert check(h, 0.0).ok


def test_a_read_may_lag_the_source_by_the_bound_and_no_more() -> None:
    h = read(history(("v1", 1.0, 1.1), initial="v0"), "v0", 1.3, 1.4)
    assert check(h, 0.2).ok  # v0 was current at 1.1 at the latest, within [1.3 - 0.2, 1.4]
    result = check(h, 0.1)
    assert [v.kind for v in result.violations] == ["stale"]


def test_none_is_a_version_like_any_other() -> None:
    h = history(("v1", 1.0, 1.1), (None, 2.0, 2.1))  # created, then removed
    read(h, None, 0.0, 0.1)  # absent before the first write
    read(h, None, 3.0, 3.1)  # absent again after the removal
    read(h, "v1", 1.5, 1.6)
    assert check(h, 0.0).ok
    read(h, None, 1.5, 1.6)  # absent while v1 was current: a cached "not found" too old
    assert [v.kind for v in check(h, 0.0).violations] == ["stale"]


def test_the_source_order_decides_when_write_intervals_overlap() -> None:
    # w0 took long (1-10), w1 was quick (2-3): the source applied w0 first, so w0's value was
    # replaced by 3.0 at the latest, although w0's call returned only at 10.
    h = history(("slow", 1.0, 10.0), ("quick", 2.0, 3.0), initial="v0")
    read(h, "quick", 5.0, 5.1)
    assert check(h, 0.0).ok
    read(h, "slow", 5.0, 5.1)
    assert [v.kind for v in check(h, 0.0).violations] == ["stale"]


def test_the_bound_may_differ_per_read_and_write() -> None:
    h = History()
    h.initial("k", "v0")
    h.write(Write("k", "v1", 1.0, 1.1, "p1", "w1"))
    h.read(Read("k", "v0", 1.3, 1.4, "p1", "own"))  # the writer's own process: no lag at all
    h.read(Read("k", "v0", 1.3, 1.4, "p2", "other"))  # another process: the bus delay
    h.read(Read("k", "v0", 5.0, 5.1, "p2", "near-a-fault"))

    def bound(read: Read, write: Write) -> float:
        if read.op == "near-a-fault":
            return 10.0
        return 0.0 if read.process == write.process else 0.5

    assert [v.read.op for v in check(h, bound).violations] == ["own"]


def test_a_read_lagging_a_later_write_of_its_own_process_is_stale() -> None:
    # v1 by p2, then v2 by p1: p1 reading v0 after its own write returned is stale even though
    # the first replacement (p2's) is still within the bus delay for p1.
    h = History()
    h.initial("k", "v0")
    h.write(Write("k", "v1", 1.0, 1.1, "p2", "w1"))
    h.write(Write("k", "v2", 1.2, 1.3, "p1", "w2"))
    h.read(Read("k", "v0", 1.35, 1.4, "p1", "r"))
    result = check(h, lambda read, write: 0.0 if read.process == write.process else 0.5)
    (violation,) = result.violations
    assert "version 2" in violation.detail


# -- each kind of violation ------------------------------------------------------------------


def test_a_value_older_than_the_bound_is_stale() -> None:
    h = read(history(("v1", 1.0, 1.1), ("v2", 2.0, 2.1), initial="v0"), "v1", 3.0, 3.1)
    (violation,) = check(h, 0.5).violations
    assert violation.kind == "stale"
    assert "version 1" in violation.detail and "version 2" in violation.detail


def test_a_value_the_source_never_held_is_caught() -> None:
    h = read(history(("v1", 1.0, 1.1), initial="v0"), "made-up", 1.5, 1.6)
    (violation,) = check(h, math.inf).violations  # no bound excuses it
    assert violation.kind == "never-held"


def test_a_value_written_only_after_the_read_returned_is_caught() -> None:
    h = read(history(("v1", 2.0, 2.1), initial="v0"), "v1", 1.0, 1.5)
    (violation,) = check(h, math.inf).violations
    assert violation.kind == "not-yet-written"


def test_a_violation_says_what_was_read_and_what_replaced_it() -> None:
    h = read(history(("v1", 1.0, 1.1), initial="v0"), "v0", 3.0, 3.1)
    (violation,) = check(h, 0.5).violations
    document = violation.to_json()
    assert document["kind"] == "stale"
    assert document["read"]["value"] == "v0"
    assert "'v1'" in document["detail"]
    json.dumps(document)


# -- schedules -------------------------------------------------------------------------------


def test_a_schedule_is_a_function_of_seed_and_index() -> None:
    shape = ScheduleShape(fault_rate=0.5)
    assert generate(7, 3, shape) == generate(7, 3, shape)
    assert generate(7, 3, shape) != generate(7, 4, shape)
    schedules = [generate(7, index, shape) for index in range(200)]
    kinds = {op.kind for s in schedules for op in s.ops}
    assert kinds == {
        "get", "get_many", "set", "write", "invalidate", "invalidate_many",
        "invalidate_prefix", "clear",
    }  # fmt: skip
    assert {f.kind for s in schedules for f in s.faults} == {"sigstop", "kill", "bus-cut"}
    assert {len(s.processes) for s in schedules} == {2, 3, 4}
    assert any(op.delay for s in schedules for op in s.ops)


def test_a_schedule_file_replays_the_same_schedules(tmp_path: Path) -> None:
    schedules = [generate(1, index, ScheduleShape(fault_rate=1.0)) for index in range(5)]
    save(tmp_path / "f.json", schedules, {"note": "test"})
    assert load(tmp_path / "f.json") == schedules


def test_a_tagged_schedule_keeps_its_prefixes() -> None:
    schedule = generate(1, 0)
    tagged = schedule.tagged("r9:")
    assert all(key.startswith("r9:") for key in tagged.keys)
    for op in tagged.ops:
        if op.prefix is not None:
            assert any(key.startswith(op.prefix) for key in tagged.keys)


# -- real processes, a real Redis ------------------------------------------------------------

needs_redis = pytest.mark.skipif(redis_server_binary() is None, reason="no redis-server")


@pytest.fixture(scope="module")
def rig() -> Iterator[HistoryRig]:
    config = RunConfig(workers=3, shape=ScheduleShape(workers=3))
    with HistoryRig(config) as started:
        yield started


@needs_redis
def test_reads_under_every_fault_are_legal_when_nothing_is_written(rig: HistoryRig) -> None:
    """No write: every read must return the initial value, whatever faults happen; this keeps
    the rig itself honest (faults injected, processes recovered, reads recorded)."""
    keys = ["q:u0:k0", "q:u0:k1"]
    ops = [
        Op(f"q.{n}", n % 3, 0.02 * n, kind, keys[: 1 + n % 2], delay=0.05 if n % 2 else None)
        for n, kind in enumerate(["get", "get_many", "get", "get_many", "get", "get"])
    ]
    faults = [Fault("sigstop", 0.0, 0.2), Fault("kill", 0.0, 0.1), Fault("bus-cut", 0.0, 0.2, 1)]
    for number, fault in enumerate(faults):
        schedule = Schedule(
            number, 0, [0, 1, 2], keys, {keys[0]: "q0", keys[1]: None}, ops, [fault]
        )
        outcome = rig.run(schedule)
        assert outcome.result.ok, [v.detail for v in outcome.violations]
        assert outcome.result.reads_checked >= 10
        assert outcome.widened_reads > 0  # the fault widened the bound of the reads near it


@needs_redis
def test_a_schedule_with_a_fault_leaves_every_breaker_closed(rig: HistoryRig) -> None:
    """A publish during a bus cut opens that worker's publish breaker. Once the schedule is
    over every breaker must be closed: one still open, or half-open (its next call the probe,
    the calls beside it refused), would make the next schedule count skips nobody injected."""
    keys = ["b:u0:k0"]
    # Worker 2: the rig's own probes are sent by workers 0 and 1, which closes their breakers.
    ops = [Op(f"b.{n}", 2, 0.05 + 0.05 * n, "invalidate", keys) for n in range(3)]
    schedule = Schedule(
        0, 0, [0, 1, 2], keys, {keys[0]: "b0"}, ops, [Fault("bus-cut", 0.0, 0.3, 2)]
    )
    outcome = rig.run(schedule)
    assert outcome.trouble.get("bus_publish_errors", 0) >= 1  # the cut did reach a publish
    states = [worker.ask("stats") for worker in rig.workers]
    assert [stats["bus_publish_breaker"] for stats in states] == ["closed"] * len(rig.workers)
    assert [tier.get("breaker", "closed") for stats in states for tier in stats["tiers"]] == [
        "closed"
    ] * sum(len(stats["tiers"]) for stats in states)


@needs_redis
def test_the_same_race_with_invalidate_is_fenced(rig: HistoryRig) -> None:
    """A slow load racing a direct write and invalidate/invalidate_many (fenced today)."""
    for schedule in load(FIXTURES / "controls.json"):
        outcome = rig.run(schedule)
        assert outcome.result.ok, [v.detail for v in outcome.violations]


@needs_redis
def test_the_known_races_leave_no_stale_copy(rig: HistoryRig) -> None:
    """#16 defect 1 (a slow load racing invalidate_prefix or clear fills the old value) every
    time; defect 2 (concurrent sets leave a tier one version behind) in about 1 run of 3."""
    schedules = load(FIXTURES / "known-races.json")
    summary = run_schedules(rig, [schedules[0], schedules[1], *[schedules[2]] * 3])
    assert summary.violations == 0, [v.detail for o in summary.failing for v in o.violations]


@needs_redis
def test_a_read_after_an_invalidation_does_not_join_an_older_load(rig: HistoryRig) -> None:
    """docs/consistency.md: after invalidate() returns, this process's next read goes to Redis
    and the table; only callers that asked before the write may get the old value."""
    summary = run_schedules(rig, load(FIXTURES / "join-after-invalidation.json"))
    assert summary.violations == 0, [v.detail for o in summary.failing for v in o.violations]


@needs_redis
def test_a_short_random_run_finds_no_violation(rig: HistoryRig) -> None:
    shape = replace(rig.config.shape, fault_rate=0.1)
    schedules = [generate(16, index, shape) for index in range(20)]
    summary = run_schedules(rig, schedules)
    assert summary.schedules == 20
    assert summary.reads > 200
    assert summary.violations == 0, [v.detail for o in summary.failing for v in o.violations]


def test_a_worker_that_dies_silently_is_named_with_its_exit_code() -> None:
    context = get_context("spawn")
    parent, child = context.Pipe()
    # os._exit, not a function of this module: a spawned child must import its target, and
    # ``tests`` is importable only when pytest runs from the project root (python -m pytest).
    process = context.Process(target=os._exit, args=(7,), name="history-worker-9")
    process.start()
    child.close()
    handle = _WorkerHandle(process, parent, proxy=None)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError, match=r"history-worker-9 .*exit code 7"):
            handle.receive(timeout=30.0)
    finally:
        process.join(timeout=5.0)
        parent.close()
