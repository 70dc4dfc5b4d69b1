"""Codecs round-trip every DynamoDB-shaped value exactly, and name what they cannot encode."""

from __future__ import annotations

import datetime
import json
import sys
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_cache import codecs
from tiered_cache.codecs import (
    PLAIN_JSON,
    Codec,
    JsonCodec,
    MsgpackCodec,
    PickleCodec,
    batch_decoder,
    codec_names,
    get_codec,
    plain_json,
)
from tiered_cache.errors import CodecError, ConfigError
from tiered_cache.testing.values import assert_same_value as assert_same

CODECS = ["json", "msgpack", "pickle"]


scalars = (
    st.none()
    | st.booleans()
    | st.text()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**80)
    | st.decimals()  # including NaN, Infinity and exponents such as 1E+2
    | st.floats()
    | st.binary()
)
# DynamoDB sets are homogeneous: strings, numbers or binaries.
homogeneous_sets = (
    st.sets(st.text(), max_size=4)
    | st.sets(st.decimals(allow_nan=False), max_size=4)
    | st.sets(st.integers(), max_size=4)
    | st.frozensets(st.binary(), max_size=4)
    | st.frozensets(st.text(), max_size=4)
)
# Keys that collide with the JSON codec's tags are generated on purpose.
keys = st.text(max_size=6) | st.sampled_from(["$d", "$b", "$s", "$fs", "$t", "$o", "$f", "$x"])
values = st.recursive(
    scalars | homogeneous_sets,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=300, deadline=None)
@given(value=values)
def test_round_trip_is_exact(name: str, value: Any) -> None:
    codec = get_codec(name)
    data = codec.encode(value)
    assert isinstance(data, bytes)
    assert_same(codec.decode(data), value)


@pytest.mark.parametrize("name", CODECS)
@given(value=st.floats())
def test_floats_are_repr_exact(name: str, value: float) -> None:
    codec = get_codec(name)
    assert_same(codec.decode(codec.encode(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        {"$d": "1.5"},
        {"$o": [["$d", "x"]]},
        {"$b": {"$s": ["a"]}},
        [{"$t": [1, 2]}],
        {"$unknown": 1},
        {"a": 1, "$d": "2"},
    ],
    ids=repr,
)
def test_json_escapes_user_dicts_that_look_like_tags(value: Any) -> None:
    codec = JsonCodec()
    assert_same(codec.decode(codec.encode(value)), value)


def test_json_output_is_strict_readable_json() -> None:
    data = JsonCodec().encode(
        {"id": "42", "likes": Decimal("7"), "nan": float("nan"), "tags": {"a"}, "t": "é"}
    )
    assert data == (
        b'{"id":"42","likes":{"$d":"7"},"nan":{"$f":"nan"},"tags":{"$s":["a"]},"t":"\xc3\xa9"}'
    )
    assert b"NaN" not in data


def test_dynamodb_item_as_boto3_deserializes_it_round_trips() -> None:
    types = pytest.importorskip("boto3.dynamodb.types")
    wire = {
        "tweet_id": {"S": "42"},
        "likes": {"N": "1234567890123456789012345678901234567"},
        "ratio": {"N": "0.25"},
        "blob": {"B": b"\x00\xff"},
        "tags": {"SS": ["a", "b"]},
        "scores": {"NS": ["1", "2.5"]},
        "blobs": {"BS": [b"x", b"y"]},
        "deleted": {"BOOL": False},
        "parent": {"NULL": True},
        "meta": {"M": {"lang": {"S": "en"}, "path": {"L": [{"N": "1"}, {"S": "x"}]}}},
    }
    deserializer = types.TypeDeserializer()
    item = {key: deserializer.deserialize(attr) for key, attr in wire.items()}
    for name in ("json", "msgpack"):
        codec = get_codec(name)
        decoded = codec.decode(codec.encode(item))
        # boto3's Binary comes back as bytes, which compares equal to it.
        assert decoded == item
        assert decoded["blob"] == b"\x00\xff"
        assert type(decoded["likes"]) is Decimal


@pytest.mark.parametrize("name", ["json", "msgpack"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"author": datetime.datetime(2024, 1, 1)},
            "value['author']: object of type datetime is not supported by codec '{codec}'",
        ),
        (
            {"a": [1, {"b": object()}]},
            "value['a'][1]['b']: object of type object is not supported by codec '{codec}'",
        ),
        ((1, 2, 3j), "value[2]: object of type complex is not supported"),
        ({"ids": {datetime.date(2024, 1, 1)}}, "value['ids'] (an element): object of type date"),
        (datetime.timedelta(1), "value: object of type timedelta"),
    ],
)
def test_unsupported_values_name_type_and_place(name: str, value: Any, message: str) -> None:
    with pytest.raises(CodecError) as info:
        get_codec(name).encode(value)
    assert message.format(codec=name) in str(info.value)
    assert "choose codec 'pickle'" in str(info.value)


def test_json_rejects_non_string_keys_with_their_place() -> None:
    with pytest.raises(CodecError, match=r"value\['m'\]: dict key #0 of type int"):
        JsonCodec().encode({"m": {1: "one"}})


#: What a value refused holds must not reach the error (errors are logged): the message said
#: "dict key b's3cr3t' of type bytes" and "(element 's3cr3t')". The type and place only.
_SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # msgpack stores these keys; json refuses them.
        ("json", {"a": 1, _SECRET.encode(): 1}, "value: dict key #1 of type bytes is not"),
        ("json", {"m": {73317331: _SECRET}}, "value['m']: dict key #0 of type int is not"),
        ("json", {frozenset({_SECRET}): 1}, "value: dict key #0 of type frozenset is not"),
    ]
    + [
        (name, value, message)
        for name in ("json", "msgpack")
        for value, message in [
            ({"ids": {(_SECRET, object())}}, "value['ids'] (an element)[1]: object of type"),
            ([{_SECRET + "\ud83d"}], "value[0] (an element): a string holds a lone surrogate"),
            ({_SECRET + "\ud83d": 1}, "value (a key): a string holds a lone surrogate"),
        ]
    ],
)
def test_a_refused_value_is_named_by_type_and_place_never_shown(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(CodecError) as info:
        get_codec(name).encode(value)
    assert message in str(info.value)
    assert _SECRET not in str(info.value) and "73317331" not in str(info.value)


def test_a_bad_float_tag_read_is_not_shown() -> None:
    with pytest.raises(CodecError) as info:
        JsonCodec().decode(b'{"$f": "s3cr3t"}')
    assert _SECRET not in str(info.value)


#: numpy's bool is named "bool" (numpy 2; np.bool_ is it): the message said "object of type
#: bool is not supported by codec 'json'; codec 'json' supports str, int, float, Decimal, bool".
_NUMPY_LIKE_BOOL = type("bool", (), {"__module__": "numpy"})
_LIBRARY_STR = type("str", (str,), {"__module__": "somelib"})


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_a_type_named_as_a_builtin_it_is_not_is_named_with_its_module(name: str) -> None:
    with pytest.raises(CodecError) as info:
        get_codec(name).encode({"flag": _NUMPY_LIKE_BOOL()})
    assert "value['flag']: object of type numpy.bool is not supported" in str(info.value)
    with pytest.raises(CodecError) as info:
        get_codec(name).encode({_LIBRARY_STR("k"): 1})
    assert "dict key #0 of type somelib.str is not supported" in str(info.value)


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_subclasses_are_not_silently_flattened(name: str) -> None:
    class Tag(str):
        pass

    with pytest.raises(CodecError, match="object of type Tag"):
        get_codec(name).encode({"tag": Tag("x")})


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_a_value_that_contains_itself_is_a_codec_error(name: str) -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(CodecError):
        get_codec(name).encode(looped)


def test_pickle_encodes_what_the_others_refuse_and_names_what_it_cannot() -> None:
    codec = PickleCodec()
    when = {"at": datetime.datetime(2024, 1, 1)}
    assert codec.decode(codec.encode(when)) == when
    with pytest.raises(CodecError, match="cannot be pickled"):
        codec.encode({"f": lambda: 1})


class _StateFails:
    def __getstate__(self) -> Any:
        raise ValueError("no state")


class _ItemsFail(list[int]):
    def __iter__(self) -> Any:
        raise RuntimeError("no items")


@pytest.mark.parametrize("value", [[1, _StateFails()], {"a": _ItemsFail([1, 2])}])
def test_pickling_that_raises_midway_is_a_codec_error_naming_what_raised(value: Any) -> None:
    """The value's own code may raise anything part-way through pickling; that is the
    value's error, as every codec's refusal is (not the tier's, whose breaker counts those)."""
    with pytest.raises(CodecError, match=r"cannot be pickled .*(ValueError|RuntimeError)"):
        PickleCodec().encode(value)


@pytest.mark.parametrize("name", CODECS)
def test_garbage_is_a_codec_error_on_decode(name: str) -> None:
    with pytest.raises(CodecError, match=f"codec '{name}' cannot decode"):
        get_codec(name).decode(b"\xc1\x00garbage{")


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    "data", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000]
)
def test_json_data_nested_too_deeply_is_a_codec_error_on_decode(fast: bool, data: bytes) -> None:
    # Bytes another program wrote into Redis: a RecursionError escaping decode made the Redis
    # tier count a failure (its breaker opening after five reads of the one key) and the read
    # raise instead of being a logged miss.
    codec = JsonCodec(fast=fast)
    with pytest.raises(CodecError, match="cannot decode the data: nested too deeply"):
        codec.decode(data)
    values, errors = codec.decode_many([b"1", data])
    assert values[0] == 1
    assert list(errors) == [1]


def test_get_codec_by_name() -> None:
    assert codec_names() == ["json", "msgpack", "pickle"]
    for name in codec_names():
        codec = get_codec(name)
        assert codec.name == name
        assert isinstance(codec, Codec)
    assert isinstance(get_codec("json"), JsonCodec)
    assert isinstance(get_codec("msgpack"), MsgpackCodec)


def test_unknown_codec_lists_the_names() -> None:
    # The name given is not shown: it may be a secret typed into the wrong field.
    with pytest.raises(ConfigError, match=r"^unknown codec \(the value given is not shown\); "):
        get_codec("yaml")
    with pytest.raises(ConfigError, match=r"; available codecs: 'json', 'msgpack', 'pickle'$"):
        get_codec("yaml")


def test_msgpack_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # makes `import msgpack` fail
    with pytest.raises(ConfigError, match="pip install msgpack"):
        get_codec("msgpack")


# -- the JSON codec's fast path (orjson) reads and writes exactly what the standard library does

json_texts = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**66)  # around orjson's 64-bit limit
    | st.integers(min_value=-(2**66), max_value=-(2**62))
    | st.floats()
    | st.text(),  # lone surrogates and control characters included
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=values)
def test_json_fast_and_standard_paths_read_each_others_bytes(value: Any) -> None:
    fast, standard = JsonCodec(), JsonCodec(fast=False)
    for data in (fast.encode(value), standard.encode(value)):
        assert_same(fast.decode(data), value)
        assert_same(standard.decode(data), value)


@settings(max_examples=300, deadline=None)
@given(value=json_texts, ascii_only=st.booleans())
def test_json_fast_decode_of_any_json_matches_the_standard_one(
    value: Any, ascii_only: bool
) -> None:
    # Any JSON, not only the codec's own: NaN literals, \u escapes, ints beyond 64 bits.
    data = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    fast, standard = JsonCodec(), JsonCodec(fast=False)
    try:
        want = standard.decode(data)
    except CodecError:
        with pytest.raises(CodecError):
            fast.decode(data)
        return
    assert_same(fast.decode(data), want)


@pytest.mark.parametrize(
    "data",
    [b"[18446744073709551616]", b'{"n":-9223372036854775809}', b"123456789012345678901234"],
)
def test_json_ints_beyond_64_bits_stay_ints(data: bytes) -> None:
    # orjson alone reads these as floats.
    assert_same(JsonCodec().decode(data), json.loads(data))


def test_json_fast_path_writes_the_standard_bytes() -> None:
    assert JsonCodec().accelerated and not JsonCodec(fast=False).accelerated  # orjson: dev dep
    value = {"id": "42", "likes": Decimal("7"), "tags": ("a", "é"), "n": 2**40, "f": 0.1}
    assert JsonCodec().encode(value) == JsonCodec(fast=False).encode(value)


def test_json_tag_written_with_an_escape_is_still_a_tag() -> None:
    assert_same(JsonCodec().decode(b'{"\\u0024d":"1.50"}'), Decimal("1.50"))


# -- batch decodes (an MGET's values): the same values as one decode each, errors their own

#: What a batch may hold besides the codecs' own bytes: values that are not theirs to read.
foreign_data = st.sampled_from(
    [b"\xc1\x00garbage{", b"{not json", b"", b"[1,", b'"\\ud83d"', b"NaN", b"1e400"]
)


def decode_one_by_one(codec: Codec, datas: list[bytes]) -> tuple[list[Any], dict[int, str]]:
    values: list[Any] = []
    errors: dict[int, str] = {}
    for index, data in enumerate(datas):
        try:
            values.append(codec.decode(data))
        except CodecError as exc:
            values.append(None)
            errors[index] = str(exc)
    return values, errors


@pytest.mark.parametrize("codec", [JsonCodec(), JsonCodec(fast=False), MsgpackCodec()])
@settings(max_examples=200, deadline=None)
@given(batch=st.lists(values.map(lambda value: ("value", value)) | foreign_data, max_size=8))
def test_decode_many_matches_one_decode_per_value(codec: Codec, batch: list[Any]) -> None:
    datas = [item if isinstance(item, bytes) else codec.encode(item[1]) for item in batch]
    decoded, errors = batch_decoder(codec)(datas)
    want, want_errors = decode_one_by_one(codec, datas)
    assert {index: str(exc) for index, exc in errors.items()} == want_errors
    assert len(decoded) == len(want)
    for got, expected in zip(decoded, want, strict=True):
        assert_same(got, expected)


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(json_texts, max_size=6), ascii_only=st.booleans())
def test_json_decode_many_of_any_json_matches_one_decode_per_value(
    batch: list[Any], ascii_only: bool
) -> None:
    # Any JSON in a batch: a tag, an escape or a long int in one value sends the whole batch
    # the exact way; lone surrogates and NaN literals fail alone or go the exact way alone.
    datas = [json.dumps(v, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") for v in batch]
    codec = JsonCodec()
    decoded, errors = codec.decode_many(datas)
    want, want_errors = decode_one_by_one(JsonCodec(fast=False), datas)
    assert {index: str(exc) for index, exc in errors.items()} == want_errors
    for got, expected in zip(decoded, want, strict=True):
        assert_same(got, expected)


def test_json_decode_many_keeps_long_ints_and_tags_of_one_value_among_plain_ones() -> None:
    plain = [JsonCodec().encode({"id": str(i), "likes": i}) for i in range(5)]
    datas = [*plain, b"[18446744073709551616]", *plain]
    decoded, errors = JsonCodec().decode_many(datas)
    assert errors == {}
    assert_same(decoded[5], [2**64])  # orjson alone reads it as a float
    decoded, errors = JsonCodec().decode_many([*plain, b'{"$d":"1.50"}', b"{broken"])
    assert_same(decoded[5], Decimal("1.50"))
    assert list(errors) == [6] and decoded[6] is None


class ForeignCodec:
    """A codec of a third party: encode and decode only (no CodecBase)."""

    name = "foreign"

    def encode(self, value: Any) -> bytes:
        return repr(value).encode()

    def decode(self, data: bytes) -> Any:
        if not data:
            raise CodecError("empty")
        return data.decode()


def test_a_codec_without_decode_many_decodes_a_batch_one_value_at_a_time() -> None:
    decoded, errors = batch_decoder(ForeignCodec())([b"a", b"", b"c"])
    assert decoded == ["a", None, "c"]
    assert list(errors) == [1]


# -- the JSON codec's guard: its C twin (tiered_cache/_plainjson.c) against plain_json

needs_c_guard = pytest.mark.skipif(
    PLAIN_JSON is plain_json,
    reason="the C guard is not in use (not built, stale, or TIERED_CORE_PURE=1): the codec "
    "guards with plain_json, which the other tests cover",
)

#: Bytes that decide the guard, often, with runs of digits and "-" about as long as the limit.
_GUARD_BYTES = st.lists(
    st.one_of(
        st.sampled_from([b"$", b"\\", b"-", b"0", b"9", b"\n", b"#", b"a", b'"', b"\xff"]),
        st.integers(min_value=15, max_value=25).map(lambda n: b"1" * n),
        st.binary(max_size=4),
    ),
    max_size=40,
).map(b"".join)


@needs_c_guard
@settings(max_examples=500, deadline=None)
@given(datas=st.lists(_GUARD_BYTES, max_size=6))
def test_the_c_batch_guard_answers_as_plain_json(datas: list[bytes]) -> None:
    assert PLAIN_JSON(datas) is plain_json(datas)
    buffers = [bytearray(data) for data in datas]  # any buffer, as bytes.join takes
    assert PLAIN_JSON(buffers) is plain_json(buffers)


@needs_c_guard
def test_the_c_batch_guard_counts_a_run_within_one_value() -> None:
    nineteen, twenty = b"-" + b"1" * 18, b"1" * 20
    assert PLAIN_JSON([b"[" + nineteen + b"]", nineteen])  # runs do not span two values
    assert not PLAIN_JSON([b"x", b"[" + twenty + b"]"])
    assert not PLAIN_JSON([b"{}", b'{"$d":"1"}'])
    assert not PLAIN_JSON([b'"\\n"'])
    assert not PLAIN_JSON([b'"#' + nineteen + b'"'])  # as plain_json: "#" counts in a run
    assert PLAIN_JSON([]) and plain_json([])
    with pytest.raises(TypeError):
        PLAIN_JSON(["text"])  # type: ignore[list-item]


def test_one_value_and_batch_decodes_read_through_the_same_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One owner of what orjson may read: PLAIN_JSON. A guard that lets everything through
    # sends an int beyond 64 bits to orjson, which reads it as a float, in both decodes.
    data = b"[18446744073709551616]"
    assert_same(JsonCodec().decode(data), [2**64])
    monkeypatch.setattr(codecs, "PLAIN_JSON", lambda datas: True)
    assert JsonCodec().decode_many([data])[0] == [[float(2**64)]]
    assert type(JsonCodec().decode(data)[0]) is float
