"""What a bus listener does with messages on its channel that no chain sent.

Anything can publish on the channel (a script, another application sharing the server, a
corrupted sender): a message that is not an invalidation is logged and ignored
(:meth:`Invalidation.decode` raises ``ValueError`` for it), and the subscription goes on.
Seen failing: a sequence number out of range (``1e400``: ``OverflowError``) or a body nested
past the parser's depth (``RecursionError``) escaped the decode, and the listener took it for
a failure of its subscription: every chain on the bus told it was down (its memory dropped,
counted as an outage), the subscription closed and opened again after a backoff, and the
messages sent meanwhile lost; one such message per second kept every chain down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tiered_cache_redis.bus import RedisBus

from tiered_cache.bus import Invalidation
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer

from .bus_listeners import Heard

GUARD = 30.0

#: Payloads no chain sends, each of which the decode must refuse with ``ValueError``.
HOSTILE = {
    "sequence out of range": b'{"s":"x","n":1e400}',
    "nested past the parser's depth": b"[" * 100_000,
    "not JSON": b"\xff\xfe{",
    "not an object": b"[1,2]",
    "no sequence": b'{"s":"x"}',
    "sequence not a number": b'{"s":"x","n":"NaN"}',
}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:
        yield private


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, retry=Retry(NoBackoff(), 0))


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=list(HOSTILE))
def test_a_message_that_is_not_an_invalidation_is_refused_with_value_error(
    payload: bytes,
) -> None:
    with pytest.raises(ValueError, match="not an invalidation message"):
        Invalidation.decode(payload)


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=list(HOSTILE))
def test_a_message_that_is_not_an_invalidation_is_ignored_and_the_subscription_goes_on(
    server: RedisServer, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The hostile message, then an invalidation of a key holding the key separator: the
    listener hears the invalidation, as it is, on the subscription it had; nobody is told
    of an outage or an error."""
    channel = f"hostile-{sorted(HOSTILE.values()).index(payload)}"
    bus = RedisBus(lambda: client_of(server), channel)
    heard = Heard()
    received: list[Invalidation] = []
    heard.on_message = received.append  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="tiered_cache_redis.bus")
    publisher = client_of(server)
    try:
        bus.subscribe(heard)
        assert bus.wait_subscribed(GUARD)
        publisher.publish(channel, payload)
        publisher.publish(channel, Invalidation("other", 1, ("user:1:name",)).encode())
        until(lambda: received or "disconnect" in heard.events, "the invalidation or an outage")
    finally:
        publisher.close()
        bus.close()
    assert heard.events == ["reconnect", "disconnect"]  # the close's, last
    assert [message.keys for message in received] == [("user:1:name",)]
    said = [record.getMessage() for record in caplog.records]
    assert any("not an invalidation" in line for line in said), said
