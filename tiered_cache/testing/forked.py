"""Run a function in a forked child and read what it reports, for fork tests (stdlib only)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import IO, Any


class ForkedChild:
    """A child process running ``body(report)``; each ``report(value)`` is one JSON line the
    parent reads with :meth:`read`. The child never returns into the caller's code (it exits
    with status 0 when ``body`` returned, 1 when it raised)."""

    def __init__(self, body: Callable[[Callable[[Any], None]], None]) -> None:
        readable, writable = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(readable)
            status = 1

            def report(value: Any) -> None:
                os.write(writable, json.dumps(value).encode() + b"\n")

            try:
                body(report)
                status = 0
            finally:
                os._exit(status)
        os.close(writable)
        # Unbuffered: a report not read yet is still in the pipe, where select() sees it.
        self._reports: IO[bytes] = os.fdopen(readable, "rb", buffering=0)

    def read(self, timeout: float | None = None) -> Any:
        """The child's next report; ``None`` once it exited without one. With ``timeout``, a
        child that reports nothing within it (hung: a deadlock) is killed and
        :class:`TimeoutError` raised, so that it cannot hang the test run."""
        if timeout is not None and not select.select([self._reports], [], [], timeout)[0]:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()
            raise TimeoutError(f"the forked child reported nothing within {timeout} s")
        line = self._reports.readline()
        return json.loads(line) if line else None

    def reports_within(self, timeout: float) -> bool:
        """Whether the child reports (or exits) within ``timeout``; nothing is read, and a
        child that does not is left running (:meth:`read` kills it)."""
        return bool(select.select([self._reports], [], [], timeout)[0])

    def kill(self) -> None:
        """Kill the child if it still runs and reap it (a round's end, whatever happened)."""
        with contextlib.suppress(ChildProcessError, OSError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)

    def wait(self) -> int:
        """The child's exit code."""
        self._reports.close()
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def in_a_child(body: Callable[[], Any], timeout: float | None = None) -> Any:
    """Fork, run ``body()`` in the child and return what it returned (as JSON carries it),
    once the child exited; :class:`RuntimeError` if it failed, :class:`TimeoutError` if it
    returned nothing within ``timeout`` (see :meth:`ForkedChild.read`)."""
    forked = ForkedChild(lambda report: report(body()))
    value = forked.read(timeout=timeout)
    status = forked.wait()
    if status != 0:
        raise RuntimeError(f"the forked child failed (exit status {status})")
    return value


def reports_between(
    steps: Sequence[Callable[[], Any]], betweens: Sequence[Callable[[], None]], timeout: float
) -> tuple[list[Any], int]:
    """Fork; the child reports what each of ``steps`` returns, one after another, and before
    each step but the first waits while the parent calls the ``betweens`` in turn (a fault
    made or undone, a wait for the child's effect). Returns the reports and the child's exit
    code; a child that reports nothing within ``timeout`` is killed (:meth:`ForkedChild.read`)."""
    go_on, told = os.pipe()

    def body(report: Callable[[Any], None]) -> None:
        os.close(told)
        for number, step in enumerate(steps):
            if number:
                os.read(go_on, 1)
            report(step())

    child = ForkedChild(body)
    os.close(go_on)
    try:
        reports = [child.read(timeout=timeout)]
        for between in betweens:
            between()
            os.write(told, b"x")
            reports.append(child.read(timeout=timeout))
    except BaseException:
        child.kill()
        raise
    finally:
        os.close(told)
    return reports, child.wait()


def _tcp_sockets() -> list[tuple[int, str, str]]:
    """The TCP sockets of this network namespace, from /proc: the far end's port, the state
    (as the kernel's hex code: ``01`` established, ``02`` SYN sent) and ``socket:[inode]``,
    as a descriptor's link names it."""
    found: list[tuple[int, str, str]] = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                far_port = int(fields[2].rpartition(":")[2], 16)
                found.append((far_port, fields[3], f"socket:[{fields[9]}]"))
    return found


def sockets_to(port: int) -> int:
    """This process's descriptors of TCP sockets whose far end is loopback ``port`` (from
    /proc: the sockets of the network namespace, then this process's descriptors)."""
    ends = {name for far_port, _, name in _tcp_sockets() if far_port == port}
    count = 0
    for descriptor in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            count += os.readlink(f"/proc/self/fd/{descriptor}") in ends
    return count


def connects_waiting(port: int) -> int:
    """How many TCP sockets of this network namespace (any process's) wait in their connect
    to loopback ``port``: their SYN sent, unanswered."""
    return sum(1 for far_port, state, _ in _tcp_sockets() if far_port == port and state == "02")


def messages_of(records: Iterable[logging.LogRecord], logger: str) -> list[str]:
    """The messages of ``records`` (a test's captured log: ``caplog.records``) that
    ``logger`` made: in a forked child, those of its copy of the capture, the restarts' too."""
    return [record.getMessage() for record in records if record.name == logger]


async def refusals(
    calls: Iterable[Awaitable[Any]], refused: type[Exception], says: str
) -> list[Any]:
    """Each call awaited in turn, for a part that must refuse its calls in a forked child:
    ``"sent"`` if it returned, whether its ``refused`` error's message holds ``says``, or the
    name of any other error's type."""
    seen: list[Any] = []
    for call in calls:
        try:
            await call
            seen.append("sent")
        except refused as exc:
            seen.append(says in str(exc))
        except Exception as exc:
            seen.append(type(exc).__name__)
    return seen
