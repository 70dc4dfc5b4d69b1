"""Structured log records: one logger per part, and the ``extra=`` fields every record carries.

Loggers are named ``tiered_cache.<part>``: ``tiered_cache.chain``, ``tiered_cache.tier.<name>``,
``tiered_cache.bus``, ``tiered_cache.source``, ``tiered_cache.breaker``. A record made through
:func:`fields` carries ``event`` (what happened, a stable snake_case name), and when they apply
``tier`` (the tier's name) and ``key_hash``.

Keys are never logged raw: a key can hold what should not reach a log store (an e-mail, a token
in ``session:<token>``). :func:`key_hash` is a short BLAKE2b digest of the key: the same key
always gives the same hash, so the records of one key can be found together (and a known key
looked up by hashing it), but the key cannot be read back from it. It is not a secret: a key
from a small, guessable set can be found by hashing every candidate.
"""

from __future__ import annotations

import hashlib
import logging

#: Every logger of the library is below this one.
ROOT = "tiered_cache"


def key_hash(key: str) -> str:
    """A 16-hex-digit digest of ``key`` (BLAKE2b, 8 bytes): stable across processes and runs."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def logger_for(part: str) -> logging.Logger:
    """The logger of one part of the library: ``logger_for("tier.redis")``."""
    return logging.getLogger(f"{ROOT}.{part}")


def tier_logger(name: str) -> logging.Logger:
    """The logger of the tier called ``name`` (``tiered_cache.tier.<name>``)."""
    return logger_for(f"tier.{name}")


def fields(
    event: str,
    *,
    key: str | None = None,
    tier: str | None = None,
    **more: str | int | float | None,
) -> dict[str, str | int | float | None]:
    """The ``extra=`` of a record: ``event``, and ``tier`` and ``key_hash`` when given."""
    extra: dict[str, str | int | float | None] = {"event": event}
    if tier is not None:
        extra["tier"] = tier
    if key is not None:
        extra["key_hash"] = key_hash(key)
    extra.update(more)
    return extra
