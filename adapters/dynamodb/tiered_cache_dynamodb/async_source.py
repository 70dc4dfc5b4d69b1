"""A DynamoDB table as the source of truth on an aiobotocore client, for the asyncio chain.

The same decisions as :class:`~tiered_cache_dynamodb.DynamoDBSource` (they are
:mod:`~tiered_cache_dynamodb.table_steps`', run by ``steps.arun``): the same key checks,
100-key BatchGetItem chunks, UnprocessedKeys retries with jittered backoff (an
``asyncio.sleep``, so the loop goes on meanwhile), the same errors for throttling. Needs the
adapter's ``async`` extra (``pip install 'tiered-cache-dynamodb[async]'``, which brings
aiobotocore; aiobotocore pins the botocore it runs on, see docs/async.md).

An aiobotocore client belongs to the event loop it was made on (its aiohttp session does):
the source declares ``one_loop``, and a chain refuses a second running loop's calls. A client
the source made is closed as its loop ends (``shutdown_asyncgens``,
:mod:`tiered_cache.loop_end`), and the next loop's first call makes its own: a chain kept
across ``asyncio.run`` calls failed every call after the first loop (``Event loop is
closed``), the first loop's session never closed. A loop closed by hand, without
``shutdown_asyncgens``, is seen at the next loop's first call: its client is dropped (it
cannot be closed without its loop) and a new one made. A loop left open (run by hand, never
closed) is seen there too: its client's connections are closed without waiting for it
(:mod:`.async_left`), and a new one made. A client given to the source serves
the first loop it is used on only: another loop's calls raise
:class:`~tiered_cache.EventLoopConflict`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from botocore.exceptions import ProfileNotFound

from tiered_cache.async_tier import AsyncSourceBase
from tiered_cache.errors import ConfigError, EventLoopConflict, SourceError
from tiered_cache.forking import keep_from_the_parent, restart_after_fork
from tiered_cache.logs import logger_for
from tiered_cache.loop_end import LoopEnd
from tiered_cache.steps import arun
from tiered_cache.tier import MissingType

from .aio_pools import SocketWatch, inherited_sockets
from .async_left import close_a_left_loops_client
from .aws import client_options, credentials, hide_endpoint_secrets
from .inherited import close_inherited_sockets
from .keys import KeyCodec
from .settings import DynamoDBSourceSettings
from .table_steps import TableSteps, table_options

#: An aiobotocore DynamoDB client (aiobotocore ships no type hints).
AioDynamoDBClient = Any
#: Makes and enters a client: ``client = await connect()``.
Connect = Callable[[], Awaitable[AioDynamoDBClient]]


def default_endpoint(region: str) -> str:
    """The endpoint botocore uses for DynamoDB in ``region`` when none is configured."""
    return f"https://dynamodb.{region}.amazonaws.com"


async def connect_client(settings: DynamoDBSourceSettings) -> AioDynamoDBClient:
    """An aiobotocore DynamoDB client for ``settings`` (same credentials, timeouts and retries
    as :func:`~tiered_cache_dynamodb.make_client`'s), on a session of its own; close it with
    ``await client.close()``."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession

    session = AioSession(profile=settings.profile)
    config = AioConfig(**client_options(settings, settings.retry_mode))
    try:
        # The client's context enters it (its HTTP session) and gives it back; it is closed
        # with the source.
        client = await session.create_client(
            "dynamodb",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            config=config,
            **credentials(settings),
        ).__aenter__()
    except ProfileNotFound as exc:
        raise ConfigError(f"dynamodb source: AWS profile {settings.profile!r} not found") from exc
    return hide_endpoint_secrets(client)


class AsyncDynamoDBSource(AsyncSourceBase):
    """:class:`~tiered_cache_dynamodb.DynamoDBSource` with coroutine methods (an
    :class:`~tiered_cache.AsyncSource`; ``one_loop``: its client belongs to the loop it was
    made on, and the chain refuses a second running loop's calls).

    Args:
        client: an entered aiobotocore DynamoDB client, or ``None`` with ``connect``: then the
            client is made on the first call (building needs no network and no loop).
        connect: makes the client when ``client`` is ``None``; ``region`` and ``endpoint`` then
            say where it will point, for messages.
        owns_client: close the client on :meth:`aclose`.
        sleep: how to wait between UnprocessedKeys retries (``asyncio.sleep``; tests record).
        rng: the jitter of those waits.
        options: the table's options, as :class:`~tiered_cache_dynamodb.table_steps.TableSteps`
            takes them (the same as the sync source's).
    """

    one_loop = True

    def __init__(
        self,
        client: AioDynamoDBClient | None,
        table: str,
        key: str,
        *,
        connect: Connect | None = None,
        region: str | None = None,
        endpoint: str | None = None,
        owns_client: bool = False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        **options: Any,
    ) -> None:
        if client is None and connect is None:
            raise TypeError("AsyncDynamoDBSource needs a client or a connect function")
        if client is not None:
            region = region or str(client.meta.region_name)
            endpoint = endpoint or str(client.meta.endpoint_url)
        if region is None:
            raise TypeError("AsyncDynamoDBSource needs the region of a client it will connect")
        self._client = client
        self._connect = connect
        self._owns_client = owns_client
        self._steps = TableSteps(
            table,
            key,
            call=self._call,
            sleep=sleep,
            check=self._check_once,
            region=region,
            endpoint=endpoint or default_endpoint(region),
            rng=rng,
            **options,
        )
        self.name = self._steps.name
        self.table = table
        self.codec: KeyCodec = self._steps.codec
        # Made in the loop on first use (a lock binds to the loop that first waits on it).
        self._connect_lock = asyncio.Lock()
        self._check_lock = asyncio.Lock()
        #: A client this source made is closed as the loop it was made on ends.
        self._loop_end = LoopEnd(
            f"source {self.name}",
            self._let_go_of_client,
            self._drop_client,
            leave=self._close_a_left_loops_client,
        )
        #: The loop a client given to the source was first used on: the only one it serves.
        self._given_loop: asyncio.AbstractEventLoop | None = None
        #: A forked child's source whose client was given: it refuses every call.
        self._forked_from_client = False
        #: The sockets of the client the source made, or was given to own and can make anew
        #: (for a forked child to close its copies of those being made at the fork, which no
        #: connector holds yet, and to wait for their closes).
        #: The watches started where aiobotocore or aiohttp lack a name they read
        #: (:mod:`.layout`).
        self._watches_on_another_layout = 0
        self._sockets: SocketWatch | None = (
            self._watch(client)
            if client is not None and connect is not None and owns_client
            else None
        )
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """An aiobotocore client belongs to the loop it was made on, and its pool holds the
        parent's sockets: in a forked child, on a loop of its own, each request failed (a
        Future of another loop), and the child could load nothing. A client this source
        made is let go of (kept, never closed: :func:`~tiered_cache.forking.keep_from_the_parent`)
        and made anew on the next call, the child's copies of its sockets (idle, or in use by
        a parent coroutine at the fork) closed without its loop (:mod:`.inherited`); so are
        the locks, which may be bound to the parent's loop. A client given to the source
        cannot be: its sockets are the parent's (a request written on one is answered to
        whichever process reads first), so the child's source refuses every call with a
        :class:`SourceError` that says so (and logs it once): give the source ``connect``
        instead (``from_settings`` without ``client``) to fork it."""
        self._connect_lock = asyncio.Lock()
        self._check_lock = asyncio.Lock()
        self._loop_end.stop()
        if self._connect is not None and self._owns_client:
            client, watch = self._client, self._sockets
            if client is not None and watch is not None:
                # The child's copies, idle, in use or being made by a parent coroutine: the
                # loop untouched.
                close_inherited_sockets(lambda: inherited_sockets(client, watch))
            keep_from_the_parent(client)
            self._client, self._sockets = None, None
        elif self._client is not None:
            self._forked_from_client = True
            logger_for("source").warning("%s", self._parents_client_error())

    @classmethod
    def from_settings(
        cls,
        settings: DynamoDBSourceSettings,
        *,
        client: AioDynamoDBClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> AsyncDynamoDBSource:
        """A source for ``settings``: with a client of its own, made on the first call and
        closed with the source, unless one is given."""

        async def connect() -> AioDynamoDBClient:
            return await connect_client(settings)

        return cls(
            client,
            settings.table,
            settings.key,
            connect=connect,
            region=settings.region,
            endpoint=settings.endpoint_url,
            owns_client=client is None,
            sleep=sleep,
            rng=rng,
            **table_options(settings),
        )

    async def get_client(self) -> AioDynamoDBClient:
        """The aiobotocore client, made now if it was not yet (to register event hooks on)."""
        if self._forked_from_client:
            raise self._parents_client_error()
        if self._connect is not None and self._owns_client:
            self._loop_end.here()  # one look when the loop did not change
        else:
            self._on_the_given_clients_loop()
        if self._client is not None:
            return self._client
        async with self._connect_lock:
            if self._client is None:
                assert self._connect is not None
                made = await self._connect()
                # Watched before it is shared: a fork sees the client with its watch.
                self._sockets = self._watch(made) if self._owns_client else None
                self._client = made
        return self._client

    def _watch(self, client: AioDynamoDBClient) -> SocketWatch:
        watch = SocketWatch(client)
        self._watches_on_another_layout += watch.layout_changed
        return watch

    async def _let_go_of_client(self) -> None:
        """The loop the client was made on is ending: closed now, on that loop (the next
        loop's first call makes a new one); the locks, perhaps bound to this loop, anew."""
        client, self._client = self._client, None
        self._connect_lock = asyncio.Lock()
        self._check_lock = asyncio.Lock()
        if client is not None:
            await client.close()

    def _drop_client(self) -> None:
        """The loop the client was made on was closed without its end being seen (run by
        hand, :mod:`tiered_cache.loop_end`): the client cannot be closed without that loop;
        dropped, and the next call makes one on its own loop."""
        self._client = None
        self._connect_lock = asyncio.Lock()
        self._check_lock = asyncio.Lock()

    def _close_a_left_loops_client(self, _: asyncio.AbstractEventLoop) -> None:
        """The loop the client was made on is left open, not running, and this one is another
        (:mod:`tiered_cache.loop_end`): its connections are closed without waiting
        (:mod:`.async_left`), and the next call makes a client on its own loop. Before, it was
        tried: every load a ``SourceError`` (``attached to a different loop``)."""
        client = self._client
        self._drop_client()
        if client is not None:
            close_a_left_loops_client(client)

    def _on_the_given_clients_loop(self) -> None:
        """A client given to the source belongs to the loop it was made on (its aiohttp
        session does), and the source cannot make another: the first loop it serves is the
        only one. Used from a later loop (a second ``asyncio.run``), every call failed deep in
        aiohttp (``SourceError: ... Event loop is closed``); refused here, saying why."""
        loop = asyncio.get_running_loop()
        first = self._given_loop
        if first is None:
            self._given_loop = loop
        elif first is not loop:
            raise EventLoopConflict(
                f"source {self.name!r}: the aiobotocore client given to it belongs to the "
                "event loop it was first used on (its HTTP session does), not to this one; "
                "the source cannot make another. Give the source connect= (from_settings "
                "without client=) to serve one event loop after another, or one client per "
                "loop"
            )

    def _parents_client_error(self) -> SourceError:
        return SourceError(
            f"source {self.name!r}: this process was forked from the one that gave the source "
            "its aiobotocore client, whose connections are the parent's sockets on the "
            "parent's event loop; it sends nothing on them. Give the source connect= "
            "(from_settings without client=) to use it after a fork"
        )

    def __repr__(self) -> str:
        return f"AsyncDynamoDBSource({self._steps.where})"

    # -- the AsyncSource protocol -------------------------------------------------------------

    async def load(self, key: str) -> Any | MissingType:
        """The item for ``key`` (GetItem), or ``MISSING`` if the table has none."""
        return await arun(self._steps.load(key))

    async def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Items for the keys the table has, with one BatchGetItem per 100 distinct keys
        (as :meth:`DynamoDBSource.load_many`, the same errors)."""
        return await arun(self._steps.load_many(keys))

    async def store(self, key: str, value: Any) -> None:
        """Write ``value`` (the whole item) with PutItem (as :meth:`DynamoDBSource.store`)."""
        await arun(self._steps.store(key, value))

    async def remove(self, key: str) -> None:
        """Delete the item of ``key`` (DeleteItem); deleting an absent item is not an error."""
        await arun(self._steps.remove(key))

    def report(self) -> dict[str, float]:
        """Items read and the read capacity units they cost, and the watches started on
        another layout (``watches_on_another_layout``), as the sync source's; and the times
        the source moved on from a loop left open (``loops_left_open``:
        :mod:`tiered_cache.loop_end`)."""
        return {
            **self._steps.meter.report(),
            "watches_on_another_layout": self._watches_on_another_layout,
            "loops_left_open": self._loop_end.left_open,
        }

    async def check_table(self) -> None:
        """DescribeTable, as :meth:`DynamoDBSource.check_table` (done once before the first
        request; call it to check a table up front)."""
        await arun(self._steps.check_table())

    async def aclose(self) -> None:
        """Close the client if this source made it (or was told it owns it). Idempotent."""
        if self._steps.closed:
            return
        self._steps.closed = True
        self._loop_end.stop()
        client, self._client = self._client, None
        if self._forked_from_client:
            keep_from_the_parent(client)  # the parent's sockets: never closed here
        elif self._owns_client and client is not None:
            await client.close()

    async def __aenter__(self) -> AsyncDynamoDBSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the driver's I/O ---------------------------------------------------------------------

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        client = await self.get_client()
        return await getattr(client, method)(**params)

    async def _check_once(self) -> None:
        # One DescribeTable however many coroutines make their first call at once.
        async with self._check_lock:
            if not self._steps.checked:
                await self.check_table()
