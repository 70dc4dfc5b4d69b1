"""The stream follower never moves its checkpoint past records whose invalidation did not reach
every shared tier and the bus: it retries with backoff, counts the errors, and a run stopped
while failing exits non-zero. Real parts: moto's stream, a private redis-server, the TCP
fault proxy between the follower and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from tiered_cache_dynamodb import create_table
from tiered_cache_dynamodb.cli import add_follow_stream_parser, run_follow_stream
from tiered_cache_dynamodb.streams import MemoryCheckpointStore, StreamFollower, StreamSettings
from tiered_cache_dynamodb.testing import MotoDynamoDB

from tiered_cache import InvalidationIncomplete, TieredCache, load_settings
from tiered_cache.testing.servers import FaultProxy, RedisServer

WAIT = 30.0  # safety net only: the waits below end on an event


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.host, redis_server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def table(admin_client: Any) -> str:
    name = f"sf-{uuid.uuid4().hex[:16]}"
    create_table(admin_client, name, "id", stream=True)
    return name


@dataclass
class World:
    """moto with a stream table, Redis behind the fault proxy, and a direct Redis client."""

    moto: MotoDynamoDB
    admin_client: Any
    table: str
    proxy: FaultProxy
    raw: redis.Redis


@pytest.fixture
def world(
    moto_server: MotoDynamoDB,
    admin_client: Any,
    table: str,
    proxy: FaultProxy,
    redis_server: RedisServer,
) -> Iterator[World]:
    raw = redis.Redis.from_url(redis_server.url)  # straight to Redis, not through the proxy
    yield World(moto_server, admin_client, table, proxy, raw)
    raw.close()


def _config(world: World, path: Path, *, tier: str = "") -> Path:
    namespace = uuid.uuid4().hex
    source = world.moto.source_toml(world.table, "id", key_template="tweet:{id}")
    path.write_text(
        f"""
[tiered_cache]
namespace = "{namespace}"

[[tiered_cache.tiers]]
kind = "redis"
url = "{world.proxy.url()}"
timeout = "1s"
{tier}

{source}
[tiered_cache_stream]
checkpoint = "{path.with_suffix(".checkpoint.json")}"
poll_interval = "20ms"
backoff_base = "20ms"
backoff_max = "100ms"
"""
    )
    return path


def _stale_entry_in_redis(world: World, config: Path) -> str:
    """A reader caches v=old in Redis; then the table is written directly (v=new)."""
    admin_client, table, raw = world.admin_client, world.table, world.raw
    admin_client.put_item(TableName=table, Item={"id": {"S": "1"}, "v": {"S": "old"}})
    settings = load_settings(config)
    with TieredCache.from_settings(settings) as reader:
        assert reader.get("tweet:1")["v"] == "old"
        redis_key = f"{reader.namespace}:tweet:1"
    assert raw.exists(redis_key) == 1
    admin_client.put_item(TableName=table, Item={"id": {"S": "1"}, "v": {"S": "new"}})
    return redis_key


def test_follow_stream_does_not_checkpoint_past_a_record_it_could_not_invalidate(
    world: World, tmp_path: Path
) -> None:
    proxy, raw = world.proxy, world.raw
    config = _config(world, tmp_path / "f.toml")
    checkpoint = config.with_suffix(".checkpoint.json")
    redis_key = _stale_entry_in_redis(world, config)

    proxy.cut()  # the follower cannot reach Redis (the server itself keeps the stale entry)
    command = [
        sys.executable,
        "-m",
        "tiered_cache_dynamodb.cli",
        "--config",
        str(config),
        "--max-records",
        "1",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    retried = threading.Event()
    errors: list[str] = []

    def watch_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            errors.append(line)
            if "retrying" in line:
                retried.set()

    outputs: list[str] = []

    def drain_stdout() -> None:
        assert process.stdout is not None
        outputs.extend(process.stdout)

    # One reader per pipe: communicate() would race the watcher for stderr's last lines.
    watcher = threading.Thread(target=watch_stderr, daemon=True)
    drainer = threading.Thread(target=drain_stdout, daemon=True)
    watcher.start()
    drainer.start()
    try:
        # Today's bug: the process exited at once, 0, "errors": 0, position saved.
        ended_by_itself = False
        deadline = time.monotonic() + WAIT
        while not retried.wait(0.05):
            if process.poll() is not None:
                ended_by_itself = True
                break
            assert time.monotonic() < deadline, f"no retry logged: {errors}"
        assert not ended_by_itself, f"follow-stream ended although Redis is unreachable: {errors}"
        # It retries with backoff, and the record stays before the checkpoint.
        assert not checkpoint.exists() or not json.loads(checkpoint.read_text())["shards"]
        process.terminate()  # "asked to stop" while failing
        process.wait(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    watcher.join(WAIT)
    drainer.join(WAIT)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    out = "".join(outputs)
    assert process.returncode == 1, "".join(errors)
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["errors"] >= 1
    assert stats["failing"] >= 1
    assert stats["records"] == 0
    assert "stopped while failing" in "".join(errors)
    assert not checkpoint.exists() or not json.loads(checkpoint.read_text())["shards"]
    assert raw.exists(redis_key) == 1  # still stale: nothing claimed otherwise

    # Redis reachable again: the next run reads the same record and invalidates it.
    proxy.restore()
    parser = add_follow_stream_parser_for_tests()
    args = parser.parse_args(["follow-stream", "--config", str(config), "--max-records", "1"])
    assert run_follow_stream(args) == 0
    assert raw.exists(redis_key) == 0
    assert json.loads(checkpoint.read_text())["shards"]
    with TieredCache.from_settings(load_settings(config)) as reader:
        assert reader.get("tweet:1")["v"] == "new"


def add_follow_stream_parser_for_tests() -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="tiered-cache")
    add_follow_stream_parser(parser.add_subparsers(dest="command"))
    return parser


def test_the_follower_retries_with_backoff_and_gives_up_after_max_failures(
    world: World, tmp_path: Path
) -> None:
    proxy, raw = world.proxy, world.raw
    # The breaker would open after 5 failures and skip Redis for its (real-time) cool-down
    # after the restore; this test drives the follower with an instant sleep.
    config = _config(world, tmp_path / "g.toml", tier="breaker = { failure_threshold = 50 }")
    redis_key = _stale_entry_in_redis(world, config)
    proxy.cut()
    waits: list[float] = []
    store = MemoryCheckpointStore()
    settings = load_settings(config)
    with TieredCache.from_settings(settings) as cache:
        follower = StreamFollower(
            cache,
            StreamSettings(backoff_base="100ms", backoff_max="400ms"),
            source=settings.source,  # type: ignore[arg-type]
            checkpoints=store,
            sleep=waits.append,
        )
        try:
            with pytest.raises(InvalidationIncomplete, match="redis"):
                follower.run_once()
            assert follower.run_forever(max_records=1, max_failures=4) is False
            stats = follower.stats()
            assert (stats["records"], stats["invalidations"]) == (0, 0)
            assert (stats["errors"], stats["failing"]) == (4, 4)
            # Backoff between the attempts: jittered in [ceiling/2, ceiling], the ceiling
            # doubling from 100 ms up to 400 ms; none after the last (it gives up).
            assert len(waits) == 3
            for wait, ceiling in zip(waits, (0.1, 0.2, 0.4), strict=True):
                assert ceiling / 2 <= wait <= ceiling
            saved = store.load()
            assert saved is None or not saved.shards
            proxy.restore()
            assert follower.run_forever(max_records=1, max_failures=4) is True
            assert follower.stats()["failing"] == 0
            assert follower.stats()["records"] == 2  # the insert and the direct write
        finally:
            follower.close()
    assert raw.exists(redis_key) == 0
    saved = store.load()
    assert saved is not None and saved.shards


def test_a_strict_invalidation_names_what_it_did_not_reach(
    proxy: FaultProxy, redis_server: RedisServer
) -> None:
    settings = load_settings(
        namespace=uuid.uuid4().hex,
        tiers=[{"kind": "memory"}, {"kind": "redis", "url": proxy.url(), "timeout": "200ms"}],
    )
    with TieredCache.from_settings(settings) as cache:
        cache.invalidate_many(["k"], strict=True)  # all reachable: no error
        proxy.cut()
        cache.invalidate_many(["k"])  # not strict: logged and counted only
        with pytest.raises(InvalidationIncomplete, match=r"tier 'redis'.*invalidation bus"):
            cache.invalidate_many(["k"], strict=True)
        with pytest.raises(InvalidationIncomplete, match="tier 'redis'"):
            cache.clear(strict=True)
