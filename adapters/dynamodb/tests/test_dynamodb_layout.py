"""The private names the connection watches read (:mod:`tiered_cache_dynamodb.layout`): every
one is in the installed botocore, urllib3, aiobotocore and aiohttp (an upgrade that renames one
fails here), and a watch that starts where one is missing says so once and is counted."""

from __future__ import annotations

import asyncio.trsock
import logging
from typing import Any

import pytest
from tiered_cache_dynamodb import AsyncDynamoDBSource, DynamoDBSource, DynamoDBSourceSettings
from tiered_cache_dynamodb.layout import Aiobotocore, Boto3, Layout, Local, Private, missing
from urllib3.connectionpool import HTTPConnectionPool

from tiered_cache.testing.forked import messages_of

PUT_BACK = "urllib3.connectionpool.HTTPConnectionPool._put_conn"


@pytest.mark.parametrize("layout", [Boto3, Aiobotocore])
def test_the_installed_libraries_have_every_name_a_watch_reads(layout: type[Layout]) -> None:
    assert missing(layout) == []


class Renamed(Layout):
    """Names no installed library has."""

    gone = Private("urllib3.response.HTTPResponse", "_connection_renamed")
    no_class = Private("urllib3.response.HTTPReply", "_connection")
    no_function = Local(("urllib3.connectionpool.HTTPConnectionPool._take_conn",), "conn")
    other_local = Local((PUT_BACK, "urllib3.connectionpool.HTTPConnectionPool.urlopen"), "con")


def test_the_check_names_each_name_missing() -> None:
    """An attribute no class of its owner's defines or names, a class or a function not
    there, a local a function does not have: each is named (a watch's reads of them would
    fail, or find nothing)."""
    assert missing(Renamed) == [
        "urllib3.response.HTTPResponse._connection_renamed",
        "urllib3.response.HTTPReply",
        "urllib3.connectionpool.HTTPConnectionPool._take_conn",
        f"{PUT_BACK}: local con",
        "urllib3.connectionpool.HTTPConnectionPool.urlopen: local con",
    ]


def holds_it_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3's pools put a connection back through a method whose frame holds it under
    another name than the scan of the threads' stacks reads: the scan would find none there."""
    theirs = HTTPConnectionPool._put_conn

    def _put_conn(self: Any, connection: Any) -> None:
        theirs(self, connection)

    monkeypatch.setattr(HTTPConnectionPool, "_put_conn", _put_conn)


@pytest.mark.usefixtures("layout_unsaid")
def test_a_watch_on_a_urllib3_that_holds_its_connection_otherwise_warns_once_and_counts(
    unreachable: DynamoDBSourceSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Silent before: the scan found no connection in use (nor said it could not); now the
    first watch of the process says which name is missing, and every source counts its."""
    holds_it_otherwise(monkeypatch)
    caplog.set_level(logging.WARNING, logger="tiered_cache.source")
    sources = [DynamoDBSource.from_settings(unreachable) for _ in range(2)]
    assert messages_of(caplog.records, "tiered_cache.source") == [
        "the installed botocore and urllib3 lay a client's connections out otherwise than "
        f"this adapter reads them ({PUT_BACK}: local conn): the sockets of connections it "
        "does not see stay open in a forked child"
    ]
    assert [source.report()["watches_on_another_layout"] for source in sources] == [1, 1]
    for source in sources:
        source.close()


def test_a_watch_on_the_installed_libraries_says_nothing_and_counts_none(
    unreachable: DynamoDBSourceSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tiered_cache.source")
    source = DynamoDBSource.from_settings(unreachable)
    assert source.report()["watches_on_another_layout"] == 0
    assert messages_of(caplog.records, "tiered_cache.source") == []
    source.close()


@pytest.mark.anyio
@pytest.mark.usefixtures("layout_unsaid")
async def test_an_async_watch_where_asyncio_shows_a_socket_otherwise_warns_and_counts(
    unreachable: DynamoDBSourceSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio's ``TransportSocket`` without the ``_sock`` the watch takes a transport's
    socket from: the watch of the client the source makes says so, and is counted."""

    class TransportSocket:
        __slots__ = ("_socket",)

    monkeypatch.setattr(asyncio.trsock, "TransportSocket", TransportSocket)
    caplog.set_level(logging.WARNING, logger="tiered_cache.source")
    source = AsyncDynamoDBSource.from_settings(unreachable)
    await source.get_client()
    assert messages_of(caplog.records, "tiered_cache.source") == [
        "the installed aiobotocore, aiohttp and asyncio lay a client's connections out "
        "otherwise than this adapter reads them (asyncio.trsock.TransportSocket._sock): the "
        "sockets of connections it does not see stay open in a forked child"
    ]
    assert source.report()["watches_on_another_layout"] == 1
    await source.aclose()
