"""Read capacity: what a read of an item costs, from the item's size (DynamoDB's rules).

A strongly consistent read costs one read capacity unit (RCU) per 4 KB of the item, rounded up;
an eventually consistent one half that. A read that finds nothing still costs the minimum (one
unit, or half). Each item of a BatchGetItem is rounded up on its own. Item sizes follow the
"Item sizes and formats" page of the DynamoDB developer guide: attribute names count their UTF-8
bytes; strings their UTF-8 bytes, binaries their bytes; a number about one byte per two
significant digits, plus one; null and booleans one byte; lists and maps three bytes plus one per
element, plus the elements; sets the sum of their elements.

A source with a projection reads only some attributes but pays for the whole item: the units
counted from what it received are then a lower bound.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

#: Bytes one read capacity unit covers.
READ_UNIT_BYTES = 4096


def item_size(item: Mapping[str, Any]) -> int:
    """The size in bytes DynamoDB bills for ``item``, given in its typed form
    (``{"tweet_id": {"S": "42"}, "likes": {"N": "7"}}``)."""
    return sum(attribute_size(name, value) for name, value in item.items())


def attribute_size(name: str, value: Any) -> int:
    """The bytes one attribute of an item counts, its name's and its typed value's; a
    ``ValueError``, ``TypeError`` or ``AttributeError`` for a value not of DynamoDB's typed
    form (not a map of one known type tag)."""
    return _text_size(name) + _value_size(value)


def read_units(size: int, *, consistent: bool) -> float:
    """The read capacity units one read of an item of ``size`` bytes costs (0 bytes: a read
    that found nothing, which costs the minimum)."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


def _text_size(text: str) -> int:
    return len(text.encode("utf-8"))


def _number_size(text: str) -> int:
    mantissa = text.strip().lstrip("+").lower().split("e")[0]
    negative = mantissa.startswith("-")
    digits = mantissa.lstrip("-").replace(".", "").strip("0") or "0"
    return math.ceil(len(digits) / 2) + 1 + (1 if negative else 0)


def _binary_size(value: Any) -> int:
    return len(value) if isinstance(value, bytes | bytearray) else len(bytes(value))


def _value_size(value: Mapping[str, Any]) -> int:
    ((tag, inner),) = value.items()
    if tag == "S":
        return _text_size(inner)
    if tag == "N":
        return _number_size(inner)
    if tag == "B":
        return _binary_size(inner)
    if tag in ("NULL", "BOOL"):
        return 1
    if tag == "SS":
        return sum(_text_size(text) for text in inner)
    if tag == "NS":
        return sum(_number_size(text) for text in inner)
    if tag == "BS":
        return sum(_binary_size(data) for data in inner)
    if tag == "L":
        return 3 + sum(1 + _value_size(element) for element in inner)
    if tag == "M":
        return 3 + sum(1 + _text_size(k) + _value_size(v) for k, v in inner.items())
    raise ValueError(f"not a DynamoDB attribute value type: {tag!r}")


class ReadMeter:
    """Counts the reads a source made and the read units they cost (thread-safe)."""

    def __init__(self, *, consistent: bool) -> None:
        self._consistent = consistent
        self._lock = threading.Lock()
        self._reads = 0
        self._units = 0.0

    def found(self, size: int) -> None:
        """Count a read that returned an item of ``size`` bytes (:func:`item_size`)."""
        units = read_units(size, consistent=self._consistent)
        with self._lock:
            self._reads += 1
            self._units += units

    def not_found(self, count: int = 1) -> None:
        """Count ``count`` reads that found nothing (each costs the minimum)."""
        units = read_units(0, consistent=self._consistent) * count
        with self._lock:
            self._reads += count
            self._units += units

    def report(self) -> dict[str, float]:
        """Reads made, units spent, and units per read (the minimum before the first read)."""
        with self._lock:
            reads, units = self._reads, self._units
        per_read = units / reads if reads else read_units(0, consistent=self._consistent)
        return {"reads": reads, "read_units": units, "read_units_per_read": per_read}
