"""Worker processes for tests/contrib/test_prometheus_multiprocess.py (run as a script).

Run with ``PROMETHEUS_MULTIPROC_DIR`` set, in a fresh interpreter: prometheus_client chooses
its multiprocess mode when first imported. One chain is built and registered, the process
reads through it, then forks ``WORKERS`` children (as gunicorn ``--preload`` forks its
workers), each of which reads keys of its own:

- parent, before the forks: 2 misses (loads of 3 ms each on the fake clock), 3 memory hits;
  its Redis tier (a port nobody listens on, breaker threshold 2) fails twice and opens.
- worker ``i``: ``i + 1`` misses (loads of 200 ms), ``2 * (i + 1)`` hits; Redis is skipped
  (the breaker it inherited is open for an hour of fake time).

``exit``: each worker leaves through ``sys.exit`` once done (as a gunicorn worker does), then
the parent prints ``{"parent": pid, "workers": [pids]}`` and exits. ``live``: the workers stay
up after their reads (copied by the mirror's thread, every 50 ms); the parent prints the pids
once all have read, and lets the workers go (they leave through ``os._exit``: no copy at exit)
when a line arrives on its standard input.

``again``: no fork; one process registers its chain, reads, closes the mirror, registers the
chain again and reads again; a second mirror while one is open is refused. Prints
``{"refused": message}``.
"""

from __future__ import annotations

import json
import os
import sys

from tiered_cache import TieredCache
from tiered_cache.contrib.prometheus import register
from tiered_cache.testing import FakeClock
from tiered_cache.testing.servers import free_port

WORKERS = 3
NAMESPACE = "tweets"


def reads(
    cache: TieredCache, clock: FakeClock, prefix: str, *, misses: int, hits: int, load: float
) -> None:
    def slow() -> str:
        clock.advance(load)
        return "v"

    keys = [f"{prefix}:{n}" for n in range(misses)]
    for key in keys:
        cache.get(key, slow)
    for n in range(hits):
        cache.get(keys[n % misses])


def chain(clock: FakeClock) -> TieredCache:
    return TieredCache.from_config(
        namespace=NAMESPACE,
        tiers=[
            {"kind": "memory", "admission": "always"},
            {
                "kind": "redis",
                "url": f"redis://127.0.0.1:{free_port()}/0",
                "timeout": "1s",
                "breaker": {"failure_threshold": 2, "cool_down": "1h"},
            },
        ],
        bus={"kind": "off"},
        clock=clock,
    )


def again() -> None:
    clock = FakeClock()
    cache = chain(clock)
    mirror = register(cache)
    reads(cache, clock, "parent", misses=2, hits=3, load=0.003)
    try:
        register(TieredCache.from_config(namespace="users", bus={"kind": "off"}))
    except ValueError as exc:
        refused = str(exc)
    mirror.close()
    register(cache)
    reads(cache, clock, "again", misses=6, hits=12, load=0.2)
    print(json.dumps({"refused": refused}))


def main(mode: str) -> None:
    if mode == "again":
        again()
        return
    clock = FakeClock()
    cache = chain(clock)
    if mode == "exit":
        register(cache)
    else:
        register(cache, refresh_every=0.05)
    reads(cache, clock, "parent", misses=2, hits=3, load=0.003)
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    workers = []
    for i in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            os.close(done_r)
            os.close(go_w)
            reads(cache, clock, f"w{i}", misses=i + 1, hits=2 * (i + 1), load=0.2)
            if mode == "exit":
                sys.exit(0)
            os.write(done_w, b".")
            os.read(go_r, 1)  # until the parent lets go (EOF)
            os._exit(0)
        workers.append(pid)
    os.close(done_w)
    os.close(go_r)
    if mode == "live":
        for _ in range(WORKERS):
            assert os.read(done_r, 1) == b"."
    print(json.dumps({"parent": os.getpid(), "workers": workers}), flush=True)
    if mode == "live":
        sys.stdin.readline()
    os.close(go_w)
    for pid in workers:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status


if __name__ == "__main__":
    main(sys.argv[1])
