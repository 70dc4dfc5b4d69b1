"""The private servers and the fault proxy that every package's tests rely on."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest

from tiered_cache.testing import servers
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import (
    FaultProxy,
    RedisCluster,
    RedisServer,
    RedisServerNotFound,
    RespError,
    ServerStartError,
    free_port,
    refused_port,
    resp_command,
)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_refused_port_refuses_and_no_server_can_take_it() -> None:
    """An address for "a Redis nobody answers" stays so for the whole run: a port of
    free_port() given as one was taken by a later server (moto's, on a port the OS picked),
    where a chain left open kept sending its HELLO."""
    port = refused_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with socket.socket() as taker, pytest.raises(OSError):
        taker.bind(("127.0.0.1", port))
    with pytest.raises(ServerStartError):
        RedisServer(port=port, startup_timeout=5).start()
    assert refused_port() != port


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Nor a port of a server stopped earlier in the run: a client of that one would reach
    the new server as if it were its own."""
    with RedisServer() as first:
        used = first.port
    ports = [free_port() for _ in range(300)]
    assert used not in ports
    assert len(set(ports)) == len(ports)


def test_server_answers_on_loopback_and_leaves_nothing_behind() -> None:
    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.port != 6379
        assert resp_command(server.port, "PING") == "PONG"
        assert resp_command(server.port, "SET", "k", "v") == "OK"
        assert resp_command(server.port, "GET", "k") == b"v"
        pid = server.pid
        directory = server.directory
        assert pid is not None
    assert not process_exists(pid)
    assert not directory.exists()
    assert not server.running


def test_no_persistence() -> None:
    with RedisServer() as server:
        resp_command(server.port, "SET", "k", "v")
        server.stop()
        server.start()
        assert resp_command(server.port, "GET", "k") is None
        assert list(server.directory.glob("*.rdb")) == []


def test_stop_kill_and_restart_on_the_same_port() -> None:
    with RedisServer() as server:
        port = server.port
        server.kill()
        assert not server.running
        with pytest.raises(OSError):
            resp_command(port, "PING", timeout=0.5)
        server.start()
        assert server.port == port
        assert resp_command(port, "PING") == "PONG"
        server.stop()
        server.start()
        assert resp_command(port, "PING") == "PONG"


def test_password() -> None:
    with RedisServer(password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        with pytest.raises(RespError, match="NOAUTH"):
            resp_command(server.port, "GET", "k")
        assert resp_command(server.port, "PING", password="s3cret") == "PONG"


def test_at_exit_hook_kills_live_servers() -> None:
    server = RedisServer().start()
    pid = server.pid
    assert pid is not None
    servers._stop_all_at_exit()
    assert not process_exists(pid)


def test_the_server_runs_in_its_own_process_group() -> None:
    with RedisServer() as server:
        assert server.pid is not None
        assert os.getpgid(server.pid) == server.pid
        assert os.getpgid(server.pid) != os.getpgid(0)


def test_a_missing_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    assert servers.redis_server_binary() is None
    with pytest.raises(RedisServerNotFound, match="apt-get install -y redis-server"):
        RedisServer()


def test_a_server_that_cannot_start_reports_its_log() -> None:
    with pytest.raises(servers.ServerStartError, match="exited at start"):
        RedisServer(extra_args=["--no-such-option", "1"]).start()


def test_cluster_of_three_masters() -> None:
    with RedisCluster() as cluster:
        assert len(cluster.startup_nodes) == 3
        assert cluster.url.startswith("redis+cluster://127.0.0.1:")
        for _, port in cluster.startup_nodes:
            info = resp_command(port, "CLUSTER", "INFO")
            assert isinstance(info, bytes)
            assert b"cluster_state:ok" in info
            assert b"cluster_known_nodes:3" in info
        pids = [node.pid for node in cluster.nodes]
    assert not any(process_exists(pid) for pid in pids if pid is not None)


# --- FaultProxy (in front of a plain echo server, so it is tested apart from Redis)


@pytest.fixture
def echo_server() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5.0)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy's reset() aborts this side too
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def test_proxy_forwards(echo_server: socket.socket) -> None:
    with FaultProxy(*echo_server.getsockname()) as proxy, connect(proxy) as sock:
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"
        assert proxy.connections == 1
    echo_server.close()


def test_proxy_cut_closes_live_connections_and_refuses_new_ones(
    echo_server: socket.socket,
) -> None:
    with FaultProxy(*echo_server.getsockname()) as proxy:
        sock = connect(proxy)
        sock.sendall(b"x")
        assert sock.recv(10) == b"x"
        proxy.cut()
        assert sock.recv(10) == b""  # closed under the client
        sock.close()
        with pytest.raises(ConnectionRefusedError):
            connect(proxy)
        proxy.restore()
        with connect(proxy) as again:
            again.sendall(b"y")
            assert again.recv(10) == b"y"
    echo_server.close()


def test_proxy_reset_sends_rst(echo_server: socket.socket) -> None:
    with FaultProxy(*echo_server.getsockname()) as proxy:
        with connect(proxy) as sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
            proxy.reset()
            with pytest.raises(ConnectionResetError):
                sock.sendall(b"y")
                sock.recv(10)
        with connect(proxy) as fresh:  # new connections are still accepted
            fresh.sendall(b"z")
            assert fresh.recv(10) == b"z"
    echo_server.close()


def test_proxy_delay_holds_data_back(echo_server: socket.socket) -> None:
    with FaultProxy(*echo_server.getsockname()) as proxy, connect(proxy, timeout=0.2) as sock:
        proxy.delay(1.0)
        sock.sendall(b"x")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.restore()
        sock.settimeout(5.0)
        assert sock.recv(10) == b"x"  # the held chunk arrives once the delay ends
    echo_server.close()


def test_proxy_close_stops_everything(echo_server: socket.socket) -> None:
    proxy = FaultProxy(*echo_server.getsockname())
    with connect(proxy) as sock:
        sock.sendall(b"x")
        assert sock.recv(10) == b"x"  # accepted and forwarding
        proxy.close()
        assert sock.recv(10) == b""
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    echo_server.close()


def test_proxy_stall_holds_new_clients_in_their_connect(echo_server: socket.socket) -> None:
    with FaultProxy(*echo_server.getsockname()) as proxy, connect(proxy) as live:
        live.sendall(b"w")
        assert live.recv(10) == b"w"  # accepted (one waiting to be would fill the queue)
        proxy.stall()
        client = socket.socket()
        client.settimeout(30.0)
        connected: list[bool] = []
        thread = threading.Thread(
            target=lambda: connected.append(client.connect_ex(("127.0.0.1", proxy.port)) == 0)
        )
        thread.start()
        until(lambda: proxy.connecting == 1, "the client's connect")
        live.sendall(b"x")
        assert live.recv(10) == b"x"  # a live connection goes on
        assert connected == []
        proxy.restore()
        thread.join(timeout=30.0)
        with client:
            client.sendall(b"y")
            assert client.recv(10) == b"y"
            assert [connected, proxy.connections, proxy.connecting] == [[True], 2, 0]
    echo_server.close()
