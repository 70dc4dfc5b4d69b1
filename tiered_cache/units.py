"""Parsing of human-friendly durations ("250ms", "5m") and sizes ("64MiB")."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*$")
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


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as ``"250ms"``, ``"5m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '250ms' or '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"expected a duration such as '250ms', '30s', '5m' or '1h', got {value!r}"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration such as '250ms' or '5m', got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a number or a string such as ``"64MiB"`` or ``"10MB"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '64MiB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"expected a size such as '512KiB', '64MiB' or '1GB', got {value!r}")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"])
    else:
        raise ValueError(f"expected a size such as '64MiB', got {value!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return size


#: A duration field in a settings model: accepts seconds or strings like "5m".
Duration = Annotated[float, BeforeValidator(parse_duration)]
#: A size field in a settings model: accepts bytes or strings like "64MiB".
ByteSize = Annotated[int, BeforeValidator(parse_size)]
