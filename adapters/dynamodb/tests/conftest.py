"""Fixtures of the DynamoDB adapter's tests: one moto server per session, a table per test."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tiered_cache_dynamodb import DynamoDBSource, DynamoDBSourceSettings, create_table, layout
from tiered_cache_dynamodb.testing import MotoDynamoDB, instant_botocore_retries, seed_items

from tiered_cache.testing import RecordingSleep


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoDynamoDB]:
    """moto's DynamoDB on a free loopback port, started by the tests (never a running one)."""
    # The server's request log (werkzeug, INFO) would drown the output of a failing test.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with MotoDynamoDB() as server:
        yield server


@pytest.fixture(scope="session")
def kept_alive() -> Iterator[MotoDynamoDB]:
    """moto on a server of its own that keeps connections open, as DynamoDB does (moto's
    state is the process's: the tables of ``make_table`` are there too)."""
    with MotoDynamoDB(keep_alive=True) as server:
        yield server


@pytest.fixture(scope="session")
def over_tls() -> Iterator[MotoDynamoDB]:
    """moto kept alive behind a TLS front, over HTTPS as DynamoDB (its certificate in
    ``ca_file``: clients made from settings trust it through ``AWS_CA_BUNDLE``)."""
    with MotoDynamoDB(keep_alive=True, tls=True) as server:
        yield server


@pytest.fixture
def tls_settings(
    over_tls: MotoDynamoDB,
    admin_client: Any,
    make_table: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> DynamoDBSourceSettings:
    """Settings of a table of ``k0``..``k2`` over TLS (``over_tls``, whose certificate the
    test's clients trust through ``AWS_CA_BUNDLE``), whose requests and connects may be held
    (the front's ``hold_handshakes``) for 30 s."""
    monkeypatch.setenv("AWS_CA_BUNDLE", over_tls.ca_file)
    table = make_table()
    seed_items(admin_client, table, ["k0", "k1", "k2"])
    return over_tls.settings(table=table, key="id", read_timeout=30, connect_timeout=30)


@pytest.fixture(scope="session")
def admin_client(moto_server: MotoDynamoDB) -> Any:
    """A client for setting up and inspecting tables (not the one under test)."""
    client = moto_server.client()
    yield client
    client.close()


MakeTable = Callable[..., str]


@pytest.fixture
def make_table(admin_client: Any) -> MakeTable:
    """Create a table with a unique name: ``make_table(key="id", key_type="S", ...)``."""

    def make(
        key: str = "id",
        key_type: str = "S",
        range_key: str | None = None,
        range_key_type: str = "S",
    ) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        create_table(admin_client, name, key, key_type, range_key, range_key_type=range_key_type)
        return name

    return make


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, the loop aiobotocore needs."""
    return "asyncio"


@pytest.fixture
def settings_for(moto_server: MotoDynamoDB) -> Callable[..., DynamoDBSourceSettings]:
    """``settings_for(table=..., key=..., **fields)``: settings pointing at the moto server."""
    return moto_server.settings


@pytest.fixture
def unreachable() -> DynamoDBSourceSettings:
    """Settings of table ``tweet`` in eu-west-1 at a loopback port nobody listens on; two
    attempts per request, a short connect timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return DynamoDBSourceSettings(
        table="tweet",
        key="id",
        region="eu-west-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        connect_timeout="200ms",
        max_attempts=2,
    )


@pytest.fixture
def layout_unsaid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning of a connection watch on another layout (:mod:`tiered_cache_dynamodb.layout`,
    once per process) not given yet: the test sees the first, whatever ran before it."""
    monkeypatch.setattr(layout, "_ONCE", layout._Once())


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_source(
    settings_for: Callable[..., DynamoDBSourceSettings], sleeps: RecordingSleep
) -> Iterator[Callable[..., DynamoDBSource]]:
    """``make_source(table=..., key=..., **fields)``: a source with a recording sleep."""
    made: list[DynamoDBSource] = []

    def make(**fields: Any) -> DynamoDBSource:
        source = DynamoDBSource.from_settings(settings_for(**fields), sleep=sleeps)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


@pytest.fixture
def botocore_delays() -> Iterator[list[float]]:
    """botocore's retry backoff, recorded instead of slept."""
    with instant_botocore_retries() as delays:
        yield delays


class Requests:
    """What a client does, from botocore's events.

    ``sent``: operation of every HTTP request (``before-send``, once per attempt);
    ``calls``: operation of every API call (``before-call``, retries included in one call);
    ``params``: the parameters of every API call (``before-parameter-build``).
    """

    def __init__(self, client: Any) -> None:
        self.sent: list[str] = []
        self.calls: list[str] = []
        self.params: list[tuple[str, dict[str, Any]]] = []
        events = client.meta.events
        events.register("before-send.dynamodb", self._on_send)
        events.register("before-call.dynamodb", self._on_call)
        events.register("before-parameter-build.dynamodb", self._on_params)

    @staticmethod
    def _operation(kwargs: dict[str, Any]) -> str:
        return str(kwargs["event_name"]).rpartition(".")[2]

    def _on_send(self, **kwargs: Any) -> None:
        self.sent.append(self._operation(kwargs))

    def _on_call(self, **kwargs: Any) -> None:
        self.calls.append(self._operation(kwargs))

    def _on_params(self, params: dict[str, Any], **kwargs: Any) -> None:
        self.params.append((self._operation(kwargs), dict(params)))

    def count(self, operation: str) -> int:
        """API calls of ``operation``."""
        return self.calls.count(operation)


@pytest.fixture
def count_requests() -> Callable[[Any], Requests]:
    """``count_requests(client)``: start counting the requests ``client`` sends."""
    return Requests
