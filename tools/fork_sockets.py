"""Forks at random instants under load: which of the parent's DynamoDB sockets a child keeps.

A run: a DynamoDB source on moto (its own server, on a free loopback port) loads random keys
of 200 from 8 parent threads (``threads``: ``DynamoDBSource``) or 8 coroutines on a loop in a
thread (``coroutines``: ``AsyncDynamoDBSource``); the main thread forks ``--forks`` times, 20
to 80 ms apart. Each child counts its descriptors of sockets to moto's port before its first
request (by their peer, and by /proc for those still connecting), notes their TCP states, then
loads a key on its own client. moto answers ``close`` (``Connection: close``: every request
opens a connection, and every reply closes it) or ``keepalive`` (as DynamoDB does); with
``--tls``, over HTTPS (a TLS front on loopback, whose certificate the clients trust through
``AWS_CA_BUNDLE``: a fork may copy a socket in its TLS handshake), the copies counted to the
front's port. With ``--given``, the source is given a client to own that it can make anew
(``owns_client=True`` with ``connect``), which 8 concurrent requests used first (a caller's
warm-up: its connections made before the source's watch).

Prints one JSON line: the children that kept copies and how many, the states of those
copies (``01`` established, ``02`` connecting, ``08`` closed by moto, not yet by the
client), the children that loaded, those hung (no report in 25 s: each prints its stack to
stderr and exits), the parent's loads and errors, and how long each ``fork()`` took
(median, max: a fork waits for the connections being opened or closed). Over ``--tls`` the
TLS front runs in the parent process: its threads' OpenSSL calls are the parent's too.

    python tools/fork_sockets.py threads close --forks 30 [--tls] [--given]

Run from a tree's root with that tree's interpreter (its library is the one measured).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from tiered_cache_dynamodb import AsyncDynamoDBSource, DynamoDBSource, create_table, make_client
from tiered_cache_dynamodb.async_source import connect_client
from tiered_cache_dynamodb.table_steps import table_options
from tiered_cache_dynamodb.testing import MotoDynamoDB, seed_items

from tiered_cache.testing.async_conformance import LoopThread
from tiered_cache.testing.forked import ForkedChild

KEYS = [f"k{i}" for i in range(200)]

#: A child that has not reported by then is hung, not slow.
HUNG = 25.0


def socket_states(port: int) -> list[str]:
    """The TCP states of this process's descriptors of sockets to loopback ``port``: those
    with that peer (read from the socket: /proc's table can miss a row while other processes
    open and close sockets), and those /proc shows connecting to it (no peer yet)."""
    links: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            links[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    rows: dict[str, tuple[int, str]] = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            for row in list(lines)[1:]:
                fields = row.split()
                far_port = int(fields[2].rpartition(":")[2], 16)
                rows[f"socket:[{fields[9]}]"] = (far_port, fields[3])
    states: list[str] = []
    for descriptor, link in links.items():
        if not link.startswith("socket:"):
            continue
        far_port, state = rows.get(link, (0, "?"))
        try:
            copy = socket.socket(fileno=os.dup(descriptor))
        except OSError:
            continue
        with copy:
            peer: Any = None
            if copy.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    peer = copy.getpeername()
                except OSError:
                    peer = None
        if (peer is not None and peer[1] == port) or (far_port == port and state == "02"):
            states.append(state)
    return sorted(states)


class Load:
    """8 loaders on a source of moto's table until :meth:`finish`; ``child_load`` loads one
    key in a forked child (the child's own client)."""

    def __init__(self, face: str, settings: Any, rng: random.Random, *, given: bool) -> None:
        self.stop = threading.Event()
        self.loads = 0
        self.errors = 0
        self._rng = rng
        self._finish: Callable[[], None]
        self._loop = LoopThread() if face == "coroutines" else None
        if self._loop is None:
            self._threads(
                self._given(settings) if given else DynamoDBSource.from_settings(settings)
            )
        else:
            self._coroutines(
                self._given_async(settings, self._loop)
                if given
                else AsyncDynamoDBSource.from_settings(settings)
            )

    @staticmethod
    def _warm_up_key() -> dict[str, Any]:
        return {"id": {"S": KEYS[0]}}

    def _given(self, settings: Any) -> DynamoDBSource:
        """A client 8 threads used at once, given to the source to own."""
        client = make_client(settings)
        warm = [
            threading.Thread(
                target=lambda: client.get_item(TableName=settings.table, Key=self._warm_up_key())
            )
            for _ in range(8)
        ]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
        return DynamoDBSource(
            client,
            settings.table,
            settings.key,
            owns_client=True,
            connect=lambda: make_client(settings),
            **table_options(settings),
        )

    def _given_async(self, settings: Any, loop: LoopThread) -> AsyncDynamoDBSource:
        """A client 8 coroutines used at once, given to the source to own."""

        async def warmed() -> Any:
            client = await connect_client(settings)
            key = self._warm_up_key()
            await asyncio.gather(
                *(client.get_item(TableName=settings.table, Key=key) for _ in range(8))
            )
            return client

        return AsyncDynamoDBSource(
            loop.run(warmed()),
            settings.table,
            settings.key,
            connect=lambda: connect_client(settings),
            owns_client=True,
            **table_options(settings),
        )

    def _threads(self, source: DynamoDBSource) -> None:
        def load(seed: float) -> None:
            mine = random.Random(seed)
            while not self.stop.is_set():
                try:
                    source.load(mine.choice(KEYS))
                    self.loads += 1
                except Exception:
                    self.errors += 1

        workers = [
            threading.Thread(target=load, args=(self._rng.random(),), daemon=True) for _ in range(8)
        ]
        for worker in workers:
            worker.start()
        self.child_load = lambda: int(source.load(self._rng.choice(KEYS))["n"])

        def finish() -> None:
            for worker in workers:
                worker.join(10)
            source.close()

        self._finish = finish

    def _coroutines(self, source: AsyncDynamoDBSource) -> None:
        loop = self._loop
        assert loop is not None

        async def load(seed: float) -> None:
            mine = random.Random(seed)
            while not self.stop.is_set():
                try:
                    await source.load(mine.choice(KEYS))
                    self.loads += 1
                except Exception:
                    self.errors += 1

        running = [
            asyncio.run_coroutine_threadsafe(load(self._rng.random()), loop.loop) for _ in range(8)
        ]
        self.child_load = lambda: int(asyncio.run(source.load(self._rng.choice(KEYS)))["n"])

        def finish() -> None:
            for future in running:
                future.result(10)
            loop.run(source.aclose())
            loop.close()

        self._finish = finish

    def finish(self) -> None:
        self.stop.set()
        self._finish()


def fork_under(load: Load, port: int, forks: int, rng: random.Random) -> list[dict[str, Any]]:
    """``forks`` forks 20 to 80 ms apart: what each child kept, whether it loaded, and how
    long each ``fork()`` took."""
    rows: list[dict[str, Any]] = []
    for _ in range(forks):
        time.sleep(rng.uniform(0.02, 0.08))
        started = time.perf_counter()

        def body(report: Callable[[Any], None]) -> None:
            # A child hung (a lock a parent thread held at the fork: OpenSSL's, over TLS)
            # prints where, to stderr, and exits without a report.
            faulthandler.dump_traceback_later(HUNG, exit=True)
            states = socket_states(port)
            try:
                loaded = load.child_load() >= 0
            except Exception:
                loaded = False
            report([states, loaded])

        child = ForkedChild(body)
        forked_in = time.perf_counter() - started
        try:
            reported = child.read(timeout=2 * HUNG)
        finally:
            status = child.wait()
        states, loaded = reported if reported is not None else ([], False)
        rows.append(
            {
                "states": states,
                "loaded": loaded and status == 0,
                "hung": reported is None,
                "fork_ms": forked_in * 1e3,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("face", choices=["threads", "coroutines"])
    parser.add_argument("server", choices=["close", "keepalive"])
    parser.add_argument("--forks", type=int, default=30)
    parser.add_argument("--tls", action="store_true", help="serve moto over HTTPS")
    parser.add_argument(
        "--given", action="store_true", help="give the source a used client to own (connect)"
    )
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    with MotoDynamoDB(keep_alive=args.server == "keepalive", tls=args.tls) as moto:
        if args.tls:
            os.environ["AWS_CA_BUNDLE"] = moto.ca_file  # read as each client is made
        admin = moto.client()
        create_table(admin, "forked", "id", "S", None)
        seed_items(admin, "forked", KEYS)
        admin.close()  # its kept-alive connection is this script's, not the source's
        port = int(moto.endpoint_url.rpartition(":")[2])
        settings = moto.settings(table="forked", key="id", connect_timeout=5, read_timeout=10)
        load = Load(args.face, settings, rng, given=args.given)
        time.sleep(0.3)
        rows = fork_under(load, port, args.forks, rng)
        load.finish()
    kept = [len(row["states"]) for row in rows]
    print(
        json.dumps(
            {
                "face": args.face,
                "server": args.server,
                "tls": args.tls,
                "given": args.given,
                "forks": args.forks,
                "children_with_copies": sum(1 for count in kept if count),
                "copies": sum(kept),
                "states_of_copies": [row["states"] for row in rows if row["states"]],
                "children_loaded": sum(1 for row in rows if row["loaded"]),
                "children_hung": sum(1 for row in rows if row["hung"]),
                "parent_loads": load.loads,
                "parent_errors": load.errors,
                "fork_ms_median": round(statistics.median(row["fork_ms"] for row in rows), 1),
                "fork_ms_max": round(max(row["fork_ms"] for row in rows), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
