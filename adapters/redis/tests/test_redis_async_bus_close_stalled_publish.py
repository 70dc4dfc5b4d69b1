"""The asyncio bus closed while a publish is stuck on a stalled Redis (SIGSTOP: a fork for a
save, a swap storm, a paused VM), on a ``redis.asyncio`` publisher with no socket timeout (a
bus built by hand): ``aclose()`` waits for the publish :attr:`Health.close_wait` at most, then
returns, new publishes refused; the publish, the last to end, closes the publisher as it ends,
leaving no connection open. The threaded bus's twin: test_redis_bus_close_stalled_publish.py.

Seen failing: ``aclose()`` waited for the publish until Redis resumed (the threaded bus's
close was bounded; this one was not).

Each test stops its own server: a real SIGSTOP under a real publish, its connections counted
on the resumed server (``CLIENT LIST``). Waits are guards against a hang, never measures.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisBus
from tiered_cache_redis.listening import Health

from tiered_cache.bus import Invalidation
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer

from .server_connections import no_connection_opened_since, opened_since

#: Generous: an aclose or a publish that has not returned by then is stuck, not slow.
STUCK = 15.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:  # its own: stopped, and its CLIENT LIST this bus's alone
        yield private


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(number: int) -> Invalidation:
    return Invalidation("writer", number, ("k",), (), False, 0.0)


class Stalled:
    """A bus on ``server`` whose publisher has no socket timeout, its connection pooled, and
    ``server`` stopped (:meth:`stop`) and resumed (:meth:`resume`, once, whatever happens)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.watch = redis.Redis(host=server.host, port=server.port)
        self.before = {int(client["id"]) for client in self.watch.client_list()}
        publisher = aioredis.Redis(
            host=server.host, port=server.port, socket_timeout=None, socket_connect_timeout=None
        )
        self.bus = AsyncRedisBus(
            lambda: publisher,
            "stalled",
            listen_with=lambda: redis.Redis(host=server.host, port=server.port),
            publisher=publisher,
            health=Health(interval=0.5, timeout=0.5),
        )
        self._stopped = False

    async def warm(self) -> None:
        """Two connections in the publisher's pool: one for the stuck publish, one idle, which
        only the publisher's close closes (a publish cancelled closes its own)."""
        await asyncio.gather(self.bus.publish(message(1)), self.bus.publish(message(1)))
        assert opened_since(self.watch, self.before) == ["publish", "publish"]

    def stop(self) -> None:
        pid = self.server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        self._stopped = True

    def resume(self) -> None:
        if self._stopped:
            self._stopped = False
            pid = self.server.pid
            assert pid is not None
            os.kill(pid, signal.SIGCONT)

    async def stuck_publishes(self, count: int) -> list[asyncio.Task[str]]:
        """``count`` publishes sent to the stopped server, each on the wire with no reply
        coming; each task's result: "sent", or the name of what it raised."""

        async def publish(number: int) -> str:
            try:
                await self.bus.publish(message(number))
            except Exception as exc:
                return type(exc).__name__
            return "sent"

        tasks = [asyncio.create_task(publish(number)) for number in range(2, 2 + count)]
        await async_until(
            lambda: len(self.bus._publishes._running) == count, "the publishes on the wire"
        )
        return tasks

    async def aclose_past_one_stuck_publish(
        self,
    ) -> tuple[asyncio.Task[str], asyncio.Task[None], bool, bool]:
        """Warmed, the server stopped, one publish stuck on the wire, then ``aclose()`` in a
        task of its own: the publish's task, the close's, whether the close returned while
        the server was stopped, and whether a new publish was refused then. The server is
        resumed before this returns, whatever happens."""
        await self.warm()
        self.stop()
        try:
            [writer] = await self.stuck_publishes(1)
            closer = asyncio.create_task(self.bus.aclose())
            return writer, closer, await ended(closer), await self.refused()
        finally:
            self.resume()

    async def refused(self) -> bool:
        """A new publish is refused, as after a close (nothing sent)."""
        try:
            await self.bus.publish(message(99))
        except RuntimeError as exc:
            return "is closed" in str(exc)
        return False

    async def left_open(self) -> list[str]:
        """The connections of the bus still open on the (resumed) server."""
        left = await no_connection_opened_since(self.watch, self.before)
        self.watch.close()
        return left


async def ended(task: asyncio.Future[object]) -> bool:
    """Whether ``task`` ends within the guard (not cancelled on timeout)."""
    await asyncio.wait({task}, timeout=STUCK)
    return task.done()


async def closed_in_a_task(
    bus: AsyncRedisBus, close: Callable[[], Awaitable[None]] | None = None
) -> asyncio.Task[None]:
    """``bus.aclose()`` (or ``close``) started in a task of its own, once its close began."""
    closer = asyncio.create_task((close or bus.aclose)())
    await async_until(lambda: bus._publishes.closing, "the close refusing new publishes")
    return closer


@pytest.mark.anyio
async def test_an_aclose_returns_while_a_publish_is_stuck_on_a_stopped_redis(
    server: RedisServer,
) -> None:
    stalled = Stalled(server)
    writer, closer, closed_while_stopped, refused = await stalled.aclose_past_one_stuck_publish()
    assert [closed_while_stopped, refused] == [True, True]
    assert [await ended(writer), writer.result()] == [True, "sent"]
    await closer
    # The publisher closed by the publish, the last to end: nothing of the bus left open.
    assert await stalled.left_open() == []


@pytest.mark.anyio
async def test_an_aclose_cancelled_while_a_publish_is_stuck_leaves_the_close_to_it(
    server: RedisServer,
) -> None:
    """An ``asyncio.timeout`` around a shutdown, a second signal: the close cancelled while it
    waits for the publish still refuses new publishes, and the publish closes the publisher
    as it ends."""
    stalled = Stalled(server)
    await stalled.warm()
    stalled.stop()
    try:
        [writer] = await stalled.stuck_publishes(1)
        closer = await closed_in_a_task(stalled.bus)
        closer.cancel()
        cancelled = await ended(closer) and closer.cancelled()
        refused = await stalled.refused()
    finally:
        stalled.resume()
    assert [cancelled, refused] == [True, True]
    assert [await ended(writer), writer.result()] == [True, "sent"]
    assert await stalled.left_open() == []


@pytest.mark.anyio
async def test_two_acloses_at_once_with_a_publish_stuck_both_return(server: RedisServer) -> None:
    """A SIGTERM handler's close beside the service's own: both return within the bound, and
    the publisher is closed once the publish ends (its close run once, not failing)."""
    stalled = Stalled(server)
    await stalled.warm()
    stalled.stop()
    try:
        [writer] = await stalled.stuck_publishes(1)
        closers = [asyncio.create_task(stalled.bus.aclose()) for _ in range(2)]
        closed_while_stopped = [await ended(closer) for closer in closers]
        refused = await stalled.refused()
    finally:
        stalled.resume()
    assert [closed_while_stopped, refused] == [[True, True], True]
    assert [await ended(writer), writer.result()] == [True, "sent"]
    for closer in closers:
        await closer
    assert await stalled.left_open() == []


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["as-it-waits", "after-it-returned"])
async def test_publishes_cancelled_around_an_aclose_leave_nothing_open(
    server: RedisServer, when: str
) -> None:
    """A shutdown cancelling the writes stuck on a stalled Redis while (or after) another task
    closes the bus: each publish ends cancelled, the close returns, and the last to end closes
    the publisher (or the close does, once they all ended)."""
    stalled = Stalled(server)
    await stalled.warm()
    stalled.stop()
    try:
        writers = await stalled.stuck_publishes(3)
        closer = await closed_in_a_task(stalled.bus)
        if when == "after-it-returned":
            assert await ended(closer)
        for writer in writers:
            writer.cancel()
        outcomes = [await ended(writer) and writer.cancelled() for writer in writers]
        closed_while_stopped = await ended(closer)
    finally:
        stalled.resume()
    assert [outcomes, closed_while_stopped] == [[True] * 3, True]
    await closer
    assert await stalled.left_open() == []


def test_a_loop_ending_with_a_publish_stuck_after_aclose_closes_the_publisher(
    server: RedisServer,
) -> None:
    """``asyncio.run`` ends with the publish still stuck (the close returned past its bound):
    its end cancels the publish, which closes the publisher as it ends: no task destroyed
    pending, no coroutine left unawaited (warnings are errors), nothing left open."""
    stalled = Stalled(server)
    left: list[asyncio.Task[str]] = []

    async def serve() -> list[bool]:
        await stalled.warm()
        stalled.stop()
        left.extend(await stalled.stuck_publishes(1))
        return [await ended(asyncio.create_task(stalled.bus.aclose())), await stalled.refused()]

    try:
        closed_and_refused = asyncio.run(serve())
    finally:
        stalled.resume()
    [writer] = left
    assert [closed_and_refused, writer.cancelled()] == [[True, True], True]
    assert asyncio.run(stalled.left_open()) == []


def test_a_loop_ending_while_aclose_waits_for_a_stuck_publish_closes_the_publisher(
    server: RedisServer,
) -> None:
    """``asyncio.run`` ends while the close still waits for the publish (a service returning
    from its main without awaiting its shutdown task): its end cancels both, in either
    order, and whichever ends last closes the publisher."""
    stalled = Stalled(server)
    left: list[asyncio.Task[object]] = []

    async def serve() -> None:
        await stalled.warm()
        stalled.stop()
        left.extend(await stalled.stuck_publishes(1))
        left.append(await closed_in_a_task(stalled.bus))

    try:
        asyncio.run(serve())
    finally:
        stalled.resume()
    assert [task.cancelled() for task in left] == [True, True]
    assert asyncio.run(stalled.left_open()) == []


@pytest.mark.anyio
async def test_the_publishers_close_failing_after_the_last_publish_is_logged_not_raised(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The publish that closes the publisher as it ends was sent: the close's error is said
    in the bus's log, not raised into the write that published."""
    stalled = Stalled(server)
    publisher = stalled.bus._client
    real_aclose = publisher.aclose

    async def failing_aclose(close_connection_pool: bool | None = None) -> None:
        await real_aclose(close_connection_pool)
        raise redis.ConnectionError("closing failed")

    publisher.aclose = failing_aclose  # type: ignore[method-assign]
    writer, closer, closed_while_stopped, refused = await stalled.aclose_past_one_stuck_publish()
    assert [closed_while_stopped, refused] == [True, True]
    assert [await ended(writer), writer.result()] == [True, "sent"]
    await closer
    failed = [r.getMessage() for r in caplog.records if r.name == "tiered_cache.bus.stalled"]
    assert failed == ["bus 'stalled': closing its client after its last call failed"]
    assert await stalled.left_open() == []
