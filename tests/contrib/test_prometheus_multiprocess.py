"""prometheus_client's multiprocess mode: the figures of several worker processes, summed.

The workers run in a fresh interpreter with ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus_client
chooses its mode when first imported): tests/contrib/prometheus_workers.py. This process only
reads the shared directory, as a gunicorn worker's ``/metrics`` does: a registry with a
``MultiProcessCollector``, and ``generate_latest``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from tiered_cache import TieredCache
from tiered_cache.contrib.prometheus import TieredCacheCollector, register
from tiered_cache.memory import MemoryTier

WORKERS = Path(__file__).with_name("prometheus_workers.py")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: What the parent and its three workers did between them (see prometheus_workers.py).
SUMMED = {
    ("tier_hits_total", "memory"): 3 + 2 + 4 + 6,
    ("tier_misses_total", "memory"): 2 + 1 + 2 + 3,
    ("tier_fills_total", "memory"): 2 + 1 + 2 + 3,
    # Redis: the parent's two failures opened its breaker; every later call was skipped, a
    # read and a fill per miss. The workers inherited the open breaker: opened once in all.
    ("tier_errors_total", "redis"): 2,
    ("tier_skips_total", "redis"): 2 + 2 * (1 + 2 + 3),
    ("tier_breaker_opened_total", "redis"): 1,
    ("loads_total", None): 8,
    ("keys_loaded_total", None): 8,
    ("source_reads_saved_total", None): 15,
    # The parent's two loads took 3 ms each, the workers' six 200 ms (fake clock).
    ("load_duration_seconds_count", None): 8,
}


def run_workers(directory: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    return subprocess.Popen(
        [sys.executable, str(WORKERS), mode],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def scrape(directory: Path) -> tuple[str, Samples]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, tier: str | None = None, **labels: str) -> float:
    wanted = {"namespace": "tweets", **labels}
    if tier is not None:
        wanted["tier"] = tier
    return samples.get((f"tiered_cache_{name}", frozenset(wanted.items())), float("nan"))


def summed(samples: Samples) -> dict[tuple[str, str | None], float]:
    return {(name, tier): value(samples, name, tier) for name, tier in SUMMED}


def test_the_counts_of_a_parent_and_its_forked_workers_are_summed_once_each(
    tmp_path: Path,
) -> None:
    """Each worker's figures reach the shared directory when it exits; the parent's counts,
    which every forked worker's chain also holds, are counted once (the parent's files), not
    once per worker. Before: the collector was never read by the scrape, which showed no
    tiered_cache series at all."""
    workers = run_workers(tmp_path, "exit")
    out, _ = workers.communicate(timeout=120)
    assert workers.returncode == 0
    pids: dict[str, Any] = json.loads(out)

    text, samples = scrape(tmp_path)

    assert summed(samples) == SUMMED
    assert "# TYPE tiered_cache_tier_hits_total counter" in text
    # The histogram's buckets, summed: 2 loads of 3 ms, 6 of 200 ms.
    assert value(samples, "load_duration_seconds_bucket", le="0.0025") == 0
    assert value(samples, "load_duration_seconds_bucket", le="0.005") == 2
    assert value(samples, "load_duration_seconds_bucket", le="0.1") == 2
    assert value(samples, "load_duration_seconds_bucket", le="0.25") == 8
    assert value(samples, "load_duration_seconds_bucket", le="+Inf") == 8
    assert value(samples, "load_duration_seconds_sum") == pytest.approx(2 * 0.003 + 6 * 0.2)
    # Gauges: entries add up over the processes (the parent's 2 are in each worker's memory
    # too: each holds them); a breaker state is 1 while any process's breaker is in it.
    assert value(samples, "tier_entries", "memory") == 2 + (2 + 1) + (2 + 2) + (2 + 3)
    assert value(samples, "tier_breaker_state", "redis", state="open") == 1
    assert value(samples, "tier_breaker_state", "redis", state="closed") == 0
    # gunicorn's child_exit hook: a dead worker's live gauges go; its counts stay.
    for pid in pids["workers"]:
        mark_process_dead(pid, str(tmp_path))
    _, samples = scrape(tmp_path)
    assert value(samples, "tier_entries", "memory") == 2
    assert summed(samples) == SUMMED


def scrape_while_written(directory: Path) -> Samples:
    """A scrape while workers are still starting: prometheus_client creates a process's value
    file empty and sizes it a moment later, and MultiProcessCollector fails on a file read in
    between (``struct.error``; seen once in 2,082-test runs under load). That is the
    library's race, not the mirror's: such a poll reads as "nothing yet"."""
    try:
        return scrape(directory)[1]
    except struct.error:
        return {}


def test_live_workers_figures_reach_the_scrape_without_exiting(tmp_path: Path) -> None:
    """A gunicorn worker serves for days: its figures are copied every ``refresh_every``
    seconds by the mirror's thread (these workers never exit through ``sys.exit`` while read)."""
    workers = run_workers(tmp_path, "live")
    try:
        assert workers.stdout is not None
        json.loads(workers.stdout.readline())
        deadline = time.monotonic() + 60
        seen = summed(scrape_while_written(tmp_path))
        while seen != SUMMED and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = summed(scrape_while_written(tmp_path))
        assert seen == SUMMED
    finally:
        workers.communicate("go\n", timeout=60)
    assert workers.returncode == 0


def test_a_chain_registered_again_in_one_process_is_counted_once(tmp_path: Path) -> None:
    """The same reads as the parent and its workers, in one process that closes its mirror
    and registers the chain again: its counts before the second register() are in the files
    already, and are not added again."""
    workers = run_workers(tmp_path, "again")
    out, _ = workers.communicate(timeout=120)
    assert workers.returncode == 0
    assert "register every chain of a process in one call" in json.loads(out)["refused"]
    _, samples = scrape(tmp_path)
    assert summed(samples) == SUMMED
    assert value(samples, "tier_entries", "memory") == 2 + 6


def test_a_variable_set_after_prometheus_client_was_imported_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """prometheus_client was imported here without the variable: its metrics stay in memory,
    and a MultiProcessCollector scrape would show none of them. register() said nothing."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR is set, but prometheus_client"):
        register(TieredCache([MemoryTier()], namespace="tweets"), registry=registry)
    assert list(registry.collect()) == []


def test_without_the_variable_a_collector_is_registered() -> None:
    registry = CollectorRegistry()
    made = register(TieredCache([MemoryTier()], namespace="tweets"), registry=registry)
    assert isinstance(made, TieredCacheCollector)
