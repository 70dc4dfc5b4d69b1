"""The servers' parent-death guard: a watchdog process that kills the test servers when the
process that started them dies, however it dies (stdlib only).

:mod:`tiered_cache.testing.servers` stops its servers on context exit and, as a last resort,
at interpreter exit. Neither runs when the test process is killed: SIGKILL (``timeout -s
KILL``, the OOM killer) runs nothing, and SIGTERM's default action (``timeout``'s signal) ends
the interpreter without its atexit hooks. The servers then lived on with ppid 1, holding their
ports and temporary directories.

The watchdog is one small process per test process, started with the first server. It reads
the lines the test process writes on a pipe ("guard this process group", "forget it", "this
directory is a server's", "it is gone") and, at the pipe's end of file, kills every group
still guarded and removes every directory still listed. Only the test process (and its
forks) hold the pipe's write end, so the end of file comes when the last of them is gone, by
any death, and never before.

Chosen over ``prctl(PR_SET_PDEATHSIG)``, which is Linux-only and fires when the *thread* that
forked the server ends: a server started from a short-lived thread (a worker of a pool, a
fixture's helper thread) would have died with it. And it needs no ``preexec_fn``, which is not
safe in a process with threads. The watchdog runs in a session of its own, so a signal sent
to the test's process group (Ctrl-C; ``timeout``, which signals its whole group) does not end
it before it did its work. What it cannot cover: a test process killed in the instant between
a server's start and the line that guards it (the server is then left running, as before).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path


class Reaper:
    """The test process's side of the watchdog: started on first use; if it cannot start
    (or died), guarding does nothing and the servers rely on the atexit hook alone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: int | None = None
        self._failed = False
        #: The watchdog's process id, once started.
        self.pid: int | None = None

    def after_fork_in_child(self) -> None:
        """A forked child keeps the pipe (its servers are guarded by the same watchdog),
        not a lock another thread of the parent may have held at the fork."""
        self._lock = threading.Lock()

    def guard(self, pgid: int) -> None:
        """Kill process group ``pgid`` if this process dies before :meth:`forget`."""
        self._send(["guard", pgid])

    def forget(self, pgid: int) -> None:
        """Process group ``pgid`` was stopped here: nothing to kill."""
        self._send(["forget", pgid])

    def keep_clean(self, directory: Path) -> None:
        """Remove ``directory`` if this process dies before :meth:`cleaned`."""
        self._send(["dir", str(directory)])

    def cleaned(self, directory: Path) -> None:
        """``directory`` was removed here."""
        self._send(["undir", str(directory)])

    def _send(self, message: list[object]) -> None:
        line = (json.dumps(message) + "\n").encode()
        with self._lock:
            pipe = self._started()
            if pipe is None:
                return
            try:
                # One write of less than PIPE_BUF bytes: whole, even beside a forked child's.
                os.write(pipe, line)
            except OSError:  # the watchdog is gone: the atexit hook is what is left
                self._failed = True

    def _started(self) -> int | None:
        """The pipe's write end, the watchdog started if need be (under the lock)."""
        if self._failed:
            return None
        if self._pipe is not None:
            return self._pipe
        read_end, write_end = os.pipe()  # not inherited by the processes started later
        try:
            # Run by its path, without site (no import of the package, no .pth files): a
            # few milliseconds, once per test process.
            watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            os.close(write_end)
            self._failed = True
            return None
        finally:
            os.close(read_end)
        self._pipe = write_end
        self.pid = watchdog.pid
        # It outlives this process by design: no wait for it, and no "still running"
        # ResourceWarning when the Popen object is dropped.
        watchdog.returncode = 0
        return write_end


#: The one watchdog of this process (and of its forks).
REAPER = Reaper()
os.register_at_fork(after_in_child=REAPER.after_fork_in_child)


def _watch(lines: Iterable[bytes]) -> None:
    """The watchdog: follow the guard lines until end of file, then kill and remove."""
    groups: set[int] = set()
    directories: set[str] = set()
    for raw in lines:
        with contextlib.suppress(ValueError, TypeError):
            verb, what = json.loads(raw)
            if verb == "guard":
                groups.add(int(what))
            elif verb == "forget":
                groups.discard(int(what))
            elif verb == "dir":
                directories.add(str(what))
            elif verb == "undir":
                directories.discard(str(what))
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    # Nothing may end the watchdog early but the end of its pipe: a terminal's signals do not
    # reach its session, and a hang-up is ignored.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch(sys.stdin.buffer)
