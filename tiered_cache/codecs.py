"""Codecs turn cached values into bytes for shared tiers such as Redis, and back.

Every codec round-trips exactly what a DynamoDB item can hold, as boto3's ``TypeDeserializer``
returns it: ``str``, ``int``, ``Decimal`` (DynamoDB numbers), ``float``, ``bool``, ``None``,
``bytes``, ``list``, ``dict`` with ``str`` keys, ``set``/``frozenset`` of strings, numbers or
bytes; and also ``tuple``. "Exactly" means the decoded value is equal to the original and of the
same types all the way down (a ``Decimal`` stays a ``Decimal``, a tuple stays a tuple).

* ``json`` (default): readable, no dependency. Types JSON lacks are tagged objects such as
  ``{"$d": "1.50"}``; a user dict that could be mistaken for a tag is escaped. With ``orjson``
  installed (a dependency of tiered-cache-redis) the same bytes are written and read faster.
* ``msgpack``: smaller and faster; needs ``pip install msgpack``. A ``bytearray`` or a
  ``memoryview`` comes back as ``bytes`` (msgpack packs them as its binary type, the one
  ``bytes`` has), where ``json`` refuses them: convert before caching if the type matters.
* ``pickle``: any picklable value, but only for trusted tiers; never chosen by default.

A value a codec cannot encode raises :class:`~tiered_cache.errors.CodecError` naming the type
and where it sits, e.g. ``value['author']: object of type datetime is not supported by codec
'json'``.
"""

from __future__ import annotations

import base64
import builtins
import importlib
import json
import math
import pickle
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, Protocol, runtime_checkable

from .compiled import compiled_core
from .errors import CodecError, ConfigError
from .redaction import unknown_value

try:  # optional: the JSON codec's fast path (same format, C speed); the stdlib otherwise
    import orjson as _orjson
except ImportError:  # JsonCodec(fast=False) is the same path, and is what the tests use
    _orjson = None  # type: ignore[assignment]

SUPPORTED_TYPES = (
    "str, int, float, Decimal, bool, None, bytes, list, tuple, dict with str keys, "
    "set and frozenset"
)


@runtime_checkable
class Codec(Protocol):
    """Turns a value into bytes and back; raises :class:`CodecError` for what it cannot."""

    name: str

    def encode(self, value: Any) -> bytes:
        """The bytes of ``value``."""
        ...

    def decode(self, data: bytes) -> Any:
        """The value ``data`` was made from."""
        ...


#: What a batch decode returns: the values in order (``None`` where one failed) and, by
#: position, the error of each value that could not be decoded.
Decoded = tuple[list[Any], dict[int, CodecError]]


def decode_each(codec: Codec, datas: Sequence[bytes]) -> Decoded:
    """``codec.decode`` of each of ``datas``: a value that fails is its own error, never the
    others'."""
    values: list[Any] = []
    errors: dict[int, CodecError] = {}
    decode = codec.decode
    for index, data in enumerate(datas):
        try:
            values.append(decode(data))
        except CodecError as exc:
            values.append(None)
            errors[index] = exc
    return values, errors


class CodecBase:
    """What a codec may offer beyond :class:`Codec`, declared with defaults (as tiers declare
    theirs with :class:`~tiered_cache.tier.TierBase`); the built-in codecs derive from it.

    :meth:`decode_many` decodes a batch (an ``MGET``'s values): a codec that can do part of
    the work once for the batch overrides it; a bad value is still only its own error.
    """

    name: str

    def encode(self, value: Any) -> bytes:
        """The bytes of ``value``."""
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        """The value ``data`` was made from."""
        raise NotImplementedError

    def decode_many(self, datas: Sequence[bytes]) -> Decoded:
        """:meth:`decode` of each of ``datas`` (:func:`decode_each`)."""
        return decode_each(self, datas)


def batch_decoder(codec: Codec) -> Callable[[Sequence[bytes]], Decoded]:
    """How to decode a batch with ``codec``: its own ``decode_many`` if it declares one
    (:class:`CodecBase`), else one :meth:`Codec.decode` per value."""
    if isinstance(codec, CodecBase):
        return codec.decode_many
    return lambda datas: decode_each(codec, datas)


class _Unsupported(Exception):
    """Raised deep in an encoder; each level on the way out prepends its part of the path."""

    def __init__(self, value: Any, reason: str | None = None) -> None:
        super().__init__()
        self.value = value
        self.reason = reason
        self.path: list[str] = []

    def error(self, codec: str) -> CodecError:
        where = "value" + "".join(reversed(self.path))
        reason = self.reason or (
            f"object of type {_type_name(type(self.value))} is not supported by codec {codec!r}"
        )
        return CodecError(
            f"{where}: {reason}; codec {codec!r} supports {SUPPORTED_TYPES}. "
            f"Convert the value before caching it"
            + ("" if codec == "pickle" else ", or choose codec 'pickle'")
        )


def _type_name(kind: type) -> str:
    """``kind``'s name in an error; with its module when a builtin has that name and it is not
    that builtin: numpy's bool is named ``bool``, and "object of type bool is not supported
    ... supports bool" contradicted itself."""
    name = kind.__name__
    if kind.__module__ != "builtins" and hasattr(builtins, name):
        return f"{kind.__module__}.{kind.__qualname__}"
    return name


def _is_boto3_binary(value: Any) -> bool:
    # boto3's TypeDeserializer returns boto3.dynamodb.types.Binary for B and BS attributes. The
    # core must not import boto3, so it is recognised by shape; it is cached as bytes, which
    # compares equal to the Binary it came from.
    return type(value).__name__ == "Binary" and isinstance(getattr(value, "value", None), bytes)


# --- JSON ------------------------------------------------------------------------------------

# Tags are one-key objects whose key starts with "$". A user dict of one "$..." key is escaped as
# {"$o": [[key, value]]}: a list of pairs, so the decoder (which sees inner objects first) never
# mistakes the user's dict for a tag.
_TAG_DECIMAL = "$d"
_TAG_BYTES = "$b"
_TAG_FLOAT = "$f"  # inf, -inf and nan, which strict JSON cannot hold
_TAG_SET = "$s"
_TAG_FROZENSET = "$fs"
_TAG_TUPLE = "$t"
_TAG_OBJECT = "$o"
_JSON_NATIVE = (str, int, bool, type(None))


def _json_form(value: Any, codec: str) -> Any:
    """``value`` in the JSON codec's tagged form; :class:`CodecError` naming what ``codec``
    cannot store and where, or that it is nested too deeply (or contains itself)."""
    try:
        return _to_json(value)
    except _Unsupported as exc:
        raise exc.error(codec) from None
    except RecursionError:
        raise CodecError(
            f"value: nested too deeply (or contains itself) for codec {codec!r}"
        ) from None


def _to_json(value: Any) -> Any:
    """``value`` as JSON-native structures with tags; :class:`_Unsupported` otherwise."""
    kind = type(value)
    if kind in _JSON_NATIVE:
        return value
    if kind is float:
        return value if math.isfinite(value) else {_TAG_FLOAT: repr(value)}
    if kind is dict:
        out = {}
        for position, (key, item) in enumerate(value.items()):
            if type(key) is not str:
                # Its position and type, never the key itself: a bytes or int key is the
                # value's content (b"s3cr3t" was shown), and errors are logged.
                raise _Unsupported(
                    key,
                    f"dict key #{position} of type {_type_name(type(key))} is not supported "
                    f"(keys must be str)",
                )
            try:
                out[key] = _to_json(item)
            except _Unsupported as exc:
                exc.path.append(f"[{key!r}]")
                raise
        if len(out) == 1 and next(iter(out)).startswith("$"):
            return {_TAG_OBJECT: [[key, item] for key, item in out.items()]}
        return out
    if kind is list or kind is tuple:
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_to_json(item))
            except _Unsupported as exc:
                exc.path.append(f"[{index}]")
                raise
        return items if kind is list else {_TAG_TUPLE: items}
    if kind is Decimal:
        return {_TAG_DECIMAL: str(value)}
    if kind is bytes or _is_boto3_binary(value):
        raw = value if kind is bytes else value.value
        return {_TAG_BYTES: base64.b64encode(raw).decode("ascii")}
    if kind is set or kind is frozenset:
        elements = []
        for item in value:
            try:
                elements.append(_to_json(item))
            except _Unsupported as exc:
                # A set has no place to name, and its element is content: "an element".
                exc.path.append(" (an element)")
                raise
        return {_TAG_SET if kind is set else _TAG_FROZENSET: elements}
    raise _Unsupported(value)


def _unencodable_text(value: Any, codec: str) -> CodecError:
    """The error for a value holding a string UTF-8 cannot encode (a lone surrogate, as
    ``json.loads('"\\ud83d"')`` makes), naming where the first such string sits."""
    path = _surrogate_path(value) or ""
    return CodecError(
        f"value{path}: a string holds a lone surrogate, which UTF-8 cannot encode, so codec "
        f"{codec!r} cannot store it. Clean the text first, e.g. "
        "text.encode('utf-8', 'replace').decode('utf-8')"
    )


def _surrogate_path(value: Any) -> str | None:
    """Where in ``value`` the first string with a lone surrogate sits (``"['t']"``), if any."""
    # Iterative, so that a deeply nested value cannot make the error path fail in turn.
    pending: list[tuple[Any, str]] = [(value, "")]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(item, dict):
            for key, inner in item.items():
                pending.append((key, f"{path} (a key)"))  # the text at fault: not shown
                pending.append((inner, f"{path}[{key!r}]"))
        elif isinstance(item, list | tuple):
            pending.extend((inner, f"{path}[{index}]") for index, inner in enumerate(item))
        elif isinstance(item, set | frozenset):
            pending.extend((inner, f"{path} (an element)") for inner in item)
    return None


def _float_from_tag(text: str) -> float:
    if text not in ("inf", "-inf", "nan"):
        raise ValueError("bad float tag")  # the stored text is a value's: not shown
    return float(text)


_JSON_DECODERS: dict[str, Callable[[Any], Any]] = {
    _TAG_DECIMAL: Decimal,
    _TAG_BYTES: lambda text: base64.b64decode(text, validate=True),
    _TAG_FLOAT: _float_from_tag,
    _TAG_SET: set,
    _TAG_FROZENSET: frozenset,
    _TAG_TUPLE: tuple,
    _TAG_OBJECT: dict,
}


def _json_object_hook(obj: dict[str, Any]) -> Any:
    # Called for every JSON object on the hot read path: the common case (not one key) is first.
    if len(obj) != 1:
        return obj
    for tag, payload in obj.items():
        decoder = _JSON_DECODERS.get(tag)
        if decoder is not None:
            return decoder(payload)
    return obj


# The fast decode path is taken only for bytes it reads exactly as the exact path does:
# - no "$" and no backslash: every tag (and an escaped user dict) is an object key starting with
#   "$", written as such or with a \u escape (which also sends lone surrogates, which orjson
#   refuses, the exact way). Single bytes, so that each search is one memchr (a two-byte needle
#   such as '"$' costs more than orjson's whole read: '"' is everywhere in JSON);
# - no integer of 20 or more digits (19 with a minus): orjson reads ints beyond 64 bits as
#   floats. Digits and "-" are mapped to "#" so that one substring search finds such a run.
_DOLLAR = ord("$")
_BACKSLASH = ord("\\")
_FAST_NUMBERS = bytes.maketrans(b"-0123456789", b"#" * 11)
_LONG_NUMBER = b"#" * 20


def plain_json(datas: Sequence[bytes]) -> bool:
    """True when no value of ``datas`` holds a ``$``, a backslash or a digit run orjson would
    read as a float (the guards above): orjson then reads each exactly as the exact path does.
    The reference of ``tiered_cache/_plainjson.c``, which the compiled core uses instead."""
    # "\n" is none of the guarded bytes, so no digit run spans two values. find, not "in":
    # bytes.__contains__ first tries its operand as an int, and a bytes operand costs it a
    # TypeError made and dropped (about 1,800 instructions, more than the search).
    joined = b"\n".join(datas)
    return (
        joined.find(_DOLLAR) < 0
        and joined.find(_BACKSLASH) < 0
        and joined.translate(_FAST_NUMBERS).find(_LONG_NUMBER) < 0
    )


def _plain_check() -> Callable[[Sequence[bytes]], bool]:
    """:func:`plain_json`, or its C twin in the compiled core (the same answers)."""
    if compiled_core():
        from ._plainjson import plain

        return plain
    return plain_json


#: The guard :meth:`JsonCodec.decode` and :meth:`JsonCodec.decode_many` run (on one value, on
#: a batch).
PLAIN_JSON: Final = _plain_check()


class JsonCodec(CodecBase):
    """Type-preserving JSON (UTF-8); the default codec.

    Args:
        fast: use orjson when it is installed (the bytes are the same either way; only speed
            differs). ``False`` keeps to the standard library.
    """

    name = "json"

    def __init__(self, *, fast: bool = True) -> None:
        self._dumps = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
        ).encode
        self._loads = json.JSONDecoder(object_hook=_json_object_hook).decode
        # Without a tag in the bytes there is nothing for the hook to do: the C scanner alone.
        self._plain_loads = json.JSONDecoder().decode
        use_fast = fast and _orjson is not None
        self._fast_dumps: Callable[[Any], bytes] | None = _orjson.dumps if use_fast else None
        self._fast_loads: Callable[[bytes], Any] | None = _orjson.loads if use_fast else None

    @property
    def accelerated(self) -> bool:
        """True when orjson reads and writes (the bytes are the same either way)."""
        return self._fast_loads is not None

    def encode(self, value: Any) -> bytes:
        """JSON bytes of ``value``; :class:`CodecError` naming the path of what is unsupported."""
        # The walk validates and tags everything before a byte is written; only then JSON.
        form = _json_form(value, self.name)
        fast_dumps = self._fast_dumps
        if fast_dumps is not None:
            try:
                return fast_dumps(form)
            except (TypeError, ValueError):
                pass  # an int beyond 64 bits, a lone surrogate, deep nesting: the exact path
        try:
            text = self._dumps(form)
        except ValueError as exc:  # an int past sys.get_int_max_str_digits() (4,300 digits)
            raise CodecError(f"value: codec {self.name!r} cannot encode it: {exc}") from None
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise _unencodable_text(value, self.name) from None

    def decode(self, data: bytes) -> Any:
        """The value ``data`` encodes; :class:`CodecError` if it is not this codec's output."""
        # The batch's guard (PLAIN_JSON), on one value: the one rule of what orjson may read.
        plain = PLAIN_JSON((data,))
        fast_loads = self._fast_loads
        if plain and fast_loads is not None:
            try:
                return fast_loads(data)
            except ValueError:
                pass  # the exact path decides, and words the error
        try:
            text = data.decode("utf-8")
            # Plain bytes hold no tag: no hook to call. Other bytes may (a "$", an escape);
            # the hook leaves an object that is no tag as it is.
            return self._plain_loads(text) if plain else self._loads(text)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise CodecError(f"codec {self.name!r} cannot decode the data: {exc}") from exc
        except RecursionError:
            # Bytes another program wrote (our encoder refuses such depth): a miss, not an
            # error of the tier, whose breaker would open for every key.
            raise CodecError(
                f"codec {self.name!r} cannot decode the data: nested too deeply"
            ) from None

    def decode_many(self, datas: Sequence[bytes]) -> Decoded:
        """:meth:`decode` of each of ``datas``, with the fast path's guards run once over the
        whole batch: when no value holds a tag, an escape or a long digit run, orjson reads
        each value straight away (the values of an ``MGET`` of plain items: one search per
        batch instead of three per value). Otherwise each value is decoded on its own; a value
        orjson refuses goes the exact way by itself. Either way a bad value is only its own
        error (:func:`decode_each`)."""
        fast_loads = self._fast_loads
        if fast_loads is None or not datas:
            return decode_each(self, datas)
        if not PLAIN_JSON(datas):
            return decode_each(self, datas)
        try:  # the common case, one comprehension: every value is orjson's to read
            return [fast_loads(data) for data in datas], {}
        except ValueError:
            pass  # some value orjson refuses: each on its own below (orjson is pure: no harm)
        values: list[Any] = []
        errors: dict[int, CodecError] = {}
        for index, data in enumerate(datas):
            try:
                values.append(fast_loads(data))
            except ValueError:
                try:  # what decode does after orjson refused: the exact path decides
                    values.append(self.decode(data))
                except CodecError as exc:
                    values.append(None)
                    errors[index] = exc
        return values, errors


# --- msgpack ---------------------------------------------------------------------------------

_EXT_DECIMAL = 1
_EXT_SET = 2
_EXT_FROZENSET = 3
_EXT_TUPLE = 4
_EXT_BIGINT = 5  # ints beyond 64 bits, which msgpack cannot hold natively


class MsgpackCodec(CodecBase):
    """Type-preserving msgpack, with extension types for ``Decimal``, sets and tuples.

    Needs the ``msgpack`` package (``pip install msgpack``, or the ``msgpack`` extra of an
    adapter); it is imported when the codec is created.
    """

    name = "msgpack"

    def __init__(self) -> None:
        try:
            # An optional dependency: imported on demand, and typed Any (it ships no stubs).
            msgpack: Any = importlib.import_module("msgpack")
        except ImportError as exc:
            raise ConfigError(
                "codec 'msgpack' needs the msgpack package: pip install msgpack "
                "(or install the adapter with its extra, e.g. tiered-cache-redis[msgpack])"
            ) from exc
        self._msgpack = msgpack
        # strict_types: a tuple goes to _default (and stays a tuple) instead of becoming a list.
        self._packer_options: dict[str, Any] = {
            "use_bin_type": True,
            "strict_types": True,
            "default": self._default,
        }
        self._unpacker_options: dict[str, Any] = {
            "raw": False,
            "use_list": True,
            "strict_map_key": False,
            "ext_hook": self._ext_hook,
        }

    def _pack(self, value: Any) -> bytes:
        data: bytes = self._msgpack.packb(value, **self._packer_options)
        return data

    def _default(self, value: Any) -> Any:
        ext = self._msgpack.ExtType
        kind = type(value)
        if kind is Decimal:
            return ext(_EXT_DECIMAL, str(value).encode("ascii"))
        if kind is tuple:
            return ext(_EXT_TUPLE, self._pack(list(value)))
        if kind is set:
            return ext(_EXT_SET, self._pack(list(value)))
        if kind is frozenset:
            return ext(_EXT_FROZENSET, self._pack(list(value)))
        if kind is int:  # msgpack calls `default` for an int beyond 64 bits
            return ext(_EXT_BIGINT, str(value).encode("ascii"))
        if _is_boto3_binary(value):
            return value.value
        raise TypeError(f"unsupported type {kind.__name__}")

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_DECIMAL:
            return Decimal(data.decode("ascii"))
        if code == _EXT_BIGINT:
            return int(data.decode("ascii"))
        items = self._msgpack.unpackb(data, **self._unpacker_options)
        if code == _EXT_TUPLE:
            return tuple(items)
        if code == _EXT_SET:
            return set(items)
        if code == _EXT_FROZENSET:
            return frozenset(items)
        raise ValueError(f"unknown msgpack extension type {code}")

    def encode(self, value: Any) -> bytes:
        """msgpack bytes of ``value``; :class:`CodecError` naming what is unsupported."""
        try:
            return self._pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            failure: Exception = exc
        # Only on failure: walk the value to say exactly what is unsupported, and where.
        if isinstance(failure, UnicodeEncodeError):
            raise _unencodable_text(value, self.name) from None
        _json_form(value, self.name)
        raise CodecError(f"value: codec {self.name!r} cannot encode it: {failure}") from None

    def decode(self, data: bytes) -> Any:
        """The value ``data`` encodes; :class:`CodecError` if it is not this codec's output."""
        try:
            return self._msgpack.unpackb(data, **self._unpacker_options)
        except Exception as exc:  # msgpack raises a variety of its own errors
            raise CodecError(f"codec {self.name!r} cannot decode the data: {exc}") from exc


# --- pickle ----------------------------------------------------------------------------------


class PickleCodec(CodecBase):
    """Any picklable value. Unpickling runs code: use it only for tiers you trust."""

    name = "pickle"

    def encode(self, value: Any) -> bytes:
        """Pickle bytes of ``value``; :class:`CodecError` if it cannot be pickled."""
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except RecursionError:
            raise CodecError("value: nested too deeply for codec 'pickle'") from None
        except Exception as exc:
            # Whatever pickling raises is the value's doing: its own __reduce__ or
            # __getstate__ may raise anything, part-way through. Let through, a RuntimeError
            # was the Redis tier failing (its breaker counted it), and set() raised it bare.
            raise CodecError(
                f"value: cannot be pickled by codec 'pickle': {type(exc).__name__}: {exc}"
            ) from exc

    def decode(self, data: bytes) -> Any:
        """The value ``data`` encodes; :class:`CodecError` if it is not a pickle."""
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise CodecError(f"codec 'pickle' cannot decode the data: {exc}") from exc


_CODECS: dict[str, Callable[[], Codec]] = {
    "json": JsonCodec,
    "msgpack": MsgpackCodec,
    "pickle": PickleCodec,
}


def codec_names() -> list[str]:
    """The names :func:`get_codec` accepts."""
    return list(_CODECS)


def get_codec(name: str) -> Codec:
    """The codec called ``name``; :class:`ConfigError` listing the names for an unknown one
    (which is not shown: :func:`~tiered_cache.redaction.unknown_value`)."""
    factory = _CODECS.get(name)
    if factory is None:
        raise ConfigError(unknown_value("codec", _CODECS, "available codecs"))
    return factory()
