"""Four real processes read a key through their own chains while another program writes the
table directly with boto3; the stream follower (in this process) invalidates the key in Redis
and, through the bus, in every process's memory. Once the write is done and the follower's
delay bound has passed, no process returns the old value."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from tiered_cache_dynamodb import create_table
from tiered_cache_dynamodb.streams import StreamFollower, StreamSettings
from tiered_cache_dynamodb.testing import MotoDynamoDB

from tiered_cache import TieredCache
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

#: Generous: the follower polls every 50 ms; the bus takes well under a millisecond.
DELAY_BOUND = 3.0


def test_direct_writes_reach_four_processes_through_the_stream_and_the_bus(
    moto_server: MotoDynamoDB, admin_client: Any, tmp_path: Path
) -> None:
    table = f"fleet-{uuid.uuid4().hex[:12]}"
    create_table(admin_client, table, "id", stream=True)
    admin_client.put_item(TableName=table, Item={"id": {"S": "tweet"}, "v": {"N": "1"}})
    namespace = f"fleet-{uuid.uuid4().hex[:8]}"
    worker = Path(__file__).with_name("stream_fleet_worker.py")
    with RedisServer() as server:
        counter = redis.Redis.from_url(server.url)
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(worker),
                    server.url,
                    moto_server.endpoint_url,
                    table,
                    namespace,
                    "tweet",
                    "6",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        # Each process counts itself ready once it holds v=1 in its memory.
        until(lambda: int(counter.get(f"{namespace}:ready") or 0) == 4, "4 readers hold v=1", 60)
        cache = TieredCache.from_config(
            namespace=namespace,
            tiers=[{"kind": "memory"}, {"kind": "redis", "url": server.url, "timeout": "1s"}],
        )
        follower = StreamFollower(
            cache,
            StreamSettings(poll_interval=0.05, start_position="LATEST"),
            source=moto_server.settings(table=table, key="id"),
        )
        follower.start()
        # Its first idle pass read every shard from LATEST: the write below comes after.
        assert follower.wait_until(lambda stats: stats["idle_passes"] >= 1, 30)
        admin_client.update_item(
            TableName=table,
            Key={"id": {"S": "tweet"}},
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"N": "2"}},
        )
        written_at = time.time()
        assert follower.wait_for_records(1, 30)
        outputs = [process.communicate(timeout=60)[0] for process in processes]
        follower.stop()
        cache.close()
        counter.close()
    assert [process.returncode for process in processes] == [0] * 4
    for output in outputs:
        changes = [json.loads(line) for line in output.splitlines()]
        assert changes[0][1] == 1
        assert changes[-1][1] == 2
        switched_at = next(at for at, value in changes if value == 2)
        assert switched_at - written_at < DELAY_BOUND
        assert all(value == 2 for at, value in changes if at >= switched_at)
