"""A test's own log: the records tiered-cache made, not those of other code in the process."""

from __future__ import annotations

import logging
from collections.abc import Iterable

#: The prefix of every logger of the library and its adapters (``tiered_cache.tier.l2``,
#: ``tiered_cache_redis.bus``, ``tiered_cache_dynamodb.source``).
PREFIX = "tiered_cache"


def ours(records: Iterable[logging.LogRecord]) -> list[logging.LogRecord]:
    """The records of ``records`` (a test's captured log: ``caplog.records``) that
    tiered-cache's loggers made. pytest captures at the root logger, so a test that counts
    its log, or asserts it is empty, also saw lines of other code running in the process
    meanwhile: a moto server a session fixture left running logged, on a thread of its
    own, a request it could not parse, in a Redis test that asserted an empty log."""
    return [record for record in records if record.name.startswith(PREFIX)]
