"""Private Redis servers and a fault-injecting TCP proxy, for tests and demos (stdlib only).

Everything listens on ``127.0.0.1`` only. Servers run in their own process group with
``--save "" --appendonly no`` in a temporary directory, and are stopped on context exit and, as
a last resort, at interpreter exit, so a failed test run leaves no ``redis-server`` behind. A
test process killed outright (SIGKILL, or SIGTERM, which skips the interpreter's exit) leaves
none either: a watchdog process kills them and removes their directories when it is gone
(:mod:`tiered_cache.testing.reaper`).

    with RedisServer() as server:          # redis://127.0.0.1:<free port>/0
        ...
    with RedisCluster() as cluster:        # 3 masters, cluster_state:ok
        ...
    with RedisServer() as server, FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.delay(1.0)                   # every chunk now arrives a second late
        proxy.trickle(1, 0.01)             # the server's bytes, one every 10 ms
        proxy.stall()                      # new clients wait in connect() (SYN_SENT)
        proxy.cut()                        # live connections closed, new ones refused
        proxy.restore()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from .forked import connects_waiting
from .reaper import REAPER

LOOPBACK = "127.0.0.1"
#: The proxy's accept queue (:meth:`FaultProxy.stall` cuts it to one place).
BACKLOG = 64

#: What to do when ``redis-server`` is not installed.
INSTALL_HINT = (
    "redis-server was not found on PATH; tiered-cache's tests and demo start a private one. "
    "Install it with: apt-get install -y redis-server   (macOS: brew install redis)"
)


class RedisServerNotFound(RuntimeError):
    """``redis-server`` (or ``redis-cli``) is not installed; the message says how to get it."""


class ServerStartError(RuntimeError):
    """A server did not start or did not answer in time; the message has its log's tail."""


def redis_server_binary() -> str | None:
    """The path of ``redis-server``, or ``None`` when it is not installed."""
    return shutil.which("redis-server")


def redis_cli_binary() -> str | None:
    """The path of ``redis-cli``, or ``None`` when it is not installed."""
    return shutil.which("redis-cli")


def require_redis_server() -> str:
    """The path of ``redis-server``, or :class:`RedisServerNotFound` saying how to install it."""
    binary = redis_server_binary()
    if binary is None:
        raise RedisServerNotFound(INSTALL_HINT)
    return binary


#: Every port :func:`free_port` handed out in this process: none is handed out twice, so a
#: server never starts where an earlier one of this process was, which a client of that one
#: (its chain left open) would reach, as if nothing had changed.
_handed_out: set[int] = set()
#: The sockets holding :func:`refused_port`'s ports, for the life of the process.
_held: list[socket.socket] = []


def free_port(*, also_free: Sequence[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (and ``port + offset`` for each
    offset), never one it handed out before in this process.

    There is an unavoidable race between picking and binding; callers that start a server retry
    with another port when the bind fails. For an address that must stay without a server
    (a Redis nobody answers), :func:`refused_port`.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port: int = probe.getsockname()[1]
        if port in _handed_out:
            continue
        if all(_port_is_free(port + offset) for offset in also_free):
            _handed_out.add(port)
            return port
    raise OSError("no free port pair found on 127.0.0.1")


def refused_port() -> int:
    """A TCP port on 127.0.0.1 that refuses every connection for as long as this process
    lives: bound and never listening, so that no server (of this process or another: a moto
    server on a port the OS picks) can take it. A port of :func:`free_port` given as "a Redis
    nobody answers" was taken by a moto server later in the run, and the bus of a chain
    left open sent its HELLO there every two seconds (werkzeug logged each, in other tests)."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((LOOPBACK, 0))
    if not _held:
        atexit.register(_let_go_of_held_ports)
    _held.append(holder)
    port: int = holder.getsockname()[1]
    return port


def _port_is_free(port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _let_go_of_held_ports() -> None:
    for holder in _held:
        holder.close()
    _held.clear()


# --- a minimal RESP client: enough to PING and read CLUSTER INFO without importing redis ---


def resp_command(
    port: int, *args: str, host: str = LOOPBACK, password: str | None = None, timeout: float = 1.0
) -> bytes | str | int | None:
    """Send one command over a fresh connection and return its reply.

    Simple strings come back as ``str``, bulk strings as ``bytes``, integers as ``int``; an error
    reply raises :class:`RespError`. Arrays are not needed here and are not supported.
    """
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        sock.makefile("rb") as reader,
    ):
        if password is not None:
            sock.sendall(_encode_command("AUTH", password))
            _read_reply(reader)
        sock.sendall(_encode_command(*args))
        return _read_reply(reader)


class RespError(Exception):
    """An error reply (``-ERR ...``) from a Redis server."""


def _encode_command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(reader: object) -> bytes | str | int | None:
    readline = reader.readline  # type: ignore[attr-defined]
    read = reader.read  # type: ignore[attr-defined]
    line: bytes = readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RespError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        length = int(body)
        if length < 0:
            return None
        data: bytes = read(length + 2)
        return data[:-2]
    raise ConnectionError(f"unsupported RESP reply type {kind!r}")


def _answers_ping(port: int, password: str | None, timeout: float) -> bool:
    try:
        reply = resp_command(port, "PING", password=password, timeout=timeout)
    except RespError as exc:
        # LOADING / MASTERDOWN mean "not yet"; anything else (NOAUTH) means it is serving.
        return not str(exc).startswith(("LOADING", "MASTERDOWN"))
    except OSError:
        return False
    return reply == "PONG"


# --- process bookkeeping: nothing survives the interpreter ---

# Strong references: a server nobody refers to any more must still be killed at exit.
_live: set[RedisServer] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.kill()
            server.cleanup()


atexit.register(_stop_all_at_exit)


class _Service:
    """A test service: ``with`` starts it (when it is not running from the start) and closes
    it, whatever happened inside."""

    def start(self) -> Self:
        return self

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisServer(_Service):
    """A private ``redis-server`` on a free loopback port, without persistence.

    Args:
        port: the port to listen on; a free one when not given.
        password: sets ``--requirepass``; :attr:`url` then carries it.
        extra_args: more ``redis-server`` arguments, e.g. ``["--maxmemory", "10mb"]``.
        startup_timeout: seconds to wait for the first PONG.

    :meth:`start` may be called again after :meth:`stop` or :meth:`kill`: the server comes back
    on the same port (with no data), which is what restart tests need.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self._binary = binary or require_redis_server()
        self._requested_port = port
        self._port: int | None = port
        self.password = password
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._has_started_before = False
        self._lock = threading.Lock()

    # -- addresses

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The port; fixed by the first :meth:`start`."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    @property
    def directory(self) -> Path:
        """The server's working directory (its log is ``redis.log`` there)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="tiered-cache-redis-"))
            REAPER.keep_clean(self._dir)
        return self._dir

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._process.pid if self.running and self._process is not None else None

    # -- life cycle

    def start(self) -> Self:
        """Start the server (no-op if running) and wait until it answers PING."""
        with self._lock:
            if self.running:
                return self
            attempts = 1 if self._port is not None else 5
            last_error: ServerStartError | None = None
            for _ in range(attempts):
                if self._port is None:
                    self._port = free_port(also_free=self._extra_ports())
                try:
                    self._spawn_and_wait()
                    break
                except ServerStartError as exc:
                    last_error = exc
                    if self._requested_port is None and not self._has_started_before:
                        self._port = None  # lost the race for the port: pick another
            else:
                assert last_error is not None
                raise last_error
            self._has_started_before = True
            with _live_lock:
                _live.add(self)
            return self

    def _extra_ports(self) -> Sequence[int]:
        # A cluster node also listens on port + 10000 (the cluster bus).
        return (10000,) if "--cluster-enabled" in self.extra_args else ()

    def _spawn_and_wait(self) -> None:
        log = self.directory / "redis.log"
        command = [
            self._binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(log),
        ]  # fmt: skip
        if self.password is not None:
            command += ["--requirepass", self.password]
        command += self.extra_args
        # A new session makes the server a process-group leader, so killpg reaches it (and
        # anything it forks) without touching the test runner's own group.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # Killed with this process, however it dies (the atexit hook runs only at its exit).
        REAPER.guard(self._process.pid)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                REAPER.forget(self._process.pid)
                self._process = None
                raise ServerStartError(
                    f"redis-server on port {self.port} exited at start: {self._log_tail()}"
                )
            if _answers_ping(self.port, self.password, timeout=0.5):
                return
            time.sleep(0.02)
        self._terminate(signal.SIGKILL)
        raise ServerStartError(
            f"redis-server on port {self.port} did not answer PING within "
            f"{self.startup_timeout}s: {self._log_tail()}"
        )

    def _log_tail(self, lines: int = 10) -> str:
        try:
            text = (self.directory / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); the port is kept."""
        with self._lock:
            self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        with self._lock:
            self._terminate(signal.SIGKILL)

    def _terminate(self, sig: signal.Signals, timeout: float = 5.0) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        REAPER.forget(process.pid)
        self._process = None
        with _live_lock:
            _live.discard(self)

    def cleanup(self) -> None:
        """Remove the temporary directory (after the server stopped)."""
        if self._dir is not None and not self.running:
            shutil.rmtree(self._dir, ignore_errors=True)
            REAPER.cleaned(self._dir)
            self._dir = None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self.cleanup()
        with _live_lock:
            _live.discard(self)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer(port={self._port}, {state})"


class RedisCluster(_Service):
    """A Redis Cluster of ``masters`` private nodes (no replicas) on free loopback ports.

    Attributes:
        nodes: the :class:`RedisServer` of each master.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        startup_timeout: float = 30.0,
        node_timeout_ms: int = 2000,
    ) -> None:
        if masters < 3:
            raise ValueError("Redis Cluster needs at least 3 masters")
        self._cli = redis_cli_binary()
        if self._cli is None:
            raise RedisServerNotFound(INSTALL_HINT.replace("redis-server was", "redis-cli was"))
        self.startup_timeout = startup_timeout
        self.nodes = [
            RedisServer(
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                ]
            )
            for _ in range(masters)
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every master."""
        return [(node.host, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port>``: the URL tiered-cache's Redis tier understands."""
        return f"redis+cluster://{LOOPBACK}:{self.nodes[0].port}"

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:<port>``: for ``redis.cluster.RedisCluster.from_url``."""
        return f"redis://{LOOPBACK}:{self.nodes[0].port}"

    def start(self) -> Self:
        """Start the nodes, join them into a cluster and wait for ``cluster_state:ok``."""
        try:
            for node in self.nodes:
                node.start()
            if not self._state_ok(self.nodes[0]):
                self._create()
            self._wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        assert self._cli is not None
        command = [self._cli, "--cluster", "create"]
        command += [f"{host}:{port}" for host, port in self.startup_nodes]
        command += ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.startup_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(
                f"redis-cli --cluster create did not finish in {self.startup_timeout}s"
            ) from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise ServerStartError(f"redis-cli --cluster create failed: {output[-2000:]}")

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if all(self._state_ok(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise ServerStartError(f"cluster on {self.startup_nodes} never reached cluster_state:ok")

    @staticmethod
    def _state_ok(node: RedisServer) -> bool:
        try:
            info = resp_command(node.port, "CLUSTER", "INFO", timeout=1.0)
        except (OSError, RespError):
            return False
        return isinstance(info, bytes) and b"cluster_state:ok" in info

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close()

    stop = close


class _Link:
    """One proxied connection: the client's socket and the upstream socket."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        #: Whether the head of a reply was handed on (:meth:`FaultProxy.hold_bodies`).
        self.head_passed = False

    def close(self, *, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                if reset:
                    # Linger 0 makes close() send RST instead of FIN: a "connection reset".
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy(_Service):
    """A threaded TCP proxy on a free loopback port in front of ``target_host:target_port``.

    Faults: :meth:`cut` (close live connections, refuse new ones), :meth:`reset` (RST the live
    connections), :meth:`delay` (hold every forwarded chunk back), :meth:`stall` (hold new
    clients in their ``connect()``), all undone by :meth:`restore`.
    """

    def __init__(self, target_host: str, target_port: int, *, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._delay = 0.0
        #: Links whose chunk :meth:`delay` holds back now (see :attr:`holding`).
        self._holding = 0
        #: Replies handed on ``(bytes, seconds)`` at a time (see :meth:`trickle`), or None.
        self._trickle: tuple[int, float] | None = None
        #: Whether replies' bodies are held back (see :meth:`hold_bodies`).
        self._bodies_held = False
        self._closed = threading.Event()
        #: The address of the proxy's own connection holding its accept queue full while
        #: :meth:`stall` holds (dropped when accepted), or None: nothing is accepted then.
        self._stalled_by: tuple[str, int] | None = None
        #: The filler of the stall :meth:`restore` ended, until it is accepted and dropped.
        self._held_open_by: tuple[str, int] | None = None
        self._listener: socket.socket | None = None
        self._port = port or 0
        self._listen()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"FaultProxy:{self.port}", daemon=True
        )
        self._acceptor.start()

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The port clients connect to (kept across :meth:`cut`/:meth:`restore`)."""
        return self._port

    @property
    def connections(self) -> int:
        """How many proxied connections are open now."""
        with self._lock:
            return len(self._links)

    @property
    def holding(self) -> int:
        """How many connections have a chunk :meth:`delay` holds back now (a request the
        client has written, and waits on): a test's sign that a caller is inside a call."""
        with self._lock:
            return self._holding

    @property
    def connecting(self) -> int:
        """How many clients wait in their ``connect()`` to the proxy now (their SYN sent,
        unanswered: :meth:`stall`), from /proc: a test's sign that a client is making a
        connection, its socket open, its handshake not done."""
        return connects_waiting(self.port)

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        """``redis://127.0.0.1:<proxy port>/0``, or with another scheme or path."""
        return f"{scheme}://{LOOPBACK}:{self.port}{path}"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self._port))
        listener.listen(BACKLOG)
        # Never blocks in accept() under the lock (see _accept_loop).
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        self._listener = listener

    # -- faults

    def cut(self) -> None:
        """Close every live connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            listener, self._listener = self._listener, None
            links = list(self._links)
        if listener is not None:
            # Shutting the listening socket down (not just closing it, which waits for a thread
            # blocked in select) makes new connects fail with "connection refused" at once.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
        for link in links:
            link.close()

    def reset(self) -> None:
        """Abort every live connection with a TCP RST; new connections are still accepted."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(reset=True)

    def delay(self, seconds: float) -> None:
        """Hold back each forwarded chunk, in both directions, by ``seconds`` (0: no delay)."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._delay = seconds

    def trickle(self, size: int, every: float) -> None:
        """Hand what the server sends on ``size`` bytes at a time, one piece every ``every``
        seconds (a link that delivers, but slowly: each piece arrives well inside a socket
        timeout, the whole reply long after it)."""
        if size < 1 or every < 0:
            raise ValueError("a trickle needs a size of at least 1 and a pause of 0 or more")
        self._trickle = (size, every)

    def stall(self) -> None:
        """Hold new clients in their ``connect()`` (the socket made, the TCP handshake not
        done) until :meth:`restore`: the proxy accepts nothing, and its accept queue, cut to
        one place, is held full by a connection of its own (closed at its end at once, so
        that no process holds a socket to the proxy for it), so the kernel drops the clients'
        SYNs. They send them again (after 1 s, then 3 s, ...) and connect once restored.
        Live connections go on; one the proxy has not accepted yet fills the queue itself
        (the filler's connect then times out)."""
        with self._lock:
            listener = self._listener
            if listener is None or self._stalled_by is not None:
                raise RuntimeError("stall() needs a listening proxy that is not stalled")
            listener.listen(0)  # Linux: one connection waiting fills the queue
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(2.0)
            with filler:
                filler.bind((LOOPBACK, 0))
                self._stalled_by = filler.getsockname()
                filler.connect((LOOPBACK, self.port))

    def hold_bodies(self) -> None:
        """Hand on what the server sends up to the end of an HTTP reply's head (its first
        blank line) on each link, and hold the rest back, counted in :attr:`holding`, until
        :meth:`restore`: a client has read the head and waits in the body. (For links of one
        reply each, as a server that answers ``Connection: close`` makes; a blank line split
        between two reads is not seen.)"""
        self._bodies_held = True

    def reopen(self) -> None:
        """Undo :meth:`cut` alone: accept connections again, a :meth:`delay` or
        :meth:`trickle` still applying to them."""
        with self._lock:
            if self._listener is None and not self._closed.is_set():
                self._listen()

    def restore(self) -> None:
        """Undo :meth:`cut`, :meth:`delay` and :meth:`trickle`: accept connections again,
        forward at once."""
        self._delay = 0.0
        self._trickle = None
        self._bodies_held = False
        with self._lock:
            if self._stalled_by is not None and self._listener is not None:
                self._listener.listen(BACKLOG)
            # The filler, first in the queue, is dropped when accepted.
            self._held_open_by, self._stalled_by = self._stalled_by, None
        self.reopen()

    def close(self) -> None:
        """Stop listening, close every connection and stop the threads."""
        self._closed.set()
        self.cut()
        self._acceptor.join(timeout=2.0)

    # -- threads

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            listener = self._listener
            if listener is None:
                self._closed.wait(0.02)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                with self._lock:  # stall() takes effect before its filler connects
                    if self._stalled_by is not None:
                        client = None
                    else:
                        client, address = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed by cut() under us, or nothing waits
            if client is None:
                self._closed.wait(0.02)
                continue
            if address == self._held_open_by:  # a stall's filler, closed at its end
                self._held_open_by = None
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                if self._listener is None:  # cut() happened while connecting upstream
                    link.close()
                    continue
                self._links.add(link)
            threading.Thread(
                target=self._pump, args=(link,), name=f"FaultProxy:{self.port}:link", daemon=True
            ).start()

    def _hold(self, link: _Link) -> bool:
        """Wait out the delay in short steps; True if the link was closed meanwhile.

        Short steps so that restore() releases held data at once, and cut() or reset() end the
        wait without forwarding anything.
        """
        deadline = time.monotonic() + self._delay
        while self._delay:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if link.closed.wait(min(remaining, 0.01)):
                return True
        return False

    def _held(self, link: _Link) -> bool:
        """:meth:`_hold`, counted in :attr:`holding` meanwhile."""
        with self._lock:
            self._holding += 1
        try:
            return self._hold(link)
        finally:
            with self._lock:
                self._holding -= 1

    def _head_handed_on(self, link: _Link, data: bytes) -> bytes:
        """Send the client what ``data`` holds of a reply's head; the rest (the body)."""
        if link.head_passed:
            return data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            link.client.sendall(data)
            return b""
        link.head_passed = True
        link.client.sendall(data[: end + 4])
        return data[end + 4 :]

    def _body_held(self, link: _Link) -> bool:
        """Wait while :meth:`hold_bodies` holds, counted in :attr:`holding`; True if the link
        was closed meanwhile."""
        with self._lock:
            self._holding += 1
        try:
            while self._bodies_held:
                if link.closed.wait(0.01):
                    return True
            return False
        finally:
            with self._lock:
                self._holding -= 1

    def _dribble(self, link: _Link, data: bytes, size: int, every: float) -> bool:
        """Send ``data`` to the client in pieces (see :meth:`trickle`); True if the link was
        closed meanwhile. A restore() sends the rest at once."""
        for start in range(0, len(data), size):
            if self._trickle is None:
                link.client.sendall(data[start:])
                return False
            link.client.sendall(data[start : start + size])
            if link.closed.wait(every):
                return True
        return False

    def _pump(self, link: _Link) -> None:
        peers = {link.client: link.upstream, link.upstream: link.client}
        try:
            while not link.closed.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self._delay and self._held(link):
                        return
                    if self._bodies_held and sock is link.upstream:
                        data = self._head_handed_on(link, data)
                        if data and self._body_held(link):
                            return
                    trickle = self._trickle
                    if trickle is not None and sock is link.upstream:
                        if self._dribble(link, data, *trickle):
                            return
                        continue
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)
