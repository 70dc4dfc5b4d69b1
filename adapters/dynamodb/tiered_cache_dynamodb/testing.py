"""Test helpers: DynamoDB on loopback (moto's server), throttling injected into botocore, and
a socket's close held where CPython's runs without the GIL (:class:`HeldClose`).

Nothing here changes process-wide state except :func:`instant_botocore_retries`, which says so.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import boto3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.compat import HTTPHeaders

from .settings import DynamoDBSourceSettings
from .tls_front import TlsFront

if TYPE_CHECKING:
    from botocore.config import Config
    from mypy_boto3_dynamodb import DynamoDBClient

#: The credentials moto accepts (any will do); never real ones.
DUMMY_ACCESS_KEY: Final = "testing"
DUMMY_SECRET_KEY: Final = "testing"


class MotoDynamoDB:
    """moto's server on a free loopback port, standing in for DynamoDB over real HTTP.

    Sets no environment variables: take the endpoint, region and dummy credentials from
    :meth:`client_kwargs` (for ``boto3``) or :meth:`settings_kwargs` (for
    :class:`DynamoDBSourceSettings`). moto keeps its data in process memory, shared by every
    moto server and ``mock_aws`` of the process; :meth:`reset` empties it.

    Usage::

        with MotoDynamoDB() as moto:
            client = moto.client()

    moto's server (werkzeug's) answers every request with ``Connection: close``; DynamoDB
    keeps a client's connections open for its next requests. ``keep_alive=True`` serves moto
    so (:class:`_KeepAliveServer`): what a process shares with a child it forks is then the
    open connections of its clients' pools, as against DynamoDB.

    ``tls=True`` serves it over HTTPS, as DynamoDB, through a :class:`~.tls_front.TlsFront`
    (its certificate in :attr:`ca_file`: give it to clients as ``AWS_CA_BUNDLE``, or to
    boto3 as ``verify``); :attr:`endpoint_url` is the front's.
    """

    def __init__(
        self,
        region: str = "us-east-1",
        host: str = "127.0.0.1",
        *,
        keep_alive: bool = False,
        tls: bool = False,
    ) -> None:
        self.region = region
        self.host = host
        self.keep_alive = keep_alive
        self.tls = tls
        self._server: Any = None  # moto.server.ThreadedMotoServer; moto is untyped
        self._front: TlsFront | None = None
        self._endpoint_url: str | None = None

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server (``https://`` and the front's port
        with ``tls``)."""
        if self._endpoint_url is None:
            raise RuntimeError("the moto server is not running; call start() first")
        return self._endpoint_url

    @property
    def front(self) -> TlsFront:
        """The TLS front of the running server (``tls``): its faults, its certificate."""
        if self._front is None:
            raise RuntimeError("the moto server is not running over TLS")
        return self._front

    @property
    def ca_file(self) -> str:
        """The certificate (PEM) a client must trust to reach the server over ``tls``."""
        return self.front.ca_file

    def start(self) -> MotoDynamoDB:
        """Start the server on a port the OS picks (no race with other processes)."""
        if self._server is not None:
            return self
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise RuntimeError(
                "MotoDynamoDB needs moto's server mode: pip install 'tiered-cache-dynamodb[test]' "
                f"(or 'moto[server]'); importing it failed: {exc}"
            ) from exc
        server = (
            _KeepAliveServer(self.host)
            if self.keep_alive
            else ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        )
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._endpoint_url = f"http://{host}:{port}"
        if self.tls:
            self._front = TlsFront(self.host, host, port)
            self._endpoint_url = f"https://{self.host}:{self._front.port}"
        return self

    def stop(self) -> None:
        """Stop the server (and its TLS front) and wait for its threads. Idempotent."""
        server, self._server = self._server, None
        front, self._front = self._front, None
        self._endpoint_url = None
        if front is not None:
            front.close()
        if server is not None:
            server.stop()

    def __enter__(self) -> MotoDynamoDB:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``boto3.client("dynamodb", ...)`` for this server (its
        certificate as ``verify`` with ``tls``)."""
        trust = {"verify": self.ca_file} if self.tls else {}
        return {
            "region_name": self.region,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": DUMMY_ACCESS_KEY,
            "aws_secret_access_key": DUMMY_SECRET_KEY,
            **trust,
        }

    def settings_kwargs(self) -> dict[str, Any]:
        """Fields of :class:`DynamoDBSourceSettings` for this server."""
        return {
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": DUMMY_ACCESS_KEY,
            "aws_secret_access_key": DUMMY_SECRET_KEY,
        }

    def source_toml(self, table: str, key: str, **fields: str) -> str:
        """The ``[tiered_cache.source]`` table of a config file pointing at this server."""
        values = {"kind": "dynamodb", "table": table, "key": key, **fields}
        values.update(self.settings_kwargs())
        lines = [f"{name} = {json.dumps(value)}" for name, value in values.items()]
        return "[tiered_cache.source]\n" + "\n".join(lines) + "\n"

    def settings(self, **fields: Any) -> DynamoDBSourceSettings:
        """Source settings pointing at this server, plus ``fields`` (table, key, ...)."""
        return DynamoDBSourceSettings(**{**self.settings_kwargs(), **fields})

    def client(self, config: Config | None = None) -> DynamoDBClient:
        """A new low-level client for this server, on its own session."""
        session = boto3.session.Session()
        return session.client("dynamodb", config=config, **self.client_kwargs())

    def reset(self) -> None:
        """Drop every table, and every other moto resource of this process.

        moto's state is process-wide: this also empties other moto servers and ``mock_aws``
        of the process. Tests that share a server are better off with unique table names.
        """
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


class _KeepAliveServer:
    """moto's application on the standard library's threaded HTTP/1.1 server, leaving each
    connection open after a reply (keep-alive, as DynamoDB does). werkzeug's server, which
    ``ThreadedMotoServer`` runs, closes every connection after its reply; it cannot be told
    otherwise (after a reply it drains the socket, which would swallow the next request)."""

    def __init__(self, host: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        app = DomainDispatcherApplication(create_backend_app)

        class KeepAlive(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet, as moto's server is with ``verbose=False``."""

            def do_request(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.partition("?")
                environ = {
                    "wsgi.version": (1, 0),
                    "wsgi.url_scheme": "http",
                    "wsgi.input": io.BytesIO(body),
                    "wsgi.errors": sys.stderr,
                    "wsgi.multithread": True,
                    "wsgi.multiprocess": False,
                    "wsgi.run_once": False,
                    "REQUEST_METHOD": self.command,
                    "SCRIPT_NAME": "",
                    "PATH_INFO": urllib.parse.unquote(path),
                    "QUERY_STRING": query,
                    "SERVER_NAME": host,
                    "SERVER_PORT": str(self.connection.getsockname()[1]),
                    "SERVER_PROTOCOL": self.request_version,
                    "REMOTE_ADDR": self.client_address[0],
                    "CONTENT_LENGTH": str(len(body)),
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                }
                for name, value in self.headers.items():
                    key = "HTTP_" + name.upper().replace("-", "_")
                    environ.setdefault(key, value)
                answer: dict[str, Any] = {}

                def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
                    answer["status"], answer["headers"] = status, headers
                    return lambda data: None

                chunks = app(environ, start_response)
                try:
                    data = b"".join(chunks)
                finally:
                    getattr(chunks, "close", lambda: None)()
                code, _, reason = answer["status"].partition(" ")
                self.send_response(int(code), reason)
                for name, value in answer["headers"]:
                    if name.lower() not in ("content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_request

        self._server = ThreadingHTTPServer((host, 0), KeepAlive)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="moto-keep-alive", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def get_host_and_port(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class HeldClose:
    """Socket classes (:meth:`socket_class`) whose next close once :attr:`armed` is held at
    the point where CPython's ``socket.close()`` runs ``close(2)`` without the GIL: the object
    has let go of its descriptor (``fileno()`` -1), which is still open. :attr:`holding` is
    set then; the descriptor is closed once :attr:`go_on` is (or after ``timeout`` seconds).
    One close is held per arming. So is the close of a socket collected unclosed, which its
    finalizer makes (C: it lets go of the descriptor, then closes it without the GIL; no
    ``_real_close``)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.armed = threading.Event()
        self.holding = threading.Event()
        self.go_on = threading.Event()
        self._timeout = timeout
        self._classes: dict[type[socket.socket], type[socket.socket]] = {}

    def socket_class(self, kind: type[socket.socket]) -> type[socket.socket]:
        """A subclass of ``kind`` (of the same layout: a socket's ``__class__`` may be set to
        it) whose close is held so."""
        if kind not in self._classes:
            held = self

            def hold(self: socket.socket) -> None:
                held.armed.clear()
                descriptor = self.detach()  # as CPython's close: the object lets go first
                held.holding.set()
                held.go_on.wait(held._timeout)
                os.close(descriptor)

            def _real_close(self: socket.socket) -> None:
                if not held.armed.is_set():
                    kind._real_close(self)  # type: ignore[attr-defined]
                    return
                hold(self)

            def __del__(self: socket.socket) -> None:
                # The finalizer's close (its ResourceWarning left out: the hold is the point).
                if not held.armed.is_set() or self.fileno() < 0:
                    kind.__del__(self)  # type: ignore[attr-defined]
                    return
                hold(self)

            self._classes[kind] = type(
                kind.__name__,
                (kind,),
                {"__slots__": (), "_real_close": _real_close, "__del__": __del__},
            )
        return self._classes[kind]


def seed_items(client: Any, table: str, ids: Sequence[str], key: str = "id") -> None:
    """Write items ``{key: id, "n": <index>}`` with BatchWriteItem (25 per request)."""
    for start in range(0, len(ids), 25):
        client.batch_write_item(
            RequestItems={
                table: [
                    {"PutRequest": {"Item": {key: {"S": i}, "n": {"N": str(start + k)}}}}
                    for k, i in enumerate(ids[start : start + 25])
                ]
            }
        )


class UnprocessedInjector:
    """An ``after-call`` hook that moves returned items to UnprocessedKeys, as DynamoDB does
    when a table runs out of read capacity mid-batch (on a boto3 or an aiobotocore client:
    both emit the parsed response to ``after-call`` handlers before returning it).

    ``plan[i]`` is how many of the items of the i-th BatchGetItem to push back (``"all"``: all
    of them); calls past the plan are left alone. ``keys`` are the table's key attributes.
    """

    def __init__(
        self, client: Any, table: str, plan: list[int | str], keys: Sequence[str] = ("id",)
    ) -> None:
        self.table = table
        self.plan = plan
        self.keys = tuple(keys)
        self.calls = 0
        self.pushed_back = 0
        client.meta.events.register("after-call.dynamodb.BatchGetItem", self._after_call)

    def _after_call(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        index = self.calls
        self.calls += 1
        if index >= len(self.plan):
            return
        items = parsed["Responses"][self.table]
        count = len(items) if self.plan[index] == "all" else int(self.plan[index])
        pushed, kept = items[:count], items[count:]
        parsed["Responses"][self.table] = kept
        if pushed:
            self.pushed_back += len(pushed)
            parsed["UnprocessedKeys"] = {
                self.table: {"Keys": [{k: item[k] for k in self.keys} for item in pushed]}
            }


#: The messages DynamoDB sends with its throttling errors.
_MESSAGES: Final = {
    "ProvisionedThroughputExceededException": "The level of configured provisioned throughput "
    "for the table was exceeded. Consider increasing your provisioning level with the "
    "UpdateTable API.",
    "ThrottlingException": "Rate of requests exceeds the allowed throughput.",
    "RequestLimitExceeded": "Throughput exceeds the current throughput limit for your account.",
}

READ_OPERATIONS: Final = frozenset({"GetItem", "BatchGetItem"})


class _Body:
    """The ``raw`` of an :class:`AWSResponse`: botocore reads it through ``stream()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._data

    async def read(self) -> bytes:
        # aiobotocore reads an error response's body with ``await raw.read()``.
        return self._data


class ThrottleInjector:
    """A botocore ``before-send`` hook that answers some DynamoDB requests with a throttle.

    The answer is a real HTTP 400 response with DynamoDB's JSON error body, so botocore parses
    it and its own retry logic runs (each retry is another attempt seen here). Three modes:

    - ``rate=1.0`` (default): throttle every request of ``operations``;
    - ``rate=0.3``: throttle that fraction at random (``rng``);
    - ``per_key_rate=N``: a token bucket per item key, N reads per key per second with a burst
      of ``burst`` (default N), on the injected ``clock`` -- like the provisioned read capacity
      of a hot partition. A BatchGetItem takes a token from every key it reads, and is
      throttled whole if one of them has none (DynamoDB would instead return that key in
      UnprocessedKeys).

    ``attempts`` counts the requests of ``operations`` seen, ``throttled`` those refused.

    Usage::

        injector = ThrottleInjector().register(source.client)
    """

    def __init__(
        self,
        *,
        rate: float = 1.0,
        per_key_rate: float | None = None,
        burst: float | None = None,
        operations: Collection[str] | None = READ_OPERATIONS,
        code: str = "ProvisionedThroughputExceededException",
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be in [0, 1]")
        if per_key_rate is not None and per_key_rate <= 0:
            raise ValueError("per_key_rate must be positive")
        if code not in _MESSAGES:
            raise ValueError(f"code must be one of {sorted(_MESSAGES)}")
        self.rate = rate
        self.per_key_rate = per_key_rate
        self.burst = burst if burst is not None else (per_key_rate or 1.0)
        self.operations = frozenset(operations) if operations is not None else None
        self.code = code
        self.attempts = 0
        self.throttled = 0
        #: (operation, throttled) per request seen, in order.
        self.log: list[tuple[str, bool]] = []
        self._clock = clock
        self._rng = rng or random.Random()
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._clients: list[Any] = []
        self._unique_id = f"tiered-cache-throttle-{id(self)}"

    @property
    def passed(self) -> int:
        """Requests let through to the server."""
        return self.attempts - self.throttled

    def register(self, client: DynamoDBClient) -> ThrottleInjector:
        """Hook into every request ``client`` sends; returns ``self``."""
        # The stubs type event handlers as returning None; a before-send handler may return
        # the response to use instead of sending the request, which is the point here.
        handler = cast("Callable[..., None]", self._before_send)
        client.meta.events.register("before-send.dynamodb", handler, unique_id=self._unique_id)
        self._clients.append(client)
        return self

    def register_aio(self, client: Any) -> ThrottleInjector:
        """:meth:`register` for an aiobotocore client (whose parser awaits the response's
        body); returns ``self``."""
        client.meta.events.register(
            "before-send.dynamodb", self._before_send_aio, unique_id=self._unique_id
        )
        self._clients.append(client)
        return self

    def unregister(self) -> None:
        """Remove the hook from every client it was registered on."""
        for client in self._clients:
            client.meta.events.unregister("before-send.dynamodb", unique_id=self._unique_id)
        self._clients.clear()

    def reset_counts(self) -> None:
        """Zero ``attempts``, ``throttled`` and ``log`` (the buckets are kept)."""
        with self._lock:
            self.attempts = 0
            self.throttled = 0
            self.log.clear()

    def _before_send(self, request: AWSPreparedRequest, **kwargs: Any) -> AWSResponse | None:
        # The event is "before-send.dynamodb.<Operation>".
        operation = str(kwargs.get("event_name", "")).rpartition(".")[2]
        if self.operations is not None and operation not in self.operations:
            return None
        with self._lock:
            self.attempts += 1
            throttle = self._decide(operation, request)
            if throttle:
                self.throttled += 1
            self.log.append((operation, throttle))
            request_id = f"THROTTLE{next(self._ids):020d}"
        return self._response(request.url, request_id) if throttle else None

    def _before_send_aio(self, request: AWSPreparedRequest, **kwargs: Any) -> AWSResponse | None:
        response = self._before_send(request, **kwargs)
        if response is None:
            return None
        from aiobotocore.awsrequest import AioAWSResponse

        return cast(
            AWSResponse,
            AioAWSResponse(response.url, response.status_code, response.headers, response.raw),
        )

    def _decide(self, operation: str, request: AWSPreparedRequest) -> bool:
        if self.per_key_rate is None:
            return self.rate >= 1.0 or self._rng.random() < self.rate
        now = self._clock()
        keys = _request_keys(operation, request.body)
        levels = {}
        for key in keys:
            tokens, then = self._buckets.get(key, (self.burst, now))
            levels[key] = min(self.burst, tokens + (now - then) * self.per_key_rate)
        throttle = any(level < 1.0 for level in levels.values())
        for key, level in levels.items():
            self._buckets[key] = (level if throttle else level - 1.0, now)
        return throttle

    def _response(self, url: str, request_id: str) -> AWSResponse:
        body = json.dumps(
            {
                "__type": f"com.amazonaws.dynamodb.v20120810#{self.code}",
                "message": _MESSAGES[self.code],
            }
        ).encode()
        headers = HTTPHeaders()
        headers["x-amzn-RequestId"] = request_id
        headers["Content-Type"] = "application/x-amz-json-1.0"
        headers["Content-Length"] = str(len(body))
        headers["x-amz-crc32"] = str(zlib.crc32(body) & 0xFFFFFFFF)
        return AWSResponse(url, 400, headers, _Body(body))


def _request_keys(operation: str, body: Any) -> list[str]:
    """The item keys a request reads or writes, as canonical JSON with the table name."""
    try:
        data = json.loads(body or b"{}")
    except (TypeError, ValueError):
        return ["?"]
    if operation == "BatchGetItem":
        return [
            _key_id(table, key)
            for table, request in data.get("RequestItems", {}).items()
            for key in request.get("Keys", [])
        ]
    table = data.get("TableName", "?")
    if "Key" in data:
        return [_key_id(table, data["Key"])]
    # PutItem, Query, Scan...: one bucket for the table.
    return [_key_id(table, None)]


def _key_id(table: str, key: Any) -> str:
    return json.dumps([table, key], sort_keys=True)


@contextlib.contextmanager
def instant_botocore_retries(
    sleep: Callable[[float], None] | None = None,
) -> Iterator[list[float]]:
    """Make botocore's retry backoff not wait; yields the list of delays it asked for.

    botocore sleeps between retries with ``time.sleep`` in ``botocore.endpoint``; this swaps
    that module's ``time`` for one whose ``sleep`` records the delay (and calls ``sleep`` if
    given). Process-wide while active: for tests, not for concurrent production code.
    """
    from botocore import endpoint

    original = endpoint.__dict__["time"]  # the stubs do not declare the module's imports
    delays: list[float] = []

    class _Time:
        def __getattr__(self, name: str) -> Any:
            return getattr(original, name)

        def sleep(self, seconds: float) -> None:
            delays.append(seconds)
            if sleep is not None:
                sleep(seconds)

    setattr(endpoint, "time", _Time())  # noqa: B010 - the stubs would refuse a plain assignment
    try:
        yield delays
    finally:
        setattr(endpoint, "time", original)  # noqa: B010


@contextlib.contextmanager
def instant_aiobotocore_retries() -> Iterator[list[float]]:
    """:func:`instant_botocore_retries` for aiobotocore clients, whose endpoint waits between
    retries with its own ``_sleep`` coroutine: swapped for one that records the delay and
    returns at once. Process-wide while active: for tests."""
    from aiobotocore.endpoint import AioEndpoint

    original = AioEndpoint.__dict__["_sleep"]
    delays: list[float] = []

    async def record(self: Any, seconds: float) -> None:
        delays.append(seconds)

    setattr(AioEndpoint, "_sleep", record)  # noqa: B010 - untyped module
    try:
        yield delays
    finally:
        setattr(AioEndpoint, "_sleep", original)  # noqa: B010
