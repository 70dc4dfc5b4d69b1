"""A test process killed outright leaves no redis-server behind (tiered_cache.testing.reaper).

servers.py stopped its servers on context exit and at interpreter exit only. A test run killed
by SIGKILL (``timeout -s KILL``), or by SIGTERM (``timeout``'s default, whose default action
skips the interpreter's exit), left every server it had started running with ppid 1, holding
its port and its temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: Starts a server, a cluster and a server from a thread that then ends (a guard tied to the
#: forking thread would kill that one early), prints what it started, and waits to be killed.
CHILD = """
import json, sys, threading
from tiered_cache.testing.reaper import REAPER
from tiered_cache.testing.servers import RedisCluster, RedisServer

servers = [RedisServer().start()]
servers += RedisCluster().start().nodes
started = threading.Thread(target=lambda: servers.append(RedisServer().start()))
started.start()
started.join()
print(json.dumps({
    "pids": [server.pid for server in servers],
    "directories": [str(server.directory) for server in servers],
    "watchdog": REAPER.pid,
}), flush=True)
sys.stdin.read()
"""


def running(pid: int, command: str | None = "redis-server") -> bool:
    """Whether ``pid`` runs (not a zombie) ``command`` (None: any), not a process that took
    its number since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the process itself
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    name, _, rest = stat.rpartition(")")
    named = command is None or name.endswith(f"({command}")
    return named and rest.split()[0] != "Z"


def still_running(
    pids: list[int], within: float, command: str | None = "redis-server"
) -> list[int]:
    """The ``pids`` still running ``command`` once they are all gone, or ``within`` seconds
    have passed."""
    deadline = time.monotonic() + within
    left = [pid for pid in pids if running(pid, command)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if running(pid, command)]
    return left


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_servers_of_a_killed_test_process_are_killed(sig: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline())
        pids = started["pids"]
        assert len(pids) == 5
        assert still_running(pids, within=0) == pids  # the thread's server outlived its thread
        child.send_signal(sig)
        assert child.wait(timeout=30) == -sig
        assert still_running(pids, within=30) == []
        # The watchdog removes the directories, then ends.
        assert still_running([started["watchdog"]], within=30, command=None) == []
        assert [path for path in started["directories"] if Path(path).exists()] == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in pids:  # what a failing run left, killed here
            if running(pid):
                os.killpg(pid, signal.SIGKILL)
        if child.stdin is not None:
            child.stdin.close()
        if child.stdout is not None:
            child.stdout.close()
