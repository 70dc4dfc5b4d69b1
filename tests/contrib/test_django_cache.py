"""The Django backend against a real Redis: every method of Django's cache API, as Django's
own ``BaseCacheTests`` (django/tests/cache/tests.py) checks it.

Ported cases keep Django's names (``test_simple`` is ``BaseCacheTests.test_simple``); what they
use from Django's suite is adapted only where this backend differs on purpose: values a codec
cannot hold (functions, classes, model instances; see the backend's notes), culling
(``MAX_ENTRIES``: the tiers bound themselves), and time, which is the chain's fake clock.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from tiered_cache.errors import CodecError
from tiered_cache.testing import FakeClock


@pytest.fixture
def caches(django_caches: Any) -> Iterator[Any]:
    django_caches["default"].clear()
    yield django_caches
    django_caches["default"].clear()


@pytest.fixture
def cache(caches: Any) -> Any:
    return caches["default"]


def test_simple(cache: Any) -> None:
    cache.set("key", "value")
    assert cache.get("key") == "value"


def test_default_used_when_none_is_set(cache: Any) -> None:
    cache.set("key_default_none", None)
    assert cache.get("key_default_none", default="default") is None


def test_add(cache: Any) -> None:
    assert cache.add("addkey1", "value") is True
    assert cache.add("addkey1", "newvalue") is False
    assert cache.get("addkey1") == "value"


def test_prefix(caches: Any) -> None:
    caches["default"].set("somekey", "value")
    assert not caches["prefix"].has_key("somekey")
    caches["prefix"].set("somekey", "value2")
    assert caches["default"].get("somekey") == "value"
    assert caches["prefix"].get("somekey") == "value2"


def test_non_existent(cache: Any) -> None:
    assert cache.get("does_not_exist") is None
    assert cache.get("does_not_exist", "bang!") == "bang!"


def test_get_many(cache: Any) -> None:
    cache.set_many({"a": "a", "b": "b", "c": "c", "d": "d"})
    assert cache.get_many(["a", "c", "d"]) == {"a": "a", "c": "c", "d": "d"}
    assert cache.get_many(["a", "b", "e"]) == {"a": "a", "b": "b"}
    assert cache.get_many(iter(["a", "b", "e"])) == {"a": "a", "b": "b"}
    cache.set_many({"x": None, "y": 1})
    assert cache.get_many(["x", "y"]) == {"x": None, "y": 1}


def test_get_many_invalid_key(cache: Any) -> None:
    from django.core.cache import CacheKeyWarning

    with pytest.warns(CacheKeyWarning, match="key with spaces"):
        cache.get_many(["key with spaces"])


def test_delete(cache: Any) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    assert cache.get("key1") == "spam"
    assert cache.delete("key1") is True
    assert cache.get("key1") is None
    assert cache.get("key2") == "eggs"


def test_delete_nonexistent(cache: Any) -> None:
    assert cache.delete("nonexistent_key") is False


def test_has_key(cache: Any) -> None:
    cache.set("hello1", "goodbye1")
    assert cache.has_key("hello1") is True
    assert cache.has_key("goodbye1") is False
    cache.set("no_expiry", "here", None)
    assert cache.has_key("no_expiry") is True
    cache.set("null", None)
    assert cache.has_key("null") is True


def test_in(cache: Any) -> None:
    cache.set("hello2", "goodbye2")
    assert "hello2" in cache
    assert "goodbye2" not in cache
    cache.set("null", None)
    assert "null" in cache


def test_incr(cache: Any) -> None:
    cache.set("answer", 41)
    assert cache.incr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.incr("answer", 10) == 52
    assert cache.get("answer") == 52
    assert cache.incr("answer", -10) == 42
    with pytest.raises(ValueError):
        cache.incr("does_not_exist")
    with pytest.raises(ValueError):
        cache.incr("does_not_exist", -1)
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.incr("null")


def test_decr(cache: Any) -> None:
    cache.set("answer", 43)
    assert cache.decr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.decr("answer", 10) == 32
    assert cache.decr("answer", -10) == 42
    with pytest.raises(ValueError):
        cache.decr("does_not_exist")
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.decr("null")


def test_incr_keeps_the_timeout(cache: Any, django_clock: FakeClock) -> None:
    """Not in Django's suite: Django's Redis backend keeps the key's TTL through INCRBY."""
    cache.set("forever", 1, None)
    cache.set("soon", 1, 10)
    cache.incr("forever")
    cache.incr("soon")
    django_clock.advance(3600)
    assert cache.get("forever") == 2
    assert cache.get("soon") is None


def test_close(cache: Any) -> None:
    cache.set("key", "value")
    cache.close()  # Django calls it after every request: the shared chain stays open
    assert cache.get("key") == "value"


def test_data_types(cache: Any) -> None:
    stuff = {
        "string": "this is a string",
        "int": 42,
        "bool": True,
        "list": [1, 2, 3, 4],
        "tuple": (1, 2, 3, 4),
        "dict": {"A": 1, "B": 2},
        "set": {1, 2},
        "bytes": b"\x00\xff",
    }
    cache.set("data", stuff)
    assert cache.get("data") == stuff
    # The memory tier holds the object; Redis gives back the same types (no pickle).
    cache.chain.tiers[0].clear()
    again = cache.get("data")
    assert again == stuff
    assert type(again["tuple"]) is tuple


def test_values_a_codec_cannot_hold_raise_codec_error(cache: Any) -> None:
    """Django's suite caches functions and classes (pickled); the JSON codec refuses them
    with an error naming the value, and stores nothing."""
    with pytest.raises(CodecError, match="function"):
        cache.set("function", test_simple)
    assert cache.get("function") is None


def test_expiration(cache: Any, django_clock: FakeClock) -> None:
    cache.set("expire1", "very quickly", 1)
    cache.set("expire2", "very quickly", 1)
    cache.set("expire3", "very quickly", 1)
    django_clock.advance(2)
    assert cache.get("expire1") is None
    assert cache.add("expire2", "newvalue") is True
    assert cache.get("expire2") == "newvalue"
    assert cache.has_key("expire3") is False


def test_touch(cache: Any, django_clock: FakeClock) -> None:
    cache.set("expire1", "very quickly", timeout=1)
    assert cache.touch("expire1", timeout=4) is True
    django_clock.advance(2)
    assert cache.has_key("expire1") is True
    django_clock.advance(3)
    assert cache.has_key("expire1") is False
    cache.set("expire2", "very quickly", timeout=1)
    assert cache.touch("expire2", timeout=None) is True
    django_clock.advance(2)
    assert cache.has_key("expire2") is True
    assert cache.touch("nonexistent") is False


def test_unicode(cache: Any) -> None:
    stuff = {
        "ascii": "ascii_value",
        "unicode_ascii": "Iñtërnâtiônàlizætiøn1",
        "Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
        "ascii2": {"x": 1},
    }
    for key, value in stuff.items():
        cache.set(key, value)
        assert cache.get(key) == value
    for key, value in stuff.items():
        cache.delete(key)
        cache.add(key, value)
        assert cache.get(key) == value
    for key in stuff:
        cache.delete(key)
    cache.set_many(stuff)
    for key, value in stuff.items():
        assert cache.get(key) == value


def test_binary_string(cache: Any) -> None:
    value = b"value_to_be_compressed"
    compressed = zlib.compress(value)
    cache.set("binary1", compressed)
    assert zlib.decompress(cache.get("binary1")) == value
    assert cache.add("binary1-add", compressed) is True
    assert zlib.decompress(cache.get("binary1-add")) == value
    cache.set_many({"binary1-set_many": compressed})
    assert zlib.decompress(cache.get("binary1-set_many")) == value


def test_set_many(cache: Any) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    assert cache.get("key1") == "spam"
    assert cache.get("key2") == "eggs"


def test_set_many_returns_empty_list_on_success(cache: Any) -> None:
    assert cache.set_many({"key1": "spam", "key2": "eggs"}) == []
    assert cache.set_many({}) == []


def test_set_many_expiration(cache: Any, django_clock: FakeClock) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"}, 1)
    django_clock.advance(2)
    assert cache.get("key1") is None
    assert cache.get("key2") is None


def test_delete_many(cache: Any) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs", "key3": "ham"})
    cache.delete_many(["key1", "key2"])
    assert cache.get("key1") is None
    assert cache.get("key2") is None
    assert cache.get("key3") == "ham"


def test_delete_many_no_keys(cache: Any) -> None:
    assert cache.delete_many([]) is None


def test_clear(cache: Any) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    cache.clear()
    assert cache.get("key1") is None
    assert cache.get("key2") is None


def test_clear_clears_the_aliases_sharing_its_chain_not_one_with_a_namespace_of_its_own(
    caches: Any,
) -> None:
    # "prefix" and "v2" have "default"'s OPTIONS: one chain, one namespace (docs/django.md).
    for alias in ("default", "prefix", "v2", "pages"):
        caches[alias].set("key", alias)
    caches["default"].clear()
    assert [caches[alias].get("key") for alias in ("default", "prefix", "v2")] == [None] * 3
    assert caches["pages"].get("key") == "pages"
    caches["pages"].clear()


def test_long_timeout(cache: Any) -> None:
    month = 60 * 60 * 24 * 30 + 1
    cache.set("key1", "eggs", month)
    assert cache.get("key1") == "eggs"
    assert cache.add("key2", "ham", month) is True
    assert cache.get("key2") == "ham"
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, month)
    assert cache.get("key3") == "sausage"
    assert cache.get("key4") == "lobster bisque"


def test_a_timeout_past_a_hundred_years_keeps_the_value_as_none_does(
    cache: Any, django_clock: FakeClock
) -> None:
    # tiered-cache's durations stop at a hundred years; Django's take any number.
    cache.set("key1", "eggs", 10**12)
    assert cache.add("key2", "ham", 1e300) is True
    django_clock.advance(10 * 365 * 86400)
    assert (cache.get("key1"), cache.get("key2")) == ("eggs", "ham")


def test_a_timeout_past_a_floats_range_is_still_a_number_of_seconds(
    cache: Any, django_clock: FakeClock
) -> None:
    """An int too large for a float (10**400) is a number Django takes: forever, or at once
    when negative. It raised OverflowError (int too large to convert to float) from every
    method taking a timeout."""
    cache.set("key1", "eggs", 10**400)
    assert cache.add("key2", "ham", 10**400) is True
    cache.set_many({"key3": "sausage"}, 10**400)
    cache.set("key4", "spam", 5)
    assert cache.touch("key4", 10**400) is True
    django_clock.advance(10 * 365 * 86400)
    assert cache.get_many(["key1", "key2", "key3", "key4"]) == {
        "key1": "eggs",
        "key2": "ham",
        "key3": "sausage",
        "key4": "spam",
    }
    cache.set("key1", "eggs", -(10**400))
    assert cache.add("key5", "ham", -(10**400)) is True
    assert cache.touch("key2", -(10**400)) is True
    assert cache.get_many(["key1", "key2", "key5"]) == {}


def test_forever_timeout(cache: Any, django_clock: FakeClock) -> None:
    cache.set("key1", "eggs", None)
    assert cache.get("key1") == "eggs"
    assert cache.add("key2", "ham", None) is True
    assert cache.get("key2") == "ham"
    assert cache.add("key1", "new eggs", None) is False
    assert cache.get("key1") == "eggs"
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, None)
    django_clock.advance(10 * 365 * 86400)
    assert cache.get("key3") == "sausage"
    assert cache.get("key4") == "lobster bisque"
    cache.set("key5", "belgian fries", timeout=1)
    assert cache.touch("key5", timeout=None) is True
    django_clock.advance(2)
    assert cache.get("key5") == "belgian fries"


def test_zero_timeout(cache: Any) -> None:
    cache.set("key1", "eggs", 0)
    assert cache.get("key1") is None
    cache.add("key2", "ham", 0)
    assert cache.get("key2") is None
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, 0)
    assert cache.get("key3") is None
    assert cache.get("key4") is None
    cache.set("key5", "belgian fries", timeout=5)
    assert cache.touch("key5", timeout=0) is True
    assert cache.get("key5") is None


def test_float_timeout(cache: Any) -> None:
    cache.set("key1", "spam", 100.2)
    assert cache.get("key1") == "spam"


def test_default_timeout_is_the_caches_timeout(cache: Any, django_clock: FakeClock) -> None:
    """Django's TIMEOUT default (300 s) applies when no timeout is given."""
    cache.set("key", "value")
    django_clock.advance(299)
    assert cache.get("key") == "value"
    django_clock.advance(2)
    assert cache.get("key") is None


def test_cache_versioning_get_set(caches: Any) -> None:
    cache, v2 = caches["default"], caches["v2"]
    cache.set("answer1", 42)
    assert cache.get("answer1") == 42
    assert cache.get("answer1", version=1) == 42
    assert cache.get("answer1", version=2) is None
    assert v2.get("answer1") is None
    assert v2.get("answer1", version=1) == 42
    cache.set("answer2", 42, version=2)
    assert cache.get("answer2") is None
    assert cache.get("answer2", version=2) == 42
    assert v2.get("answer2") == 42
    v2.set("answer3", 42)
    assert cache.get("answer3") is None
    assert cache.get("answer3", version=2) == 42
    v2.set("answer4", 42, version=1)
    assert cache.get("answer4") == 42
    assert v2.get("answer4") is None


def test_cache_versioning_add(cache: Any) -> None:
    assert cache.add("answer1", 42, version=2) is True
    assert cache.get("answer1", version=2) == 42
    assert cache.add("answer1", 37, version=2) is False
    assert cache.get("answer1", version=2) == 42
    assert cache.add("answer1", 37, version=1) is True
    assert cache.get("answer1", version=1) == 37


def test_cache_versioning_has_key(cache: Any) -> None:
    cache.set("answer1", 42)
    assert cache.has_key("answer1")
    assert cache.has_key("answer1", version=1)
    assert not cache.has_key("answer1", version=2)


def test_cache_versioning_delete(cache: Any) -> None:
    cache.set("answer1", 37, version=1)
    cache.set("answer1", 42, version=2)
    assert cache.delete("answer1") is True
    assert cache.get("answer1", version=1) is None
    assert cache.get("answer1", version=2) == 42
    assert cache.delete("answer1", version=2) is True
    assert cache.get("answer1", version=2) is None


def test_cache_versioning_incr_decr(cache: Any) -> None:
    cache.set("answer1", 37, version=1)
    cache.set("answer1", 42, version=2)
    assert cache.incr("answer1") == 38
    assert cache.get("answer1", version=1) == 38
    assert cache.get("answer1", version=2) == 42
    assert cache.decr("answer1", version=2) == 41
    assert cache.get("answer1", version=1) == 38
    assert cache.get("answer1", version=2) == 41


def test_cache_versioning_get_set_many(caches: Any) -> None:
    cache, v2 = caches["default"], caches["v2"]
    cache.set_many({"ford1": 37, "arthur1": 42})
    assert cache.get_many(["ford1", "arthur1"]) == {"ford1": 37, "arthur1": 42}
    assert cache.get_many(["ford1", "arthur1"], version=2) == {}
    assert v2.get_many(["ford1", "arthur1"], version=1) == {"ford1": 37, "arthur1": 42}
    cache.set_many({"ford2": 37, "arthur2": 42}, version=2)
    assert cache.get_many(["ford2", "arthur2"]) == {}
    assert v2.get_many(["ford2", "arthur2"]) == {"ford2": 37, "arthur2": 42}


def test_incr_version(caches: Any) -> None:
    cache, v2 = caches["default"], caches["v2"]
    cache.set("answer", 42, version=2)
    assert cache.incr_version("answer", version=2) == 3
    assert cache.get("answer", version=2) is None
    assert cache.get("answer", version=3) == 42
    v2.set("answer2", 42)
    assert v2.incr_version("answer2") == 3
    assert v2.get("answer2") is None
    assert v2.get("answer2", version=3) == 42
    with pytest.raises(ValueError):
        cache.incr_version("does_not_exist")
    cache.set("null", None)
    assert cache.incr_version("null") == 2


def test_decr_version(caches: Any) -> None:
    cache, v2 = caches["default"], caches["v2"]
    cache.set("answer", 42, version=2)
    assert cache.decr_version("answer", version=2) == 1
    assert cache.get("answer") == 42
    assert cache.get("answer", version=2) is None
    v2.set("answer2", 42)
    assert v2.decr_version("answer2") == 1
    assert v2.get("answer2", version=1) == 42
    with pytest.raises(ValueError):
        cache.decr_version("does_not_exist", version=2)


def test_custom_key_func(caches: Any) -> None:
    cache, custom = caches["default"], caches["custom_key"]
    cache.set("answer1", 42)
    assert custom.get("answer1") is None
    custom.set("answer2", 42)
    assert cache.get("answer2") is None
    assert custom.get("answer2") == 42


def test_get_or_set(cache: Any) -> None:
    assert cache.get("projector") is None
    assert cache.get_or_set("projector", 42) == 42
    assert cache.get("projector") == 42
    assert cache.get_or_set("null", None) is None
    # Previous get_or_set() stores None in the cache.
    assert cache.get("null", "default") is None


def test_get_or_set_callable(cache: Any) -> None:
    def my_callable() -> str:
        return "value"

    assert cache.get_or_set("mykey", my_callable) == "value"
    assert cache.get_or_set("mykey", my_callable()) == "value"
    assert cache.get_or_set("null", lambda: None) is None
    assert cache.get("null", "default") is None


def test_get_or_set_version(cache: Any) -> None:
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    with pytest.raises(TypeError, match="required positional argument"):
        cache.get_or_set("brian")  # type: ignore[call-arg]
    assert cache.get("brian", version=1) is None
    assert cache.get_or_set("brian", 42, version=1) == 42
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    assert cache.get("brian", version=3) is None


def test_invalid_key_characters(cache: Any) -> None:
    from django.core.cache import CacheKeyWarning

    key = "key with spaces and 清"
    with pytest.warns(CacheKeyWarning):
        cache.set(key, "value")
    with pytest.warns(CacheKeyWarning):
        assert cache.get(key) == "value"


def test_invalid_key_length(cache: Any) -> None:
    from django.core.cache import CacheKeyWarning

    key = ("a" * 250) + "清"
    with pytest.warns(CacheKeyWarning, match="longer than 250"):
        cache.set(key, "value")


def test_writes_reach_redis_and_a_second_process_chain_reads_them(
    cache: Any, django_clock: FakeClock
) -> None:
    """The values are in Redis, not only in this process: a chain of its own, without the
    memory tier, reads what the backend wrote."""
    from tiered_cache import TieredCache

    cache.set("shared", {"n": 1})
    redis_only = TieredCache([cache.chain.tiers[1]], clock=django_clock)
    made = cache.make_key("shared")
    assert redis_only.lookup_many([made])[made].value == {"n": 1}


def test_the_chain_counts_the_backends_reads(cache: Any) -> None:
    before = cache.chain.stats()["tiers"]
    cache.set("counted", 1)
    cache.get("counted")
    cache.get("absent")
    after = cache.chain.stats()["tiers"]
    assert after[0]["hits"] - before[0]["hits"] == 1
    assert after[1]["misses"] - before[1]["misses"] == 1
    assert cache.chain.stats()["loads"] == 0  # a Django cache never loads


def test_options_can_point_at_a_settings_file(
    tmp_path: Any, redis_server: Any, django_caches: Any
) -> None:
    from tiered_cache.contrib.django import TieredCacheBackend

    config = tmp_path / "tiered_cache.toml"
    config.write_text(
        "[tiered_cache]\n"
        'namespace = "django-file"\n'
        "[[tiered_cache.tiers]]\n"
        'kind = "redis"\n'
        f'url = "{redis_server.url}"\n'
        'timeout = "2s"\n'
    )
    backend = TieredCacheBackend("", {"OPTIONS": {"CONFIG": str(config)}})
    backend.set("from-file", [1, 2])
    assert backend.get("from-file") == [1, 2]
    assert backend.chain.namespace == "django-file"
    assert [tier.name for tier in backend.chain.tiers] == ["redis"]
    backend.clear()


def test_a_chain_with_a_source_is_refused() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from tiered_cache.contrib.django import TieredCacheBackend

    options = {"SETTINGS": {"source": {"kind": "dynamodb", "table": "tweets", "key": "id"}}}
    backend = TieredCacheBackend("", {"OPTIONS": options})
    with pytest.raises(ImproperlyConfigured, match="no source"):
        backend.get("k")


@pytest.mark.parametrize(
    ("location", "options", "named"),
    [
        ("", {"CONIFG": "tiered_cache.toml"}, "'CONIFG'"),
        ("", {"config": "tiered_cache.toml"}, "'config'"),
        ("", {"SETTINGS": {}, "TIMEOUT": 5}, "'TIMEOUT'"),
        ("tiered_cache.toml", {}, "LOCATION"),
        ("redis://:hunter2@localhost:6379/0", {"CONFIG": "tiered_cache.toml"}, "LOCATION"),
        # Django's own Redis backend takes a list of servers: TypeError from the redaction.
        (["redis://:hunter2@a:6379/0", "redis://b:6379/0"], {}, "LOCATION"),
        # Taken, then failed at first use: ValueError ("dictionary update sequence ...") or
        # TypeError ("'int' object is not callable"), naming no option.
        ("", {"SETTINGS": "redis://:hunter2@localhost:6379/0"}, r"OPTIONS\['SETTINGS'\]"),
        ("", {"CLOCK": 5}, r"OPTIONS\['CLOCK'\]"),
    ],
)
def test_options_the_backend_does_not_read_are_refused(
    django_caches: Any, location: Any, options: Any, named: str
) -> None:
    """A misspelt option (``CONIFG``, ``config``), or the settings file given as LOCATION
    (where Django's own backends take their server), was ignored without a word: the backend
    built a chain from the environment alone (namespace ``default``, process memory, no
    Redis), so every process cached on its own and nothing said so."""
    from django.core.exceptions import ImproperlyConfigured

    from tiered_cache.contrib.django import TieredCacheBackend

    with pytest.raises(ImproperlyConfigured, match=named) as refused:
        TieredCacheBackend(location, {"OPTIONS": options})
    assert "hunter2" not in str(refused.value)  # a URL's password is not shown


def test_djangos_culling_options_are_taken_and_ignored(django_caches: Any) -> None:
    from tiered_cache.contrib.django import TieredCacheBackend

    options = {"SETTINGS": {"tiers": [{"kind": "memory"}]}, "MAX_ENTRIES": 30}
    backend = TieredCacheBackend("", {"OPTIONS": {**options, "CULL_FREQUENCY": 0}})
    backend.set("k", 1)
    assert backend.get("k") == 1


def test_async_methods_run_the_same_operations(cache: Any) -> None:
    """Django derives aget, aset, ... from the sync methods (sync_to_async)."""
    import asyncio

    async def scenario() -> list[Any]:
        await cache.aset("async", 1)
        added = await cache.aadd("async", 2)
        value = await cache.aget("async")
        total = await cache.aincr("async", 5)
        many = await cache.aget_many(["async", "absent"])
        deleted = await cache.adelete("async")
        return [added, value, total, many, deleted, await cache.ahas_key("async")]

    assert asyncio.run(scenario()) == [False, 1, 6, {"async": 6}, True, False]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        ("5", TypeError),
        (b"5", TypeError),
        ([5], TypeError),
        (object(), TypeError),
        (float("nan"), ValueError),
    ],
)
def test_a_timeout_that_is_not_a_number_raises_type_error_naming_it(
    cache: Any, timeout: Any, error: type[Exception]
) -> None:
    """Django's own backends add the timeout to the time (locmem, file, database): a string
    is a TypeError there too. Here the error names the argument, for every method taking one."""
    for call in (
        lambda: cache.set("key", "value", timeout),
        lambda: cache.add("key", "value", timeout),
        lambda: cache.set_many({"key": "value"}, timeout),
        lambda: cache.touch("key", timeout),
    ):
        with pytest.raises(error, match="timeout"):
            call()
    assert cache.get("key") is None


def test_set_many_stores_all_or_nothing(cache: Any) -> None:
    """A value the codec cannot hold in the middle of the batch: no key of the batch is
    stored (not the ones before it), nothing is changed ("kept" keeps its old value: the
    batch is refused before anything is sent), and the error names the value."""
    cache.set("kept", "old")
    batch = {"first": 1, "kept": "new", "function": test_simple, "last": 2}
    with pytest.raises(CodecError, match="function"):
        cache.set_many(batch)
    assert cache.get_many(["first", "kept", "function", "last"]) == {"kept": "old"}
    cache.chain.tiers[0].clear()  # and not in Redis either
    assert cache.get_many(["first", "kept", "function", "last"]) == {"kept": "old"}


def test_a_backend_object_kept_across_close_chains_reads_through_a_new_chain(caches: Any) -> None:
    """``close_chains()`` between tests: Django keeps its backend objects (one per thread),
    and each held on to the closed chain (``ChainClosedError``; before that, the Redis
    tier's bare ``RuntimeError``) for the rest of the process."""
    from tiered_cache.contrib.django import close_chains

    cache = caches["default"]
    cache.set("kept", "v")
    closed = cache.chain
    close_chains()
    assert cache.get("kept") == "v"  # from Redis, through a chain built again
    cache.set("kept", "w")
    assert caches["prefix"].chain is cache.chain is not closed
    assert cache.get("kept") == "w"


def _incr_keeps_its_timeout_while_the_bus_is_down(
    settings: dict[str, Any], clock: FakeClock
) -> None:
    """A backend on ``settings`` (whose bus cannot listen) waits for its bus to be down, then
    ``incr``s a key of an hour and reads it a minute later."""
    from tiered_cache.contrib.django import TieredCacheBackend
    from tiered_cache.testing.polling import until

    backend = TieredCacheBackend("", {"OPTIONS": {"SETTINGS": settings, "CLOCK": clock}})
    with backend.chain:  # closed: its bus stops reconnecting
        until(lambda: backend.chain.stats()["bus"] == "down", "the bus down")
        backend.set("hits", 1, 3600)
        assert backend.incr("hits") == 2
        clock.advance(60)
        assert backend.get("hits") == 2  # failed: None (the count's time left was 1 s)
        backend.clear()


def test_incr_keeps_the_timeout_while_the_bus_is_down(
    django_caches: Any, redis_server: Any, namespace: str
) -> None:
    """While the bus is down (or starting) memory keeps what it is given no longer than
    ``max_stale_when_disconnected``, by giving its copy that expiry: read back by ``incr`` as
    the key's time left, the count was stored for a second in every tier and was gone."""
    from tiered_cache.testing.servers import refused_port

    clock = FakeClock()
    settings = {
        "namespace": namespace,
        "tiers": [{"kind": "memory"}, {"kind": "redis", "url": redis_server.url}],
        # A bus nobody answers: down for the whole test.
        "bus": {"kind": "redis", "url": f"redis://127.0.0.1:{refused_port()}/0", "timeout": "1s"},
    }
    _incr_keeps_its_timeout_while_the_bus_is_down(settings, clock)


def test_incr_keeps_the_timeout_with_the_bus_of_the_docs_settings(
    django_caches: Any, namespace: str
) -> None:
    """:func:`test_incr_keeps_the_timeout_while_the_bus_is_down` on docs/django.md's settings,
    which name no bus (its kind is ``auto``): the ``max_stale_when_disconnected`` the backend
    forces was dropped with the rest of the table as the kind was resolved, so memory kept
    the count for 1 s and ``incr`` stored it for that long. The bus is down for good here:
    the server's one user may use no pub/sub channel."""
    from tiered_cache.testing.servers import RedisServer

    no_channels = ["--user", "default", "on", "nopass", "~*", "+@all", "resetchannels"]
    clock = FakeClock()
    with RedisServer(extra_args=no_channels) as server:
        settings = {
            "namespace": namespace,
            "tiers": [{"kind": "memory"}, {"kind": "redis", "url": server.url}],
        }
        _incr_keeps_its_timeout_while_the_bus_is_down(settings, clock)


def test_protection_given_as_a_settings_model_is_still_forced(
    django_caches: Any, redis_server: Any, namespace: str
) -> None:
    """``SETTINGS``' tables may be given as the settings' own models: what the backend forces
    (nothing stale kept: an expired key is gone, as Django promises) holds for those too.
    Forced only over a dict, a ``ProtectionSettings`` kept its ``max_stale``: Redis held
    every key an hour past its timeout (its entry's hard expiry)."""
    import redis
    from tiered_cache_redis import RedisTier

    from tiered_cache.contrib.django import TieredCacheBackend
    from tiered_cache.settings import ProtectionSettings

    settings = {
        "namespace": namespace,
        "tiers": [{"kind": "memory"}, {"kind": "redis", "url": redis_server.url}],
        "bus": {"kind": "off"},
        "protection": ProtectionSettings(max_stale="1h"),
    }
    clock = FakeClock()
    backend = TieredCacheBackend("", {"OPTIONS": {"SETTINGS": settings, "CLOCK": clock}})
    backend.set("k", "v", 60)
    reader = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock)
    entry = reader.get(backend.make_and_validate_key("k"))
    assert entry and entry.hard_expiry == entry.soft_expiry  # failed: 3600 s apart
    reader.close()
    backend.clear()


def test_incr_keeps_the_timeout_with_a_bus_given_as_a_settings_model(
    django_caches: Any, redis_server: Any, namespace: str
) -> None:
    """:func:`test_incr_keeps_the_timeout_while_the_bus_is_down` with the bus's table given as
    its settings model (``RedisBusSettings``), which kept its own
    ``max_stale_when_disconnected``."""
    from tiered_cache_redis.plugin import RedisBusSettings

    from tiered_cache.testing.servers import refused_port

    clock = FakeClock()
    bus = RedisBusSettings(url=f"redis://127.0.0.1:{refused_port()}/0", timeout="1s")
    settings = {
        "namespace": namespace,
        "tiers": [{"kind": "memory"}, {"kind": "redis", "url": redis_server.url}],
        "bus": bus,  # a bus nobody answers: down for the whole test
    }
    _incr_keeps_its_timeout_while_the_bus_is_down(settings, clock)


def test_none_is_kept_for_its_timeout_like_any_value(cache: Any, django_clock: FakeClock) -> None:
    """Django stores None as a value with the timeout it is given (locmem, Redis): the chain's
    ``negative_ttl`` (a source's "not found", 30 s by default) has nothing to say about it."""
    cache.set("short", None, timeout=1)
    cache.set("long", None, timeout=600)
    cache.set("forever", None, timeout=None)
    cache.set_many({"many": None}, timeout=600)
    assert cache.add("added", None, timeout=600) is True
    cache.set("touched", None, timeout=1)
    assert cache.touch("touched", timeout=600) is True
    django_clock.advance(2)
    assert cache.get("short", "gone") == "gone"
    django_clock.advance(60)
    found = {key: cache.get(key, "gone") for key in ("long", "forever", "many", "added", "touched")}
    assert found == dict.fromkeys(("long", "forever", "many", "added", "touched"))


def test_the_chains_of_every_entry_register_with_prometheus_together(caches: Any) -> None:
    """Entries of one settings file share one chain (``default`` and ``prefix`` here); the
    chains of every entry, given to one ``register()`` as docs/metrics.md says, were refused
    as two chains of one namespace."""
    from prometheus_client import CollectorRegistry, generate_latest

    from tiered_cache.contrib.prometheus import register

    registry = CollectorRegistry()
    register(caches["default"].chain, caches["prefix"].chain, registry=registry)
    namespace = caches["default"].chain.namespace
    assert f'tiered_cache_loads_total{{namespace="{namespace}"}}'.encode() in generate_latest(
        registry
    )


def test_one_settings_file_named_two_ways_is_one_chain(
    tmp_path: Any, monkeypatch: Any, django_caches: Any
) -> None:
    """The file given as a Path and as a str, relative and absolute, is one file: keyed by its
    text, each spelling built a chain of its own, of one namespace, which the exporters then
    refused together (two chains of one namespace)."""
    from pathlib import Path

    from tiered_cache.contrib.django import TieredCacheBackend

    config = tmp_path / "tiered_cache.toml"
    config.write_text('[tiered_cache]\nnamespace = "django-spelt"\n')
    monkeypatch.chdir(tmp_path)
    spellings: list[Any] = [config, str(config), "tiered_cache.toml", Path("./tiered_cache.toml")]
    chains = [TieredCacheBackend("", {"OPTIONS": {"CONFIG": each}}).chain for each in spellings]
    assert len({id(chain) for chain in chains}) == 1


def test_incr_after_a_clock_stepped_back_keeps_no_more_than_the_keys_timeout(
    django_caches: Any, redis_server: Any, namespace: str
) -> None:
    """``incr`` keeps the key's time left, read on the chain's clock, the wall clock by
    default: stepped back an hour (NTP), a counter set for 60 s (a rate limit's window) had an
    hour and 60 s left, and was stored so in Redis. Its time left is at most its timeout."""
    import redis

    from tiered_cache.contrib.django import TieredCacheBackend

    now = [1_000_000.0]
    settings = {
        "namespace": namespace,
        "tiers": [{"kind": "memory"}, {"kind": "redis", "url": redis_server.url}],
        "bus": {"kind": "off"},
    }
    backend = TieredCacheBackend("", {"OPTIONS": {"SETTINGS": settings, "CLOCK": lambda: now[0]}})
    backend.set("hits", 1, 60)
    now[0] -= 3600.0
    assert backend.incr("hits") == 2
    client = redis.Redis.from_url(redis_server.url)
    (key,) = client.keys(f"*{namespace}*hits*")
    assert 0 < client.ttl(key) <= 60
    client.close()
    backend.clear()
