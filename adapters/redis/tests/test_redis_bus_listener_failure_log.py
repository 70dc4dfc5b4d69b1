"""A listener that fails on a message is logged without the message's keys.

Keys are never logged raw (docs/metrics.md): the failure was logged with the message's repr,
which held every key and prefix ("a listener failed on Invalidation(..., keys=('user:
s3cr3t',), ...)"). The message is shown by its sender, number and counts.
"""

from __future__ import annotations

import logging

import pytest
from tiered_cache_redis.listening import Listeners

from tiered_cache.bus import Invalidation

from .bus_listeners import Heard


class Failing(Heard):
    def on_message(self, message: Invalidation) -> None:
        raise RuntimeError("listener broke")


def test_a_failing_listener_is_logged_without_the_keys(caplog: pytest.LogCaptureFixture) -> None:
    listeners = Listeners("bus:chan")
    after = Heard()
    listeners.add(Failing())
    listeners.add(after)
    message = Invalidation("s1", 3, keys=("user:s3cr3t",), prefixes=("tok:s3cr3t",))
    with caplog.at_level(logging.ERROR):
        listeners.deliver(message.encode())
    assert after.events == ["message"]  # the others still hear it
    (record,) = caplog.records
    assert record.exc_info is not None
    assert "s3cr3t" not in record.getMessage()
    assert "keys=1, prefixes=1" in record.getMessage()


def test_a_message_repr_counts_its_keys() -> None:
    message = Invalidation("s1", 3, keys=("a:s3cr3t", "b"), at=2.5)
    assert repr(message) == (
        "Invalidation(sender='s1', seq=3, keys=2, prefixes=0, clear=False, at=2.5)"
    )
