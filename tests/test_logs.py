"""Structured log records: one logger per part, ``extra=`` fields, and no raw key."""

from __future__ import annotations

import logging

import pytest

from tiered_cache import TieredCache
from tiered_cache.logs import key_hash
from tiered_cache.memory import MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.recording import RecordingTier

SECRET_KEY = "session:4f1c-secret-token"


def test_key_hash_is_stable_short_and_not_the_key() -> None:
    assert key_hash(SECRET_KEY) == key_hash(SECRET_KEY)
    assert key_hash(SECRET_KEY) != key_hash(SECRET_KEY + "x")
    assert len(key_hash(SECRET_KEY)) == 16
    assert "secret" not in key_hash(SECRET_KEY)


def test_a_failing_tier_logs_on_its_own_logger_with_its_name_and_event(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    l2 = RecordingTier(MemoryTier(name="l2", clock=clock))
    l2.failure = ConnectionError("redis went away")
    cache = TieredCache([MemoryTier(name="l1", clock=clock), l2], clock=clock)
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        cache.get(SECRET_KEY, lambda: "v")
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "tier_failed"]
    assert record.name == "tiered_cache.tier.l2"
    assert record.__dict__["tier"] == "l2"


def test_a_fail_safe_serve_logs_the_key_hash_never_the_key(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    protection = Protection(stale_while_revalidate=False, soft_timeout=None)
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, ttl=10, protection=protection)
    cache.get(SECRET_KEY, lambda: "old")
    clock.advance(11)  # stale, still within max_stale

    def failing() -> str:
        raise ConnectionError("source down")

    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        assert cache.get(SECRET_KEY, failing) == "old"
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "fail_safe"]
    assert record.name == "tiered_cache.chain"
    assert record.__dict__["key_hash"] == key_hash(SECRET_KEY)
    assert all("secret" not in r.getMessage() for r in caplog.records)
