"""GET and MGET replies read straight off the socket, for redis-py's pure-Python parsers.

redis-py's own parsers (without hiredis) read a reply one element at a time: a ``readline``
and a ``read`` through a ``BytesIO`` buffer, several Python calls each, about a microsecond a
value of an ``MGET``. The replies the tier's reads expect are few -- a bulk string, a null, an
array of those, an error -- so :func:`read_reply` reads them from the connection's socket in
large chunks and cuts the values out with ``bytes.find`` and slices. With hiredis installed
redis-py's C parser is faster than this, and is used instead (:func:`raw_reads`).

Anything else -- a RESP3 push before the reply (client tracking, a server's maintenance
notice), a type these replies do not have, bytes after the reply -- is handed to redis-py's
parser as received (:func:`give_back`), which reads it as it would have, handlers and all.
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any

import redis

try:  # redis-py's pure-Python parsers; a layout of redis-py without them: never read raw
    from redis._parsers import _RESP2Parser, _RESP3Parser

    _PURE_PARSERS: tuple[type, ...] = (_RESP2Parser, _RESP3Parser)
except ImportError:  # pragma: no cover - depends on the redis-py version
    _PURE_PARSERS = ()

#: Bytes asked of the socket at a time (redis-py's parsers ask for 64 KiB too).
CHUNK = 65536
_CRLF = b"\r\n"
_BULK, _NULL, _ARRAY, _ERROR = ord("$"), ord("_"), ord("*"), ord("-")
#: What a reply to GET or MGET starts with; anything else is left to redis-py's parser.
_EXPECTED = frozenset((_BULK, _NULL, _ARRAY, _ERROR))


def raw_reads(conn: Any) -> bool:
    """Whether ``conn``'s replies may be read off its socket: its parser is redis-py's
    pure-Python one and holds nothing unread (a reply read raw must start at the socket)."""
    parser = conn._parser
    if type(parser) not in _PURE_PARSERS:
        return False
    buffer = parser._buffer
    return buffer is not None and conn._sock is not None and buffer.unread_bytes() == 0


class Reply:
    """One reply being read from ``sock``: the bytes received so far and where parsing is.

    The socket's timeout bounds the whole reply, not each receive: a link that hands the
    reply on a few bytes at a time, each inside the timeout, must not keep a read waiting
    for seconds (redis.asyncio bounds its reads so too). The first receive -- almost every
    reply's only one -- runs with the socket's own timeout; a later one with what is left
    of it, and :meth:`restore` puts the socket's back.
    """

    __slots__ = ("buf", "deadline", "pos", "sock", "timeout")

    def __init__(self, sock: socket.socket, received: bytes = b"", started: float = 0.0) -> None:
        self.sock = sock
        #: What was received already (``read_reply``'s first receive, made at ``started``).
        self.buf = received
        self.pos = 0
        #: The socket's own timeout (None: none), and when the reply must be in (0: no
        #: receive made yet).
        self.timeout = sock.gettimeout()
        self.deadline = 0.0
        if received and self.timeout is not None:
            self.deadline = started + self.timeout

    def more(self, least: int = 1) -> None:
        """Receive at least ``least`` more bytes (keeping the unparsed ones)."""
        chunks = [self.buf[self.pos :]]
        got = 0
        while got < least:
            if self.timeout is not None:
                self._time_left()
            data = self.sock.recv(max(CHUNK, least - got))
            if not data:
                raise redis.ConnectionError("Connection closed by server.")
            chunks.append(data)
            got += len(data)
        self.buf = b"".join(chunks)
        self.pos = 0

    def _time_left(self) -> None:
        """Before a receive: the first starts the reply's clock; a later one may wait only
        for what is left of the timeout (:class:`TimeoutError` if nothing is)."""
        assert self.timeout is not None
        if not self.deadline:
            self.deadline = time.monotonic() + self.timeout
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the reply did not arrive within the timeout")
        self.sock.settimeout(left)

    def restore(self) -> None:
        """Give the socket its own timeout back (after a reply read in several receives)."""
        if self.deadline and self.sock.gettimeout() != self.timeout:
            self.sock.settimeout(self.timeout)

    def line(self) -> bytes:
        """The next line, without its CRLF."""
        end = self.buf.find(_CRLF, self.pos)
        while end < 0:
            self.more()
            end = self.buf.find(_CRLF, self.pos)
        start, self.pos = self.pos, end + 2
        return self.buf[start:end]

    def bulk(self, size: int) -> bytes:
        """The next ``size`` bytes and their CRLF."""
        missing = self.pos + size + 2 - len(self.buf)
        if missing > 0:
            self.more(missing)
        start = self.pos
        end = start + size
        if self.buf[end : end + 2] != _CRLF:
            raise redis.ConnectionError("Protocol error: a bulk string without its CRLF")
        self.pos = end + 2
        return self.buf[start:end]

    def items(self, count: int, parser: Any) -> list[Any]:
        """An array's ``count`` values: bulk strings and nulls received whole are cut out
        inline (an MGET's values, one ``find`` and one slice each); anything else, or a value
        not received yet, goes through :meth:`value`."""
        items: list[Any] = []
        append = items.append
        for _ in range(count):
            buf, pos = self.buf, self.pos
            end = buf.find(_CRLF, pos)
            if end > pos and buf[pos] == _BULK:
                size = int(buf[pos + 1 : end])
                if size < 0:
                    self.pos = end + 2
                    append(None)
                    continue
                start = end + 2
                stop = start + size
                if buf[stop : stop + 2] == _CRLF:
                    self.pos = stop + 2
                    append(buf[start:stop])
                    continue
            append(self.value(parser))
        return items

    def value(self, parser: Any) -> Any:
        """The next value: bytes, None, a list of those, or a ResponseError (not raised)."""
        line = self.line()
        kind = line[:1][0] if line else -1
        if kind == _BULK:
            size = int(line[1:])
            return None if size < 0 else self.bulk(size)
        if kind == _NULL:
            return None
        if kind == _ARRAY:
            count = int(line[1:])
            return None if count < 0 else self.items(count, parser)
        if kind == _ERROR:
            return parser.parse_error(line[1:].decode("utf-8", errors="replace"))
        raise redis.ConnectionError(f"Protocol error: unexpected reply {line[:20]!r}")


def read_reply(conn: Any) -> Any:
    """The reply to the command just sent on ``conn`` (see the module's docstring), with
    redis-py's ``read_response`` errors: a timeout or a broken socket disconnects ``conn`` and
    raises :class:`redis.TimeoutError` / :class:`redis.ConnectionError`; an error reply is raised
    as redis-py raises it, the connection kept.

    The first receive is made here, with the socket's own timeout (as :class:`Reply`'s
    first): a ``GET``'s reply that came whole and alone in it -- nearly every L2 hit -- is cut
    out at once, without a :class:`Reply`; anything else is read on by a :class:`Reply` from
    the bytes received, its timeout counted from before this receive."""
    parser = conn._parser
    sock = conn._sock
    reply: Reply | None = None
    try:
        started = time.monotonic()
        data = sock.recv(CHUNK)
        if not data:
            raise redis.ConnectionError("Connection closed by server.")
        first = data[0]
        if first == _BULK:
            end = data.find(_CRLF)
            if end > 0:
                size = int(data[1:end])
                stop = end + 2 + size
                if size >= 0 and len(data) == stop + 2 and data.endswith(_CRLF):
                    return _done(conn, data[end + 2 : stop])
        reply = Reply(sock, data, started)
        ours = first in _EXPECTED
        value = reply.value(parser) if ours else None
    except TimeoutError:
        conn.disconnect()
        raise redis.TimeoutError("Timeout reading from socket") from None
    except OSError as exc:
        conn.disconnect()
        raise redis.ConnectionError(f"Error while reading from socket: {exc.args}") from None
    except BaseException:
        conn.disconnect()  # the stream is out of step
        raise
    reply.restore()
    if not ours:
        # A push before the reply, or a type this reader does not know: redis-py's parser
        # reads it all, from the bytes received so far on.
        give_back(parser, reply.buf)
        return conn.read_response()
    if reply.pos != len(reply.buf):
        give_back(parser, reply.buf[reply.pos :])  # a push after the reply: redis-py's to read
    if isinstance(value, redis.RedisError):  # an error reply (parse_error's exception)
        if conn.health_check_interval:
            conn.next_health_check = time.monotonic() + conn.health_check_interval
        if isinstance(value, redis.ConnectionError):
            conn.disconnect()
        raise value
    return _done(conn, value)


def _done(conn: Any, value: Any) -> Any:
    """``value``, read whole: the connection's next health check is due a full interval
    from now, as after redis-py's own read."""
    if conn.health_check_interval:
        conn.next_health_check = time.monotonic() + conn.health_check_interval
    return value


def give_back(parser: Any, data: bytes) -> None:
    """Put ``data``, received from the socket, into the parser's buffer, where redis-py reads
    it as if it had received it itself."""
    buffer = parser._buffer._buffer  # the SocketBuffer's BytesIO: written at its end
    at = buffer.tell()
    buffer.seek(0, io.SEEK_END)
    buffer.write(data)
    buffer.seek(at)
