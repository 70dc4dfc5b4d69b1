"""Parsing of human-friendly durations ("250ms", "1h30m") and sizes ("64MiB")."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, TypeAlias

from pydantic import BeforeValidator

from .redaction import refused

# One or more "<number><unit>" parts ("1h30m", "1m30s", "500ms"), or one bare number (seconds).
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)")
_DURATION_PARTS = re.compile(r"^(?:\s*\d+(?:\.\d+)?\s*(?:us|ms|s|m|h|d))+\s*$")
_DURATION_BARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
_DURATION_HINT = "a duration such as '250ms', '30s', '5m', '1h30m' or a timedelta"
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


#: The longest duration a setting may give: a hundred years (of 365 days). Past it the
#: machinery under a duration fails on every call instead of refusing the setting once
#: (CPython's timeouts stop at about 292 years; Redis's expiries, in milliseconds, later).
MAX_DURATION = 100 * 365 * 86400.0


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds), a :class:`~datetime.timedelta`, or a string such as
    ``"250ms"``, ``"5m"``, ``"1h30m"``; never negative, never NaN or infinite."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HINT}, got {refused(value)}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int) and abs(value) > MAX_DURATION:
        # Compared as an int: past a float's range (10**400) float() raises OverflowError,
        # which pydantic passes on bare, naming no field.
        raise ValueError(_DURATION_NEGATIVE if value < 0 else _DURATION_TOO_LONG)
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"expected {_DURATION_HINT}, got {refused(value)}")
    if not math.isfinite(seconds):
        # NaN compares false with every bound, so it would slip through gt/ge checks and
        # make every expiry computation meaningless; "no limit" is spelt none, not inf.
        raise ValueError("a duration must be a finite number of seconds")
    if seconds < 0:
        raise ValueError(_DURATION_NEGATIVE)
    if seconds > MAX_DURATION:
        raise ValueError(_DURATION_TOO_LONG)
    return seconds


def parse_ttl(value: object) -> float:
    """Seconds of a ttl: a duration (:func:`parse_duration`) more than 0. The one rule of a
    ttl, the settings' (:data:`Ttl`) and a call's (:func:`tiered_cache.stamp.check_ttl`): a
    call took 0, the settings refused it. 0 reads as "forever" to some (memcached) and "at
    once" to others (Django); here it made every value stale as it was loaded (a load on
    every read, in every process). No ttl of its own is spelt none (None)."""
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError(_TTL_ZERO)
    return seconds


_TTL_ZERO = "a ttl must be more than 0 (none: no ttl of its own here)"
_DURATION_NEGATIVE = "a duration cannot be negative"
_DURATION_TOO_LONG = "a duration can be at most 100 years ('36500d')"


def _parse_duration_text(text: str) -> float:
    bare = _DURATION_BARE.match(text)
    if bare is not None:
        return float(bare.group(1))
    if _DURATION_PARTS.match(text) is None:
        raise ValueError(f"expected {_DURATION_HINT}, got {refused(text)}")
    return sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)
    )


_SIZE_HINT = "a size such as '512KiB', '64MiB' or '1GB'"


def parse_size(value: object) -> int:
    """Bytes from a number or a string such as ``"64MiB"`` or ``"10MB"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_SIZE_HINT}, got {refused(value)}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"expected {_SIZE_HINT}, got {refused(value)}")
        number = float(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]
        if not math.isfinite(number):  # 400 digits: int(inf) would raise OverflowError
            raise ValueError("a size must be a finite number of bytes")
        size = int(number)
    else:
        raise ValueError(f"expected {_SIZE_HINT}, got {refused(value)}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


#: A duration as code gives one, the same as a config file: seconds (an int or a float), text
#: such as ``"250ms"`` or ``"1h30m"``, or a :class:`~datetime.timedelta`
#: (:func:`parse_duration`). The type of every duration argument the settings' rule checks (a
#: chain's ``ttl``, a call's, a tier's, a breaker's ``cool_down``).
DurationLike: TypeAlias = float | str | timedelta
#: A duration field in a settings model: accepts seconds or strings like "5m".
Duration = Annotated[float, BeforeValidator(parse_duration)]
#: A ttl field in a settings model: a duration more than 0 (:func:`parse_ttl`).
Ttl = Annotated[float, BeforeValidator(parse_ttl)]
#: A size field in a settings model: accepts bytes or strings like "64MiB".
ByteSize = Annotated[int, BeforeValidator(parse_size)]
