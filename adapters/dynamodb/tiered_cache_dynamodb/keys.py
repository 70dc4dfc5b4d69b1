"""Cache key <-> DynamoDB item key: the template, the key types and DynamoDB's key limits.

Everything here runs before any request is sent, so a bad key costs no round trip and no
read capacity, and its error names the key and the rule it breaks.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from tiered_cache.errors import KeyTemplateError
from tiered_cache.redaction import shown_template

from .errors import InvalidKeyError

#: DynamoDB's limits on key attribute values, in bytes (UTF-8 for strings).
MAX_PARTITION_KEY_BYTES: Final = 2048
MAX_SORT_KEY_BYTES: Final = 1024
#: DynamoDB numbers: up to 38 significant digits, magnitude in [1E-130, 1E126).
MAX_NUMBER_DIGITS: Final = 38
_MIN_NUMBER: Final = Decimal("1E-130")
_MAX_NUMBER: Final = Decimal("1E126")
_NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

#: A typed attribute value as the low-level client takes it: ``{"S": "42"}``.
AttributeValue = Mapping[str, Any]
#: What identifies an item regardless of how its key was spelt ("042" and "42" as N are one).
Identity = tuple[str | Decimal | bytes, ...]


@dataclass(frozen=True)
class Template:
    """A parsed key template: its text, the attributes in order of appearance, its regex."""

    text: str
    fields: tuple[str, ...]
    pattern: re.Pattern[str]


def parse_template(text: str, key: str, range_key: str | None) -> Template:
    """Parse ``text`` such as ``"tweet:{tweet_id}"``; :class:`KeyTemplateError` if it is unfit.

    The placeholders must be exactly the key attributes (each once, no format spec), and two
    placeholders must be separated by literal text, or a cache key could split two ways.
    """
    wanted = {key} if range_key is None else {key, range_key}
    # A template is shown in its errors; text with no placeholder, which may be a secret
    # typed a field off, is not (tiered_cache.redaction).
    shown = shown_template(text)
    fields: list[str] = []
    regex = ""
    previous_was_field = False
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise KeyTemplateError(f"key_template {shown} is not a valid template: {exc}") from None
    for literal, field, spec, conversion in parts:
        if literal:
            regex += re.escape(literal)
            previous_was_field = False
        if field is None:
            continue
        if spec or conversion:
            raise KeyTemplateError(
                f"key_template {shown}: placeholder {{{field}}} may not have a format "
                "spec or conversion"
            )
        if field not in wanted:
            raise KeyTemplateError(
                f"key_template {shown}: placeholder {{{field}}} is not a key attribute; "
                f"expected {_names(wanted)}"
            )
        if field in fields:
            raise KeyTemplateError(f"key_template {shown}: placeholder {{{field}}} appears twice")
        if previous_was_field:
            raise KeyTemplateError(
                f"key_template {shown}: placeholders {{{fields[-1]}}} and {{{field}}} need "
                "literal text between them (such as '#'), or a key could split two ways"
            )
        fields.append(field)
        # Lazy groups with a full match: with "{user_id}#{tweet_id}" the key "u#1#2" gives
        # user_id "u" and tweet_id "1#2", always the same way.
        regex += f"(?P<{_group(field, len(fields))}>.+?)"
        previous_was_field = True
    missing = wanted - set(fields)
    if missing:
        raise KeyTemplateError(
            f"key_template {shown} has no placeholder for {_names(missing)}; "
            f"it must contain {_names(wanted)}"
        )
    return Template(text, tuple(fields), re.compile(regex, re.DOTALL))


def show(key: str, limit: int = 80) -> str:
    """``repr(key)``, shortened if long: keys near DynamoDB's limits would flood a message."""
    if len(key) <= limit:
        return repr(key)
    return f"{key[: limit - 20]!r}...({len(key)} characters)"


def _group(field: str, index: int) -> str:
    # Attribute names may not be valid regex group names ("user-id"): use positions.
    return f"f{index}"


def _names(names: set[str]) -> str:
    return ", ".join(f"{{{name}}}" for name in sorted(names))


class KeyCodec:
    """Turns cache keys into DynamoDB keys and recognises an item's key.

    Args:
        key: the partition key attribute; ``key_type`` its type ("S", "N" or "B").
        range_key: the sort key attribute, if any; ``range_key_type`` its type.
        template: the key template; ``None`` means the cache key is the partition key value.

    Binary key values are written base64-encoded in the cache key, as in DynamoDB's own JSON.
    """

    def __init__(
        self,
        key: str,
        key_type: str = "S",
        range_key: str | None = None,
        range_key_type: str = "S",
        template: str | None = None,
    ) -> None:
        if range_key is not None and template is None:
            raise KeyTemplateError(
                f"a sort key ({range_key!r}) needs a key_template that contains both keys"
            )
        self.key = key
        self.range_key = range_key
        self._types: dict[str, str] = {key: key_type}
        self._limits: dict[str, int] = {key: MAX_PARTITION_KEY_BYTES}
        if range_key is not None:
            self._types[range_key] = range_key_type
            self._limits[range_key] = MAX_SORT_KEY_BYTES
        self.template = parse_template(template, key, range_key) if template else None
        self.attributes: tuple[str, ...] = (key,) if range_key is None else (key, range_key)

    def type_of(self, attribute: str) -> str:
        """The declared DynamoDB type of a key attribute."""
        return self._types[attribute]

    def to_key(self, cache_key: str) -> dict[str, AttributeValue]:
        """The typed DynamoDB key for ``cache_key``; raises if the key cannot be one."""
        if not isinstance(cache_key, str):
            raise InvalidKeyError(f"cache keys are strings, got {type(cache_key).__name__}")
        if not cache_key:
            raise InvalidKeyError("the cache key is empty; DynamoDB key values cannot be empty")
        if self.template is None:
            raw = {self.key: cache_key}
        else:
            match = self.template.pattern.fullmatch(cache_key)
            if match is None:
                raise KeyTemplateError(
                    f"cache key {show(cache_key)} does not match key_template "
                    f"{self.template.text!r}"
                )
            raw = {
                field: match.group(_group(field, index))
                for index, field in enumerate(self.template.fields, start=1)
            }
        return {name: self._encode(name, raw[name], cache_key) for name in self.attributes}

    def _encode(self, attribute: str, text: str, cache_key: str) -> AttributeValue:
        kind = self._types[attribute]
        role = "partition key" if attribute == self.key else "sort key"
        where = f"{role} {attribute!r} of cache key {show(cache_key)}"
        if kind == "N":
            return {"N": str(parse_number(text, where))}
        if kind == "B":
            try:
                data = base64.b64decode(text.encode("ascii"), validate=True)
            except (UnicodeEncodeError, binascii.Error):
                raise InvalidKeyError(
                    f"{where}: {show(text)} is not base64, which binary (B) key values must be"
                ) from None
            self._check_size(attribute, len(data), where)
            return {"B": data}
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidKeyError(f"{where}: {show(text)} is not valid Unicode text") from None
        self._check_size(attribute, size, where)
        return {"S": text}

    def _check_size(self, attribute: str, size: int, where: str) -> None:
        if size == 0:
            raise InvalidKeyError(f"{where}: the value is empty; DynamoDB key values cannot be")
        limit = self._limits[attribute]
        if size > limit:
            raise InvalidKeyError(
                f"{where}: {size} bytes is over DynamoDB's limit of {limit} bytes"
            )

    def identity(self, key: Mapping[str, Any]) -> Identity:
        """What identifies the item of a typed key or typed item (numbers compared as numbers).

        Raises :class:`InvalidKeyError` if a key attribute is absent or of another type.
        """
        parts: list[str | Decimal | bytes] = []
        for name in self.attributes:
            value = key.get(name)
            kind = self._types[name]
            if not isinstance(value, Mapping) or kind not in value:
                raise InvalidKeyError(
                    f"the item has no {kind!r} attribute {name!r} "
                    f"(the table's {'partition' if name == self.key else 'sort'} key)"
                    if value is None
                    else f"the item's key attribute {name!r} is {_describe_typed(value)}, "
                    f"but the table's key type is {kind!r}"
                )
            raw = value[kind]
            if kind == "N":
                try:
                    parts.append(Decimal(str(raw)))
                except InvalidOperation:
                    raise InvalidKeyError(
                        f"the item's key attribute {name!r} is {raw!r}, not a number"
                    ) from None
            elif kind == "B":
                parts.append(bytes(raw))
            else:
                parts.append(str(raw))
        return tuple(parts)

    def format(self, key: Mapping[str, Any]) -> str:
        """The cache key of a typed key (the inverse of :meth:`to_key`), for messages."""
        values = {}
        for name in self.attributes:
            typed = key.get(name) or {}
            kind = self._types[name]
            raw = typed.get(kind, "?") if isinstance(typed, Mapping) else "?"
            if kind == "B" and isinstance(raw, bytes | bytearray):
                raw = base64.b64encode(bytes(raw)).decode("ascii")
            values[name] = str(raw)
        if self.template is None:
            return values[self.key]
        return self.template.text.format_map(values)


def parse_number(text: str, where: str) -> Decimal:
    """``text`` as a DynamoDB number; :class:`InvalidKeyError` naming ``where`` otherwise."""
    # The length check comes first so that a huge string is never handed to Decimal.
    if len(text) > MAX_PARTITION_KEY_BYTES or not _NUMBER.fullmatch(text):
        raise InvalidKeyError(f"{where}: {show(text)} is not a number, which N keys must be")
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        raise InvalidKeyError(f"{where}: {text!r} is not a number") from None
    # Significant digits without the context rounding that Decimal.normalize() would apply.
    significant = "".join(map(str, number.as_tuple().digits)).strip("0")
    if len(significant) > MAX_NUMBER_DIGITS:
        raise InvalidKeyError(
            f"{where}: {text!r} has more than {MAX_NUMBER_DIGITS} significant digits"
        )
    if number != 0 and not _MIN_NUMBER <= abs(number) < _MAX_NUMBER:
        raise InvalidKeyError(f"{where}: {text!r} is outside DynamoDB's number range")
    return number


def _describe_typed(value: object) -> str:
    if isinstance(value, Mapping) and len(value) == 1:
        return f"of type {next(iter(value))!r}"
    return f"{value!r}"
