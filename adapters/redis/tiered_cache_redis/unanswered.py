"""Commands sent to Redis without waiting for any answer: a closing tier's last give-back.

A tier closing while Redis stalls (a fork for a save, a swap storm, a paused VM: SIGSTOP) has
lease calls that timed out in Redis's sockets: they run when Redis wakes, under tokens only
this tier knows (:mod:`tiered_cache_redis.doubted`). Its client cannot give them back: the
connections of the calls that timed out were dropped, and a new one waits for the answer to
its handshake (``CLIENT SETINFO``, ``AUTH``, ``SELECT``) before it sends anything, so nothing
goes out. Here a plain socket carries the handshake's commands and the give-back in one write
and waits for no answer: the kernel takes the connection while Redis is stopped, and Redis,
as it wakes, reads its older connections (the stalled calls) before it accepts this one, so
the give-back runs after the calls it undoes. If Redis answers, the answers are read to the
end (bounded by the timeout), so that it closes the connection itself.

Only for a plain single server over TCP or a unix socket (the connection kinds whose
handshake is the commands above): TLS needs the server's answer to its own handshake, and a
cluster the node of each key; those are not sent (the tier says so in its log).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any

#: One command: ``("EVAL", script, 1, name, token)``.
Command = Sequence[Any]


def encoded(commands: Sequence[Command]) -> bytes:
    """``commands`` in Redis's protocol (RESP arrays of bulk strings)."""
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
    return bytes(out)


def handshake(options: Mapping[str, Any]) -> list[Command]:
    """The commands a connection with ``options`` (a pool's connection arguments) sends
    before anything else: ``AUTH`` with its credentials, ``SELECT`` of its database."""
    commands: list[Command] = []
    provider = options.get("credential_provider")
    credentials: Sequence[str] = ()
    if provider is not None:
        credentials = tuple(provider.get_credentials())
    elif options.get("password") is not None:
        username = options.get("username")
        credentials = (
            (options["password"],) if username is None else (username, options["password"])
        )
    if credentials:
        commands.append(("AUTH", *credentials))
    if options.get("db"):
        commands.append(("SELECT", options["db"]))
    return commands


def send_unanswered(
    options: Mapping[str, Any], commands: Sequence[Command], within: float | None = None
) -> None:
    """Send ``commands`` on a connection of their own made from ``options`` (a plain pool's
    connection arguments: ``host`` and ``port``, or ``path``), after its handshake's; raises
    ``OSError`` if the connection cannot be made or written (within the connect timeout).
    ``within``: no step (the connect, the write, each read of the answers) waits longer,
    whatever the client's own timeouts (none, on a client made by hand without them): a
    loop's end must not wait as long as Redis stalls."""
    connect_timeout = _capped(
        options.get("socket_connect_timeout") or options.get("socket_timeout"), within
    )
    timeout = _capped(options.get("socket_timeout"), within)
    path = options.get("path")
    if path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(connect_timeout)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
    else:
        address = (options.get("host", "localhost"), options.get("port", 6379))
        sock = socket.create_connection(address, timeout=connect_timeout)
    with sock:
        sock.settimeout(timeout)
        sock.sendall(encoded([*handshake(options), *commands]))
        sock.shutdown(socket.SHUT_WR)  # Redis runs what it read, answers, and closes
        try:
            while sock.recv(65536):
                pass
        except OSError:  # a Redis that does not answer: the commands run when it wakes
            pass


def _capped(timeout: float | None, within: float | None) -> float | None:
    """``timeout`` (None: none), no longer than ``within`` (None: no cap)."""
    if within is None:
        return timeout
    return within if timeout is None else min(timeout, within)
