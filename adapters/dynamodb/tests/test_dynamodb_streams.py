"""The DynamoDB Streams follower: against moto's server, and against a scripted stream where
moto cannot go (moto keeps one shard per table that never ends, never splits, never expires an
iterator and never trims).

Waits are on the follower's counters (``wait_for_records``), never on wall-clock time; their
timeouts are only a safety net for a broken follower.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from importlib import import_module
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.config import Config
from botocore.exceptions import ClientError
from tiered_cache_dynamodb import KeyCodec, create_table
from tiered_cache_dynamodb.cli import (
    FOLLOW_STREAM,
    add_follow_stream_parser,
    load_follow_stream_config,
    run_follow_stream,
)
from tiered_cache_dynamodb.errors import InvalidKeyError
from tiered_cache_dynamodb.streams import (
    SHARD_END,
    Checkpoint,
    CheckpointError,
    JSONFileCheckpointStore,
    MemoryCheckpointStore,
    StreamError,
    StreamFollower,
    StreamSettings,
    cache_key_of,
)
from tiered_cache_dynamodb.testing import MotoDynamoDB

from tiered_cache.chain import TieredCache
from tiered_cache.cli import Subcommand
from tiered_cache.errors import ConfigError
from tiered_cache.settings import CacheSettings
from tiered_cache.testing.clock import FakeClock, RecordingSleep

WAIT = 15.0  # safety net only: every wait returns as soon as the follower's counters move


class Recorder:
    """An :class:`Invalidator` that records what it is told."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.clears = 0
        self.fail_next = 0

    def invalidate_many(self, keys: list[str], *, strict: bool = False) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("the cache is down")
        self.batches.append(list(keys))

    def clear(self, *, strict: bool = False) -> None:
        self.clears += 1

    @property
    def keys(self) -> list[str]:
        return [key for batch in self.batches for key in batch]


@pytest.fixture
def stream_table(admin_client: Any) -> Callable[..., str]:
    """``stream_table(key=..., range_key=..., ...)``: a new table with a KEYS_ONLY stream."""

    def make(
        key: str = "id",
        key_type: str = "S",
        range_key: str | None = None,
        range_key_type: str = "S",
        stream: Any = True,
    ) -> str:
        name = f"s-{uuid.uuid4().hex[:16]}"
        create_table(
            admin_client,
            name,
            key,
            key_type,
            range_key,
            range_key_type=range_key_type,
            stream=stream,
        )
        return name

    return make


@pytest.fixture
def followers() -> Iterator[list[StreamFollower]]:
    """Followers to close after the test, whatever happens."""
    made: list[StreamFollower] = []
    yield made
    for follower in made:
        follower.close()


def put(client: Any, table: str, **item: Any) -> None:
    typed = {name: _typed(value) for name, value in item.items()}
    client.put_item(TableName=table, Item=typed)


def _typed(value: Any) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"B": value}
    if isinstance(value, int | Decimal):
        return {"N": str(value)}
    return {"S": str(value)}


def memory_chain(moto: MotoDynamoDB, table: str, **source: Any) -> TieredCache:
    """A chain of an always-admitting memory tier in front of the table."""
    settings = CacheSettings.model_validate(
        {
            "tiers": [{"kind": "memory", "admission": "always", "ttl": "1h"}],
            "source": moto.settings(table=table, **source),
        }
    )
    return TieredCache.from_settings(settings)


def streams_client(moto: MotoDynamoDB, attempts: int = 3) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts})
    return boto3.session.Session().client("dynamodbstreams", config=config, **moto.client_kwargs())


# -- a write that bypasses the cache reaches it ---------------------------------------------


def test_direct_writes_invalidate_the_chain(
    moto_server: MotoDynamoDB,
    admin_client: Any,
    stream_table: Callable[..., str],
    followers: list[StreamFollower],
    tmp_path: Path,
) -> None:
    table = stream_table()
    put(admin_client, table, id="a", v=1)
    with memory_chain(moto_server, table, key="id") as cache:
        assert cache.get("a") == {"id": "a", "v": 1}
        put(admin_client, table, id="a", v=2)
        # The chain serves its copy: nothing told it about the write.
        assert cache.get("a") == {"id": "a", "v": 1}

        settings = StreamSettings(checkpoint=tmp_path / "position.json", poll_interval=0.02)
        follower = StreamFollower(
            cache, settings, source=moto_server.settings(table=table, key="id")
        )
        followers.append(follower)
        follower.start()
        assert follower.wait_for_records(2, WAIT)  # INSERT v1, MODIFY v2
        assert cache.get("a") == {"id": "a", "v": 2}

        admin_client.update_item(
            TableName=table,
            Key={"id": {"S": "a"}},
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"N": "3"}},
        )
        assert follower.wait_for_records(3, WAIT)
        assert cache.get("a") == {"id": "a", "v": 3}

        admin_client.delete_item(TableName=table, Key={"id": {"S": "a"}})
        assert follower.wait_for_records(4, WAIT)
        assert cache.get("a") is None

        follower.stop()
        stats = follower.stats()
        assert stats["records"] == 4
        assert stats["invalidations"] == 3  # one per page; the first page held two records
        assert stats["errors"] == stats["skipped"] == stats["gaps"] == 0
        assert not stats["running"]
        saved = json.loads((tmp_path / "position.json").read_text())
        assert saved["stream_arn"] == stats["stream_arn"]
        assert len(saved["shards"]) == 1


def test_memory_and_redis_tiers_both_invalidated(
    moto_server: MotoDynamoDB,
    admin_client: Any,
    stream_table: Callable[..., str],
    followers: list[StreamFollower],
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from tiered_cache.testing.servers import RedisServer

    table = stream_table()
    put(admin_client, table, id="k", v="old")
    source = moto_server.settings(table=table, key="id")
    with RedisServer() as redis:
        settings = CacheSettings.model_validate(
            {
                "namespace": f"streams-{uuid.uuid4().hex[:8]}",
                "tiers": [
                    {"kind": "memory", "admission": "always", "ttl": "1h"},
                    {"kind": "redis", "url": redis.url, "ttl": "1h"},
                ],
                "source": source,
            }
        )
        with TieredCache.from_settings(settings) as reader:
            assert reader.get("k")["v"] == "old"
            put(admin_client, table, id="k", v="new")
            follower = StreamFollower(
                reader,
                StreamSettings(poll_interval=0.02),
                source=source,
            )
            followers.append(follower)
            follower.start()
            assert follower.wait_for_records(2, WAIT)
            memory, shared = reader.tiers
            assert not memory.get("k")
            assert not shared.get("k")
            assert reader.get("k")["v"] == "new"


# -- resuming --------------------------------------------------------------------------------


def test_resume_processes_only_new_records(
    moto_server: MotoDynamoDB,
    admin_client: Any,
    stream_table: Callable[..., str],
    followers: list[StreamFollower],
    tmp_path: Path,
) -> None:
    table = stream_table()
    source = moto_server.settings(table=table, key="id")
    settings = StreamSettings(checkpoint=tmp_path / "p.json", poll_interval=0.02)
    put(admin_client, table, id="a", v=1)
    put(admin_client, table, id="b", v=1)

    first = Recorder()
    follower = StreamFollower(first, settings, source=source)
    followers.append(follower)
    follower.start()
    assert follower.wait_for_records(2, WAIT)
    follower.close()
    assert sorted(first.keys) == ["a", "b"]

    # Written while no follower runs.
    put(admin_client, table, id="b", v=2)
    put(admin_client, table, id="c", v=1)
    admin_client.delete_item(TableName=table, Key={"id": {"S": "a"}})

    second = Recorder()
    resumed = StreamFollower(second, settings, source=source)
    followers.append(resumed)
    assert resumed.run_once() == 3
    assert resumed.run_once() == 0
    assert resumed.stats()["records"] == 3
    assert second.batches == [["b", "c", "a"]]
    assert second.clears == 0


def test_first_run_from_latest_skips_old_records(
    moto_server: MotoDynamoDB, admin_client: Any, stream_table: Callable[..., str]
) -> None:
    table = stream_table()
    put(admin_client, table, id="old", v=1)
    recorder = Recorder()
    follower = StreamFollower(
        recorder,
        StreamSettings(start_position="LATEST"),
        source=moto_server.settings(table=table, key="id"),
    )
    try:
        assert follower.run_once() == 0
        put(admin_client, table, id="new", v=1)
        assert follower.run_once() == 1
        assert recorder.keys == ["new"]
    finally:
        follower.close()


def test_failed_invalidation_is_retried_not_checkpointed(
    moto_server: MotoDynamoDB, admin_client: Any, stream_table: Callable[..., str]
) -> None:
    table = stream_table()
    store = MemoryCheckpointStore()
    recorder = Recorder()
    follower = StreamFollower(
        recorder, checkpoints=store, source=moto_server.settings(table=table, key="id")
    )
    try:
        put(admin_client, table, id="a", v=1)
        recorder.fail_next = 1
        with pytest.raises(ConnectionError):
            follower.run_once()
        assert store.load() is None  # nothing saved: the page was not applied
        assert follower.run_once() == 1  # the same record, read again
        assert recorder.keys == ["a"]
        saved = store.load()
        assert saved is not None
        assert list(saved.shards.values()) != [SHARD_END]
    finally:
        follower.close()


# -- key mapping -----------------------------------------------------------------------------


def test_key_template_with_hash_and_range(
    moto_server: MotoDynamoDB, admin_client: Any, stream_table: Callable[..., str]
) -> None:
    table = stream_table(key="user_id", range_key="tweet_id", range_key_type="N")
    source = moto_server.settings(
        table=table,
        key="user_id",
        range_key="tweet_id",
        range_key_type="N",
        key_template="tweets:{user_id}/{tweet_id}",
    )
    put(admin_client, table, user_id="u1", tweet_id=42, text="hi")
    put(admin_client, table, user_id="u2", tweet_id=Decimal("7.50"), text="yo")
    recorder = Recorder()
    follower = StreamFollower(recorder, source=source)
    try:
        assert follower.run_once() == 2
    finally:
        follower.close()
    # Numbers as DynamoDB spells them: 7.50 is stored as 7.5.
    assert recorder.keys == ["tweets:u1/42", "tweets:u2/7.5"]


def test_unmappable_key_is_logged_and_skipped(
    moto_server: MotoDynamoDB,
    admin_client: Any,
    stream_table: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = stream_table(key="user_id", range_key="tweet_id")
    source = moto_server.settings(
        table=table, key="user_id", range_key="tweet_id", key_template="{user_id}#{tweet_id}"
    )
    put(admin_client, table, user_id="u1", tweet_id="1")
    # "a#b" + "#" + "2" reads back as user "a", tweet "b#2": no cache key names this item.
    put(admin_client, table, user_id="a#b", tweet_id="2")
    put(admin_client, table, user_id="u3", tweet_id="3")
    recorder = Recorder()
    follower = StreamFollower(recorder, StreamSettings(poll_interval=0.02), source=source)
    try:
        with caplog.at_level(logging.WARNING, logger="tiered_cache_dynamodb.streams"):
            follower.start()
            assert follower.wait_for_records(3, WAIT)
            put(admin_client, table, user_id="u4", tweet_id="4")
            assert follower.wait_for_records(4, WAIT)  # still following
    finally:
        follower.close()
    assert recorder.keys == ["u1#1", "u3#3", "u4#4"]
    stats = follower.stats()
    assert stats["skipped"] == 1
    assert stats["errors"] == 0
    assert any("skipped" in record.getMessage() for record in caplog.records)


def test_cache_key_of_inverts_the_codec() -> None:
    plain = KeyCodec("id")
    assert cache_key_of(plain, {"id": {"S": "tweet:1"}}) == "tweet:1"
    numbered = KeyCodec("id", "N", template="t:{id}")
    assert cache_key_of(numbered, {"id": {"N": "42"}}) == "t:42"
    binary = KeyCodec("id", "B")
    assert (
        cache_key_of(binary, {"id": {"B": b"\x00\xff"}}) == base64.b64encode(b"\x00\xff").decode()
    )
    dotted = KeyCodec("a.b", template="x/{a.b}")
    assert cache_key_of(dotted, {"a.b": {"S": "v"}}) == "x/v"
    both = KeyCodec("u", "S", "t", "N", "{u}:{t}")
    for cache_key in ("u1:5", "with space:0.25"):
        assert cache_key_of(both, both.to_key(cache_key)) == cache_key

    with pytest.raises(InvalidKeyError):
        cache_key_of(plain, {"other": {"S": "x"}})  # the key attribute is absent
    with pytest.raises(InvalidKeyError):
        cache_key_of(plain, {"id": {"N": "1"}})  # another type than the table's
    with pytest.raises(InvalidKeyError):
        cache_key_of(KeyCodec("u", "S", "t", "S", "{u}#{t}"), {"u": {"S": "a#b"}, "t": {"S": "c"}})


# -- throttling and expired iterators (real requests, errors injected into botocore) ---------


class StreamErrors:
    """A ``before-send`` hook answering the next ``count`` GetRecords with error ``code``."""

    def __init__(self, client: Any, code: str, count: int) -> None:
        self.code = code
        self.count = count
        self.sent = 0
        client.meta.events.register("before-send.dynamodb-streams.GetRecords", self)

    def __call__(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        self.sent += 1
        if self.count <= 0:
            return None
        self.count -= 1
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{self.code}"}).encode()
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/x-amz-json-1.0"
        headers["Content-Length"] = str(len(body))
        return AWSResponse(request.url, 400, headers, _Body(body))


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._data


def test_throttling_backs_off_with_the_injected_sleep(
    moto_server: MotoDynamoDB, admin_client: Any, stream_table: Callable[..., str]
) -> None:
    table = stream_table()
    for index in range(3):
        put(admin_client, table, id=f"k{index}", v=index)
    client = streams_client(moto_server, attempts=1)  # our backoff, not botocore's
    errors = StreamErrors(client, "LimitExceededException", count=3)
    sleeps = RecordingSleep()
    recorder = Recorder()
    follower = StreamFollower(
        recorder,
        StreamSettings(backoff_base=0.5, backoff_max=1.5),
        source=moto_server.settings(table=table, key="id"),
        streams_client=client,
        sleep=sleeps,
    )
    try:
        follower.run_forever(max_records=3)
    finally:
        follower.close()
        client.close()
    assert follower.stats()["throttles"] == 3
    assert follower.stats()["errors"] == 0
    assert sorted(recorder.keys) == ["k0", "k1", "k2"]
    assert errors.sent == 4
    # Jittered in [ceiling / 2, ceiling]; the ceiling doubles up to backoff_max.
    first, second, third = sleeps.delays
    assert 0.25 <= first <= 0.5
    assert 0.5 <= second <= 1.0
    assert 0.75 <= third <= 1.5


def test_expired_iterator_resumes_after_the_last_record(
    moto_server: MotoDynamoDB, admin_client: Any, stream_table: Callable[..., str]
) -> None:
    table = stream_table()
    client = streams_client(moto_server, attempts=1)
    recorder = Recorder()
    follower = StreamFollower(
        recorder, source=moto_server.settings(table=table, key="id"), streams_client=client
    )
    try:
        put(admin_client, table, id="a", v=1)
        put(admin_client, table, id="b", v=1)
        assert follower.run_once() == 2
        put(admin_client, table, id="c", v=1)
        StreamErrors(client, "ExpiredIteratorException", count=1)
        assert follower.run_once() == 0  # the iterator expired; nothing lost
        assert follower.run_once() == 1
        assert follower.run_once() == 0
    finally:
        follower.close()
        client.close()
    assert recorder.keys == ["a", "b", "c"]  # each record once
    assert follower.stats()["expired_iterators"] == 1


def test_table_without_stream_fails_fast(
    moto_server: MotoDynamoDB, stream_table: Callable[..., str]
) -> None:
    table = stream_table(stream=False)
    follower = StreamFollower(Recorder(), source=moto_server.settings(table=table, key="id"))
    try:
        with pytest.raises(StreamError, match="no stream"):
            follower.connect()
    finally:
        follower.close()


# -- shards ending and splitting, trimmed positions (a scripted stream) ----------------------


def _record(seq: int, key: str, event: str = "MODIFY") -> dict[str, Any]:
    return {
        "eventName": event,
        "dynamodb": {"SequenceNumber": str(seq), "Keys": {"id": {"S": key}}},
    }


class ScriptedStream:
    """A DynamoDB Streams client over scripted shards: ``{shard: (parent, records, ended)}``.

    GetRecords returns up to ``page`` records; an ended shard's last page has no next iterator.
    DescribeStream returns ``per_page`` shards per call (with LastEvaluatedShardId).
    """

    def __init__(self, page: int = 2, per_page: int = 1) -> None:
        self.shards: dict[str, tuple[str | None, list[dict[str, Any]], bool]] = {}
        self.trimmed_before: dict[str, int] = {}
        self.page = page
        self.per_page = per_page
        self.calls: list[str] = []

    def describe_stream(self, StreamArn: str, ExclusiveStartShardId: str | None = None) -> Any:
        self.calls.append("DescribeStream")
        ids = list(self.shards)
        start = ids.index(ExclusiveStartShardId) + 1 if ExclusiveStartShardId else 0
        chunk = ids[start : start + self.per_page]
        shards = []
        for shard_id in chunk:
            parent, records, ended = self.shards[shard_id]
            numbers: dict[str, str] = {"StartingSequenceNumber": "0"}
            if ended:
                numbers["EndingSequenceNumber"] = records[-1]["dynamodb"]["SequenceNumber"]
            info: dict[str, Any] = {"ShardId": shard_id, "SequenceNumberRange": numbers}
            if parent:
                info["ParentShardId"] = parent
            shards.append(info)
        description: dict[str, Any] = {"StreamArn": StreamArn, "Shards": shards}
        if start + self.per_page < len(ids):
            description["LastEvaluatedShardId"] = chunk[-1]
        return {"StreamDescription": description}

    def get_shard_iterator(self, **params: Any) -> Any:
        self.calls.append(f"GetShardIterator:{params['ShardId']}:{params['ShardIteratorType']}")
        shard_id = params["ShardId"]
        _, records, _ = self.shards[shard_id]
        kind = params["ShardIteratorType"]
        if kind == "AFTER_SEQUENCE_NUMBER":
            after = int(params["SequenceNumber"])
            if after < self.trimmed_before.get(shard_id, 0):
                raise ClientError(
                    {"Error": {"Code": "TrimmedDataAccessException", "Message": "trimmed"}},
                    "GetShardIterator",
                )
            index = sum(1 for r in records if int(r["dynamodb"]["SequenceNumber"]) <= after)
        elif kind == "AT_SEQUENCE_NUMBER":
            at = int(params["SequenceNumber"])
            index = sum(1 for r in records if int(r["dynamodb"]["SequenceNumber"]) < at)
        elif kind == "LATEST":
            index = len(records)
        else:
            index = sum(
                1
                for r in records
                if int(r["dynamodb"]["SequenceNumber"]) < self.trimmed_before.get(shard_id, 0)
            )
        return {"ShardIterator": f"{shard_id}@{index}"}

    def get_records(self, ShardIterator: str, Limit: int) -> Any:
        self.calls.append(f"GetRecords:{ShardIterator}")
        shard_id, _, index_text = ShardIterator.partition("@")
        index = int(index_text)
        _, records, ended = self.shards[shard_id]
        page = records[index : index + min(Limit, self.page)]
        after = index + len(page)
        response: dict[str, Any] = {"Records": page}
        if not (ended and after >= len(records)):
            response["NextShardIterator"] = f"{shard_id}@{after}"
        return response

    def close(self) -> None:
        pass


def scripted_follower(
    stream: ScriptedStream,
    recorder: Recorder,
    store: Any,
    clock: Callable[[], float] | None = None,
    **settings: Any,
) -> StreamFollower:
    return StreamFollower(
        recorder,
        StreamSettings(table="scripted", key="id", stream_arn="arn:scripted", **settings),
        checkpoints=store,
        streams_client=stream,
        sleep=RecordingSleep(),
        clock=clock or FakeClock(),
    )


def drain(follower: StreamFollower, passes: int = 20) -> None:
    for _ in range(passes):
        follower.run_once()


def test_shard_end_and_child_shards(tmp_path: Path) -> None:
    stream = ScriptedStream(page=2, per_page=1)
    stream.shards["parent"] = (None, [_record(i, f"p{i}") for i in range(1, 4)], True)
    recorder = Recorder()
    store = JSONFileCheckpointStore(tmp_path / "p.json")
    follower = scripted_follower(stream, recorder, store)
    follower.run_once()
    assert recorder.keys == ["p1", "p2"]
    # The parent splits: its children show up in DescribeStream (paged, one shard per page).
    stream.shards["child-a"] = ("parent", [_record(10, "a1"), _record(11, "a2")], False)
    stream.shards["child-b"] = ("parent", [_record(20, "b1")], False)
    drain(follower)
    assert recorder.keys == ["p1", "p2", "p3", "a1", "a2", "b1"]
    stats = follower.stats()
    assert stats["shards_finished"] == 1
    assert stats["shards"] == 3
    assert store.load() == Checkpoint(
        "arn:scripted", {"parent": SHARD_END, "child-a": "11", "child-b": "20"}
    )

    # A restart reads neither the ended parent nor what the children already gave.
    stream.shards["child-a"][1].append(_record(12, "a3"))
    again = Recorder()
    resumed = scripted_follower(stream, again, store)
    drain(resumed)
    assert again.keys == ["a3"]
    assert not any(call.startswith("GetShardIterator:parent") for call in stream.calls[-10:])


def test_trimmed_position_is_a_gap_that_clears_the_cache() -> None:
    stream = ScriptedStream(page=10)
    stream.shards["s"] = (None, [_record(i, f"k{i}") for i in range(1, 6)], False)
    store = MemoryCheckpointStore()
    store.save(Checkpoint("arn:scripted", {"s": "1"}))
    stream.trimmed_before["s"] = 3  # records 1 and 2 are gone: we saved 1, never saw 2
    recorder = Recorder()
    follower = scripted_follower(stream, recorder, store)
    drain(follower, 2)
    assert recorder.clears == 1
    assert follower.stats()["gaps"] == 1
    assert recorder.keys == ["k3", "k4", "k5"]


def test_replaced_stream_is_a_gap() -> None:
    stream = ScriptedStream()
    stream.shards["s"] = (None, [_record(1, "x")], False)
    store = MemoryCheckpointStore()
    store.save(Checkpoint("arn:old-stream", {"old-shard": "99"}))
    recorder = Recorder()
    follower = scripted_follower(stream, recorder, store, clear_on_gap=False)
    drain(follower, 2)
    assert recorder.clears == 0  # clear_on_gap=False: only counted and logged
    assert follower.stats()["gaps"] == 1
    assert recorder.keys == ["x"]  # the new stream is read from its start
    saved = store.load()
    assert saved == Checkpoint("arn:scripted", {"s": "1"})


def test_second_invalidation_after_the_delay() -> None:
    stream = ScriptedStream(page=10)
    stream.shards["s"] = (None, [_record(1, "a"), _record(2, "b")], False)
    clock = FakeClock()
    recorder = Recorder()
    follower = scripted_follower(
        stream, recorder, MemoryCheckpointStore(), clock, reinvalidate_after=2.0
    )
    follower.run_once()
    assert recorder.batches == [["a", "b"]]
    clock.advance(1.0)
    stream.shards["s"][1].append(_record(3, "c"))
    follower.run_once()
    assert recorder.batches == [["a", "b"], ["c"]]
    clock.advance(1.0)  # 2 s after a and b, 1 s after c
    recorder.fail_next = 1
    with pytest.raises(ConnectionError):
        follower.run_once()
    follower.run_once()  # the failed second invalidation is due still
    assert recorder.batches == [["a", "b"], ["c"], ["a", "b"]]
    clock.advance(1.0)
    follower.run_once()
    assert recorder.batches == [["a", "b"], ["c"], ["a", "b"], ["c"]]
    assert follower.stats()["reinvalidations"] == 3
    assert follower.stats()["records"] == 3


# -- checkpoints -----------------------------------------------------------------------------


def test_json_checkpoint_store(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "position.json"
    store = JSONFileCheckpointStore(path)
    assert store.load() is None
    store.save(Checkpoint("arn:1", {"shard-1": "100", "shard-0": SHARD_END}))
    store.save(Checkpoint("arn:1", {"shard-1": "105", "shard-0": SHARD_END}))
    assert store.load() == Checkpoint("arn:1", {"shard-1": "105", "shard-0": SHARD_END})
    assert [p.name for p in path.parent.iterdir()] == ["position.json"]  # no temporary left
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="delete it"):
        store.load()
    path.write_text(json.dumps({"version": 1, "shards": {"s": 5}}))
    with pytest.raises(CheckpointError):
        store.load()


def test_a_checkpoint_that_is_not_utf8_is_refused_as_one_that_is_not_json(tmp_path: Path) -> None:
    """A damaged checkpoint (bytes UTF-8 cannot decode) raised UnicodeDecodeError from
    read_text, neither an OSError nor inside the check of its contents: connect() let it
    through and follow-stream ended with a traceback instead of saying to delete it."""
    path = tmp_path / "position.json"
    path.write_bytes(b'{"version": 1, "shards": {"s": "\xff\xfe"}}')
    with pytest.raises(CheckpointError, match="delete it"):
        JSONFileCheckpointStore(path).load()


def test_settings_need_a_table_and_key() -> None:
    with pytest.raises(ConfigError, match="'table' and 'key'"):
        StreamSettings().resolve()
    with pytest.raises(ConfigError, match="key_template"):
        StreamSettings(table="tbl", key="id", key_template="{other}").resolve()
    fields = {"table": "tbl", "key": "id", "poll_interval": "250ms"}
    explicit = StreamSettings.model_validate(fields).resolve()
    assert explicit.poll_interval == 0.25
    assert explicit.region


# -- the command line ------------------------------------------------------------------------


def _config(moto: MotoDynamoDB, table: str, path: Path, stream: str = "") -> Path:
    source = moto.source_toml(table, "id", key_template="tweet:{id}")
    text = f"""
[tiered_cache]
namespace = "cli"

[[tiered_cache.tiers]]
kind = "memory"

{source}
{stream}
"""
    path.write_text(text)
    return path


def _follower_config(moto: MotoDynamoDB, table: str, tmp_path: Path, name: str) -> Path:
    """:func:`_config` at ``name.toml``, the stream polled every 20 ms and its checkpoint kept
    in ``name.json``."""
    checkpoint = tmp_path / f"{name}.json"
    stream = f'[tiered_cache_stream]\ncheckpoint = "{checkpoint}"\npoll_interval = "20ms"\n'
    return _config(moto, table, tmp_path / f"{name}.toml", stream)


def _unreachable_config(path: Path, more: str = "") -> Path:
    """A config at ``path`` whose source is table ``tweet`` at a loopback port nobody listens
    on (one attempt, a short connect timeout), with the source settings ``more``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path.write_text(
        '[tiered_cache]\nnamespace = "cli"\n[[tiered_cache.tiers]]\nkind = "memory"\n'
        '[tiered_cache.source]\nkind = "dynamodb"\ntable = "tweet"\nkey = "id"\n'
        f'region = "eu-west-1"\nendpoint_url = "http://127.0.0.1:{port}"\n'
        'aws_access_key_id = "testing"\naws_secret_access_key = "testing"\n'
        f'{more}connect_timeout = "200ms"\nmax_attempts = 1\n'
    )
    return path


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tiered-cache")
    add_follow_stream_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["follow-stream", *argv])


def test_cli_follows_until_max_records(
    moto_server: MotoDynamoDB,
    admin_client: Any,
    stream_table: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = stream_table()
    config = _follower_config(moto_server, table, tmp_path, "cli")
    checkpoint = tmp_path / "cli.json"
    for key in ("1", "2", "3"):
        put(admin_client, table, id=key, v=0)
    assert run_follow_stream(_parse("--config", str(config), "--max-records", "3")) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["records"] == 3
    assert stats["invalidations"] == 3
    assert json.loads(checkpoint.read_text())["shards"]

    # A second run resumes: only the new record.
    put(admin_client, table, id="4", v=0)
    assert run_follow_stream(_parse("--config", str(config), "--max-records", "1")) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["records"] == 1


def test_cli_process_stops_on_sigterm_after_checkpointing(
    moto_server: MotoDynamoDB,
    admin_client: Any,
    stream_table: Callable[..., str],
    tmp_path: Path,
) -> None:
    table = stream_table()
    config = _follower_config(moto_server, table, tmp_path, "proc")
    checkpoint = tmp_path / "proc.json"
    put(admin_client, table, id="x", v=1)
    command = [sys.executable, "-m", "tiered_cache_dynamodb.cli", "--config", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The checkpoint file appears once the record's invalidation returned.
        deadline = time.monotonic() + WAIT
        while not checkpoint.exists() and process.poll() is None:
            assert time.monotonic() < deadline, "the follower process made no progress"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["records"] == 1
    assert stats["invalidations"] == 1


def test_the_core_command_line_run_as_a_module_has_the_adapters_subcommand() -> None:
    """``python -m tiered_cache.cli follow-stream``: run as ``__main__``, the core's module
    checked the subcommands the adapters declare against its own copy of ``Subcommand``, not
    the class the adapter imported, and refused ``follow-stream`` as an invalid choice."""
    done = subprocess.run(
        [sys.executable, "-m", "tiered_cache.cli", "follow-stream", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert "--checkpoint" in done.stdout


def test_cli_reports_bad_config_and_missing_stream(
    moto_server: MotoDynamoDB,
    stream_table: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = stream_table(stream=False)
    config = _config(moto_server, table, tmp_path / "a.toml")
    assert run_follow_stream(_parse("--config", str(config), "--max-records", "1")) == 1
    assert "no stream" in capsys.readouterr().err
    bad = _config(moto_server, table, tmp_path / "b.toml", "[tiered_cache_stream]\npoll = 1\n")
    assert run_follow_stream(_parse("--config", str(bad))) == 2
    assert "tiered_cache_stream.poll" in capsys.readouterr().err
    assert run_follow_stream(_parse("--config", str(tmp_path / "none.toml"))) == 2


def test_a_bad_option_is_named_as_the_option(
    moto_server: MotoDynamoDB, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--poll-interval banana`` was reported as ``tiered_cache_stream.poll_interval: ...``:
    a field of a table the file need not have, not the option the user typed."""
    config = _config(moto_server, "tbl", tmp_path / "c.toml")
    assert run_follow_stream(_parse("--config", str(config), "--poll-interval", "banana")) == 2
    err = capsys.readouterr().err
    assert "--poll-interval (tiered_cache_stream.poll_interval): expected a duration" in err, err


def test_config_file_inherits_from_the_source(moto_server: MotoDynamoDB, tmp_path: Path) -> None:
    config = _config(moto_server, "tbl", tmp_path / "c.toml", "[tiered_cache_stream]\n")
    _, stream = load_follow_stream_config(config, start_position="LATEST")
    assert (stream.table, stream.key, stream.key_template) == ("tbl", "id", "tweet:{id}")
    assert stream.endpoint_url == moto_server.endpoint_url
    assert stream.start_position == "LATEST"


def test_a_config_file_with_a_byte_order_mark_is_read_by_the_follower_too(
    moto_server: MotoDynamoDB, tmp_path: Path
) -> None:
    config = _config(moto_server, "tbl", tmp_path / "c.toml", "[tiered_cache_stream]\n")
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    _, stream = load_follow_stream_config(config, batch_size=7)
    assert (stream.table, stream.batch_size) == ("tbl", 7)


def test_entry_point_declares_the_command() -> None:
    # Read the declaration itself: the installed metadata may predate it (editable install).
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    with pyproject.open("rb") as handle:
        group = tomllib.load(handle)["project"]["entry-points"]["tiered_cache.commands"]
    module, _, name = group["follow-stream"].partition(":")
    command = getattr(import_module(module), name)
    assert command is FOLLOW_STREAM
    assert isinstance(command, Subcommand)
    assert command.name == "follow-stream"
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert parser.parse_args(["--config", "x.toml"]).config == "x.toml"


def _read_terminal(fd: int, until: str, process: subprocess.Popen[str]) -> str:
    """What the process wrote to the pseudo-terminal, read until ``until`` shows up."""
    import os

    os.set_blocking(fd, False)
    seen = ""
    deadline = time.monotonic() + WAIT
    while until not in seen:
        assert time.monotonic() < deadline, f"no {until!r} on the terminal: {seen!r}"
        assert process.poll() is None, f"the follower exited: {seen!r}"
        try:
            seen += os.read(fd, 65536).decode()
        except BlockingIOError:
            time.sleep(0.02)
    return seen


def test_cli_catch_up_shows_progress_on_a_terminal_and_nothing_when_piped(
    moto_server: MotoDynamoDB,
    admin_client: Any,
    stream_table: Callable[..., str],
    tmp_path: Path,
) -> None:
    import os

    table = stream_table()
    config = _follower_config(moto_server, table, tmp_path, "progress")
    for key in ("1", "2", "3"):
        put(admin_client, table, id=key, v=0)
    command = [sys.executable, "-m", "tiered_cache_dynamodb.cli", "--config", str(config)]

    # On a terminal (a real pseudo-terminal as stderr): the line, until caught up.
    reader, writer = os.openpty()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=writer, text=True)
    os.close(writer)
    try:
        shown = _read_terminal(reader, "caught up", process)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=WAIT)
    finally:
        os.close(reader)
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "\r3 records" in shown
    assert json.loads(out.strip().splitlines()[-1])["idle_passes"] >= 1

    # Piped: no progress line (stderr holds the log lines only, stdout the final JSON line).
    put(admin_client, table, id="4", v=0)
    piped = subprocess.run(
        [*command, "--max-records", "1"], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr
    assert "1/1 records" not in piped.stderr
    assert "following the stream" in piped.stderr  # the log is there: only the line is not
    assert json.loads(piped.stdout)["records"] == 1


def test_cli_reports_a_dynamodb_it_cannot_reach_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """connect() let botocore's own errors through (EndpointConnectionError here; with no
    credentials NoCredentialsError, with a role lacking DescribeTable a ClientError): the
    command ended with a traceback instead of saying which table it could not reach."""
    config = _unreachable_config(tmp_path / "unreachable.toml")
    assert run_follow_stream(_parse("--config", str(config), "--max-records", "1")) == 1
    err = capsys.readouterr().err
    assert "table 'tweet'" in err and "EndpointConnectionError" in err, err


def test_cli_debug_log_shows_the_commands_own_records_not_the_aws_credentials(
    tmp_path: Path,
) -> None:
    """--log-level DEBUG set the root logger's level: botocore's DEBUG records came too, and
    they print each request's headers and canonical request, the session token in clear
    (X-Amz-Security-Token), three times per attempt. The level is the command's own loggers'
    (tiered_cache*); other libraries keep to warnings."""
    token = "SESSION-TOKEN-NOT-TO-BE-LOGGED"
    config = _unreachable_config(tmp_path / "debug.toml", f'aws_session_token = "{token}"\n')
    command = [sys.executable, "-m", "tiered_cache_dynamodb.cli", "--config", str(config)]
    done = subprocess.run(
        [*command, "--max-records", "1", "--log-level", "DEBUG"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "table 'tweet'" in done.stderr, done.stderr
    assert token not in done.stderr + done.stdout
    assert "DEBUG botocore" not in done.stderr


def test_cli_refuses_a_log_level_logging_does_not_know_as_a_usage_error(
    moto_server: MotoDynamoDB, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-level took any text, and logging.basicConfig raised ValueError (Unknown level:
    'BOGUS') out of the command, a traceback."""
    config = _config(moto_server, "tbl", tmp_path / "c.toml")
    with pytest.raises(SystemExit) as caught:
        run_follow_stream(_parse("--config", str(config), "--log-level", "BOGUS"))
    assert caught.value.code == 2
    assert "--log-level" in capsys.readouterr().err
    assert _parse("--config", str(config), "--log-level", "debug").log_level == "DEBUG"


@pytest.mark.parametrize(("saved", "gaps"), [("5", 1), (SHARD_END, 0)])
def test_a_shard_that_left_while_the_follower_was_down_unread_is_a_gap(
    saved: str, gaps: int
) -> None:
    # The follower saved a position in the middle of a shard and stopped. While it was down
    # (longer than the 24 h a closed shard is kept), the shard ended, split and left the
    # stream: the records after the saved position are gone, and which keys they changed is
    # unknown. A restart must say so (a gap, the cache cleared), as a running follower does
    # for a shard that leaves under it, not forget the position as dead weight. A saved
    # SHARD_END says nothing was left unread: forgetting it loses nothing.
    stream = ScriptedStream(page=10)
    stream.shards["child"] = ("parent", [_record(10, "c1")], False)
    store = MemoryCheckpointStore()
    store.save(Checkpoint("arn:scripted", {"parent": saved}))
    recorder = Recorder()
    follower = scripted_follower(stream, recorder, store)
    drain(follower, 2)
    assert follower.stats()["gaps"] == gaps
    assert recorder.clears == gaps
    assert recorder.keys == ["c1"]
    assert store.load() == Checkpoint("arn:scripted", {"child": "10"})


def test_a_failed_first_page_from_latest_is_read_again() -> None:
    # A first run from LATEST has no position until a page is invalidated. The first page's
    # invalidation failed (Redis down as the table changed): a new iterator made at LATEST
    # again skipped its records for good, where at-least-once promises them again.
    stream = ScriptedStream(page=10)
    stream.shards["s"] = (None, [_record(1, "old")], False)
    recorder = Recorder()
    store = MemoryCheckpointStore()
    follower = scripted_follower(stream, recorder, store, start_position="LATEST")
    assert follower.run_once() == 0  # caught up: nothing after LATEST
    stream.shards["s"][1].extend([_record(2, "a"), _record(3, "b")])
    recorder.fail_next = 1
    with pytest.raises(ConnectionError):
        follower.run_once()
    stream.shards["s"][1].append(_record(4, "c"))
    drain(follower, 3)
    assert recorder.keys == ["a", "b", "c"]
    assert store.load() == Checkpoint("arn:scripted", {"s": "4"})
