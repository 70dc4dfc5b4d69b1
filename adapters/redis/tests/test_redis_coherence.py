"""Coherence over a real Redis: the bus between chains and between processes, a cut bus
connection (a TCP proxy in front of the server), and faults that close nothing (SIGSTOP, a
proxy holding traffic back, an ACL without channel permission, an endpoint that is not Redis)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tiered_cache import TieredCache
from tiered_cache.errors import ConfigError
from tiered_cache.testing import FakeClock
from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import FaultProxy, RedisServer, resp_command
from tiered_cache.tier import Entry

#: Generous bound for "the bus has delivered": asserted here; measured by the benchmark.
BUS_DELAY_BOUND = 2.0


def chain(
    url: str,
    namespace: str,
    bus_url: str | None = None,
    *,
    bus_options: dict[str, Any] | None = None,
    wait: bool = True,
    **extra: Any,
) -> TieredCache:
    bus: dict[str, Any] = {"health_check_interval": "1s", "timeout": "1s", **(bus_options or {})}
    if bus_url is not None:
        bus["url"] = bus_url
    settings = bus_chain_settings(url, namespace, bus=bus, **extra)
    return subscribed_chain(settings) if wait else TieredCache.from_config(**settings)


def test_the_bus_is_on_by_default_with_memory_and_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[{"kind": "memory"}, {"kind": "redis", "url": redis_server.url}],
    )
    assert cache._bus_link is not None
    assert cache.stats()["bus"] in ("starting", "connected")  # until subscribed: starting
    assert cache._bus_link.bus.wait_subscribed(10)  # type: ignore[union-attr]
    assert cache.stats()["bus"] == "connected"
    cache.close()
    alone = TieredCache.from_config(namespace=namespace, tiers=[{"kind": "memory"}])
    assert alone._bus_link is None
    alone.close()


def test_a_write_reaches_the_other_chains_memory(redis_server: RedisServer, namespace: str) -> None:
    a = chain(redis_server.url, namespace)
    b = chain(redis_server.url, namespace)
    source = {"k": "old"}
    assert b.get("k", lambda: source["k"]) == "old"
    assert b.get("k", lambda: "never") == "old"  # from b's memory
    source["k"] = "new"
    a.set("k", "new")
    assert eventually(lambda: b.get("k", lambda: "never") == "new", BUS_DELAY_BOUND)
    assert b.stats()["bus_received"] >= 1
    a.invalidate_prefix("k")
    assert eventually(lambda: b.get("k", lambda: "reloaded") == "reloaded", BUS_DELAY_BOUND)
    a.close()
    b.close()


def test_a_cut_bus_connection_bypasses_memory_until_it_is_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """The bus of b goes through a proxy that we cut. Writes made meanwhile by a are not heard
    by b; b must not serve its in-memory copy once it noticed the cut."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        a = chain(redis_server.url, namespace)
        no_staleness = {"max_stale_when_disconnected": "0s"}
        b = chain(redis_server.url, namespace, proxy.url("redis"), bus_options=no_staleness)
        assert b.get("k", lambda: "v0") == "v0"
        proxy.cut()
        assert eventually(lambda: b.stats()["bus"] == "down", within=10)
        for version in range(1, 4):
            a.set("k", f"v{version}")  # b hears nothing of these
            assert b.get("k", lambda: "never") == f"v{version}"
        assert b.stats()["bus_disconnects"] == 1
        proxy.restore()
        assert eventually(lambda: b.stats()["bus"] == "connected", within=10)
        assert b.get("k", lambda: "never") == "v3"
        a.set("k", "v4")
        assert eventually(lambda: b.get("k", lambda: "never") == "v4", BUS_DELAY_BOUND)
        a.close()
        b.close()


def test_four_processes_see_a_write_within_the_bus_delay(
    redis_server: RedisServer, namespace: str
) -> None:
    """4 real processes read one key in a loop through their own chains; this test writes a
    new value through a chain of its own. Once the write returned and the bus delay bound
    passed, no process returns the old value."""
    table = redis.Redis.from_url(redis_server.url, decode_responses=True)
    table.hset(f"{namespace}:table", "tweet:1", "old")
    worker = Path(__file__).with_name("coherence_worker.py")
    processes = [
        subprocess.Popen(
            [sys.executable, str(worker), redis_server.url, namespace, "tweet:1", "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    writer = chain(redis_server.url, namespace)
    # Each process counts itself ready once it has read the old value into its memory.
    assert eventually(lambda: int(table.get(f"{namespace}:ready") or 0) == 4, within=60)
    table.hset(f"{namespace}:table", "tweet:1", "new")
    writer.set("tweet:1", "new")
    written_at = time.time()
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4
    for output in outputs:
        lines = [json.loads(line) for line in output.splitlines()]
        changes = [line for line in lines if line[0] != "stats"]
        assert changes[0][1] == "old"
        assert changes[-1][1] == "new"
        switched_at = next(at for at, value in changes if value == "new")
        assert switched_at - written_at < BUS_DELAY_BOUND
        # after the switch, never the old value again
        assert all(value == "new" for at, value in changes if at >= switched_at)
    writer.close()
    table.close()


# -- faults that close nothing: a stalled server, a proxy holding traffic back, a listener
# that fails for a reason other than the network. Each must be noticed: stats()["bus"] says
# "down", the process stops trusting its memory, and the listener keeps trying.

#: The bus settings of these tests: a stall must be noticed within INTERVAL + TIMEOUT.
INTERVAL = 0.5
TIMEOUT = 0.5
FAST_CHECK = {"health_check_interval": "500ms", "timeout": "500ms"}
#: Slack on top of the documented bound for a loaded 2-core test machine (thread wake-ups).
SLACK = 1.5


@contextlib.contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server frozen with SIGSTOP: connections stay open, nothing is answered."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stalled_server_is_noticed_within_interval_plus_timeout(namespace: str) -> None:
    with RedisServer() as server:
        cache = chain(server.url, namespace, bus_options=FAST_CHECK)
        assert cache.get("k", lambda: "v0") == "v0"
        with stopped(server):
            assert cache.stats()["bus"] == "connected"
            assert eventually(lambda: cache.stats()["bus"] == "down", INTERVAL + TIMEOUT + SLACK)
            assert cache.stats()["bus_disconnects"] == 1
        # Once the server answers again the bus subscribes again and memory is used again.
        assert eventually(lambda: cache.stats()["bus"] == "connected", 10)
        cache.close()


def test_a_bus_link_that_holds_everything_back_stops_memory_serving_old_values(
    redis_server: RedisServer, namespace: str
) -> None:
    """Only b's bus goes through the proxy. While the proxy holds its traffic back, a's writes
    do not reach b; once the stall is noticed b reads through to Redis, never its old copy."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        a = chain(redis_server.url, namespace, bus_options=FAST_CHECK)
        b = chain(redis_server.url, namespace, proxy.url("redis"), bus_options=FAST_CHECK)
        assert b.get("k", lambda: "v0") == "v0"
        assert b.get("k", lambda: "never") == "v0"  # now from b's memory
        proxy.delay(60)
        a.set("k", "v1")
        assert eventually(lambda: b.stats()["bus"] == "down", INTERVAL + TIMEOUT + SLACK)
        assert b.get("k", lambda: "never") == "v1"
        proxy.restore()
        assert eventually(lambda: b.stats()["bus"] == "connected", 10)
        a.set("k", "v2")
        assert eventually(lambda: b.get("k", lambda: "never") == "v2", 5)
        a.close()
        b.close()


def bus_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "tiered_cache_redis.bus" and record.levelno >= logging.WARNING
    ]


def test_an_acl_without_channel_permission_marks_the_bus_down_and_heals(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The bus user may not subscribe (NOPERM): the listener says so once, counts each
    failed attempt, keeps memory bypassed, and subscribes once the permission is granted."""
    caplog.set_level(logging.WARNING)
    with RedisServer() as server:
        resp_command(
            server.port, "ACL", "SETUSER", "deaf", "on", ">pw", "~*", "+@all", "resetchannels"
        )
        bus_url = f"redis://deaf:pw@{server.host}:{server.port}/0"
        cache = chain(server.url, namespace, bus_url, bus_options=FAST_CHECK, wait=False)
        assert eventually(lambda: cache.stats().get("bus_errors", 0) >= 3, 10)
        assert cache.stats()["bus"] == "down"
        assert cache.get("k", lambda: "v0") == "v0"
        assert cache.get("k", lambda: "v1") == "v0"  # from Redis: memory is bypassed
        noperm = [record for record in bus_records(caplog) if "NoPermission" in record.message]
        assert len(noperm) == 1, [record.message for record in bus_records(caplog)]
        resp_command(server.port, "ACL", "SETUSER", "deaf", "allchannels")
        assert eventually(lambda: cache.stats()["bus"] == "connected", 10)
        cache.close()


class GarbageServer:
    """A TCP server that answers every connection with bytes that are not RESP."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            with client, contextlib.suppress(OSError):
                client.settimeout(1)
                client.recv(4096)
                client.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def test_an_endpoint_that_is_not_redis_marks_the_bus_down_and_keeps_trying(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    garbage = GarbageServer()
    try:
        bus_url = f"redis://127.0.0.1:{garbage.port}/0"
        cache = chain(redis_server.url, namespace, bus_url, bus_options=FAST_CHECK, wait=False)
        assert eventually(lambda: cache.stats().get("bus_errors", 0) >= 2, 10)
        assert cache.stats()["bus"] == "down"
        errors = cache.stats()["bus_errors"]
        # Still trying (the thread is alive), but it said so only once.
        assert eventually(lambda: cache.stats()["bus_errors"] > errors, 10)
        assert len(bus_records(caplog)) == 1, [record.message for record in bus_records(caplog)]
        assert cache.get("k", lambda: "v0") == "v0"
        assert cache.get("k", lambda: "v1") == "v0"  # from Redis, not from bypassed memory
        cache.close()
    finally:
        garbage.close()


@pytest.mark.parametrize("field", ["health_check_interval", "timeout"])
def test_a_bus_check_that_never_runs_is_refused_with_its_path(
    redis_server: RedisServer, field: str
) -> None:
    with pytest.raises(ConfigError, match=rf"bus\.{field}"):
        TieredCache.from_config(
            tiers=[{"kind": "memory"}, {"kind": "redis", "url": redis_server.url}],
            bus={"kind": "redis", field: "0s"},
        )


# -- a forked worker: the listener thread does not survive fork(); the bus restarts it


def test_a_forked_child_hears_another_process_write(
    redis_server: RedisServer, namespace: str
) -> None:
    """A cache built before fork() (gunicorn --preload, Celery prefork): the child serves
    from its memory, hears a write made by another process and drops its copy."""
    parent = chain(redis_server.url, namespace)
    writer = chain(redis_server.url, namespace)
    assert parent.get("k", lambda: "v0") == "v0"  # in the parent's memory, inherited

    def child(report: Callable[[Any], None]) -> None:
        # The child's own subscription (its bus's event is made anew at the fork): the chain's
        # state alone may still be the parent's "connected" before the child's listener has
        # told it otherwise, and the write below then came before the child subscribed.
        subscribed = parent._bus_link.bus.wait_subscribed(10)  # type: ignore[union-attr]
        connected = eventually(lambda: parent.stats()["bus"] == "connected", 10)
        before = parent.get("k", lambda: "v0")
        served = parent.get("k", lambda: "loaded")  # from the child's memory
        report([subscribed and connected, before, served])
        heard = eventually(lambda: parent.get("k", lambda: "never") == "v1", 10)
        report([heard, parent.stats()["bus_received"]])

    forked = ForkedChild(child)
    assert forked.read() == [True, "v0", "v0"]
    writer.set("k", "v1")
    second = forked.read()
    assert forked.wait() == 0
    assert second is not None and second[0] is True
    assert second[1] >= 1  # heard on the child's own subscription
    parent.close()
    writer.close()


class _HeldLog(logging.Handler):
    """Holds the forked child's listener at its first act (its log line) until the child's
    main thread has looked: what the child serves before its listener has run at all."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "forked process" in record.getMessage():
            self.release.wait(10)


def test_a_forked_child_trusts_no_inherited_copy_before_its_listener_runs(
    redis_server: RedisServer, namespace: str
) -> None:
    """The child is disconnected from the moment fork() returns, not from when its listener
    thread first runs: until then it served its inherited memory, missing a write made after
    the fork (the bus showed "connected", and ``k`` read ``v0`` after ``v1`` was written)."""
    parent = chain(redis_server.url, namespace)
    writer = chain(redis_server.url, namespace)
    assert parent.get("k", lambda: "v0") == "v0"  # in memory, inherited by the child
    held = _HeldLog()
    bus_log = logging.getLogger("tiered_cache_redis.bus")
    bus_log.addHandler(held)
    level = bus_log.level
    bus_log.setLevel(logging.INFO)

    def child(report: Callable[[Any], None]) -> None:
        state = parent.stats()["bus"]
        writer.set("k", "v1")  # Redis holds v1; the child has not subscribed yet
        served = parent.get("k", lambda: "loaded")
        held.release.set()
        report([state, served])

    try:
        forked = ForkedChild(child)
    finally:
        bus_log.removeHandler(held)
        bus_log.setLevel(level)
    assert forked.read(timeout=30) == ["down", "v1"]
    assert forked.wait() == 0
    parent.close()
    writer.close()


def test_a_forked_child_and_its_parent_hear_each_others_writes(
    redis_server: RedisServer, namespace: str
) -> None:
    """gunicorn ``--preload`` builds the cache in the master and forks every worker from it:
    the workers and the master are processes of one fleet, each hearing the others' writes.
    The child kept its parent's sender id, so each took the other's messages for its own and
    skipped them: the child served ``v0`` from its memory after the parent wrote ``v1``, and
    the parent ``w0`` after the child wrote ``w1`` (0 messages received either way)."""
    parent = chain(redis_server.url, namespace)
    assert parent.get("k", lambda: "v0") == "v0"  # in memory, inherited by the child
    assert parent.get("j", lambda: "w0") == "w0"

    def child(report: Callable[[Any], None]) -> None:
        connected = eventually(lambda: parent.stats()["bus"] == "connected", 10)
        parent.get("k", lambda: "loaded")
        held = parent.tiers[0].get("k")  # the child's memory holds it now
        kept = held.value if isinstance(held, Entry) else None
        report([connected, parent.get("k", lambda: "loaded"), kept])
        heard = eventually(lambda: parent.get("k", lambda: "never") == "v1", 10)
        parent.set("j", "w1")
        report([heard, parent.stats()["bus_received"]])

    forked = ForkedChild(child)
    assert forked.read(timeout=30) == [True, "v0", "v0"]
    parent.set("k", "v1")
    second = forked.read(timeout=30)
    assert forked.wait() == 0
    assert second == [True, 1]  # the parent's write, heard on the child's subscription
    # The child's write, heard by the parent: its memory copy of "j" dropped.
    assert eventually(lambda: parent.get("j", lambda: "never") == "w1", 10)
    assert parent.stats()["bus_received"] == 1
    parent.close()


# -- Redis down: memory keeps serving within a short bound, so the source is not stampeded


def test_with_redis_down_memory_serves_within_the_bound_and_counts(namespace: str) -> None:
    """100 reads of one key over 5 s (of the chain's clock) while Redis, and so the bus, is
    down: about one load per max_stale_when_disconnected, the rest served from memory."""
    clock = FakeClock()
    with RedisServer() as server:
        cache = chain(
            server.url,
            namespace,
            bus_options={"max_stale_when_disconnected": "1s"},
            clock=clock,
        )
        server.kill()
        assert eventually(lambda: cache.stats()["bus"] == "down", 10)
        loads: list[float] = []

        def load() -> str:
            loads.append(clock())
            return "v"

        for _ in range(100):
            assert cache.get("k", load) == "v"
            clock.advance(0.05)
        assert 5 <= len(loads) <= 6, loads  # one per second of the 5
        stats = cache.stats()
        assert stats["bus_down_bypasses"] == len(loads)
        assert stats["bus_down_served"] == 100 - len(loads)
        cache.close()


# -- writers while the bus does not answer: one publish waits out the timeout, not one each


def test_writers_during_a_stall_try_the_bus_once_and_skip_it_during_the_cool_down(
    namespace: str,
) -> None:
    """8 writer threads while Redis is SIGSTOPped. Announcements are numbered and published
    under one lock, so each writer's publish waited for the one before it to time out (8
    publishes tried on a server already known not to answer: the last writer held ~8 bus
    timeouts). The first failure opens the bus's breaker: the 7 writers queued behind it
    skip the publish at once, their numbers left unused. The chain's (fake) clock does not
    move here, so the breaker stays open for the whole stall."""
    clock = FakeClock()
    with RedisServer() as server:
        cache = chain(server.url, namespace, bus_options=FAST_CHECK, clock=clock)
        cache.set("warm", 0)
        assert cache.stats()["bus_sent"] == 1
        with stopped(server):
            writers = [threading.Thread(target=cache.set, args=(f"k{n}", n)) for n in range(8)]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join(timeout=60)
            assert not any(writer.is_alive() for writer in writers)
            stats = cache.stats()
            assert (stats["bus_sent"], stats["bus_publish_errors"]) == (1, 1)
            assert stats["bus_publish_skipped"] == 7
            assert stats["bus_publish_breaker"] == "open"  # what an operator sees meanwhile
        # Redis answers again. After the cool-downs (the Redis tier's 5 s, the bus's 1 s) the
        # timer pays the 8 deletes the stall left owed (tiered_cache.owed) and announces them
        # again, the publish breaker's probe. Waited for before the next write: a write while
        # that probe is in flight skips the bus by design
        # (test_a_writer_does_not_wait_for_the_publish_breakers_probe).
        clock.advance(5.0)

        def recovered() -> bool:
            stats = cache.stats()
            return (stats["bus"], stats["deletes_owed_payments"], stats["bus_publish_breaker"]) == (
                "connected",
                1,
                "closed",
            )

        assert eventually(recovered, 10)
        stats = cache.stats()
        assert (stats["bus_sent"], stats["bus_publish_errors"], stats["bus_publish_skipped"]) == (
            2,
            1,
            7,
        )
        cache.set("after", 1)
        stats = cache.stats()
        # Nothing skipped once the circuit closed: the write's own message.
        assert (stats["bus_sent"], stats["bus_publish_errors"], stats["bus_publish_skipped"]) == (
            3,
            1,
            7,
        )
        assert stats["deletes_owed_payments"] == 1  # the write owed nothing
        cache.close()
        assert cache.stats()["bus"] == "closed"  # not "connected": nothing is heard any more
