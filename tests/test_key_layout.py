"""The key layout (tiered_cache.keys and the decorator's templates) is unambiguous."""

from __future__ import annotations

import itertools

import pytest

from tiered_cache import KeyTemplateError, TieredCache, load_settings
from tiered_cache.keys import escape_part, namespace_prefix


def test_no_namespace_prefix_starts_another_one() -> None:
    names = ["app", "app:v2", "app\\", "app\\:v2", "a:b:c", "a", ":", "\\", "app:"]
    names += ["{app", "\\{app", "{app}", "{", "{{", "\\{", "a{"]
    prefixes = {name: namespace_prefix(name) for name in names}
    assert prefixes["app"] == "app:"  # namespaces without ':' or '\' keep their layout
    assert prefixes["a{"] == "a{:"  # a brace past the start is no lease's
    for one, other in itertools.permutations(names, 2):
        assert not prefixes[other].startswith(prefixes[one]), (one, other)
    # A lease's key starts with "{" (``{<Redis key>}:lease``): no data key does.
    assert not [name for name, prefix in prefixes.items() if prefix.startswith("{")]


def test_escaping_is_reversible_per_part() -> None:
    assert escape_part("a:b\\c", ":") == "a\\:b\\\\c"


def _cache() -> TieredCache:
    return TieredCache.from_settings(load_settings(tiers=[{"kind": "memory"}]))


@pytest.mark.parametrize(
    ("template", "calls"),
    [
        ("doc:{owner}:{name}", [("alice", "secret:plan"), ("alice:secret", "plan")]),
        ("{a}/{b}", [("x/y", "z"), ("x", "y/z")]),
        ("{a}:{b}", [("x\\", "y"), ("x", "\\:y"), ("x\\:", "y")]),
    ],
)
def test_decorated_keys_of_different_arguments_differ(
    template: str, calls: list[tuple[str, str]]
) -> None:
    with _cache() as cache:
        seen: list[tuple[str, str]] = []

        @cache.cached(key=template)
        def load(a: str = "", b: str = "", owner: str = "", name: str = "") -> str:
            seen.append((a or owner, b or name))
            return f"{a or owner}|{b or name}"

        names = ("owner", "name") if "owner" in template else ("a", "b")
        keys = set()
        for first, second in calls:
            arguments = dict(zip(names, (first, second), strict=True))
            assert load(**arguments) == f"{first}|{second}"
            keys.add(load.key_for(**arguments))
        assert len(keys) == len(calls)
        assert len(seen) == len(calls)


def test_key_for_matches_the_key_of_the_call_with_specs_and_conversions() -> None:
    with _cache() as cache:

        @cache.cached(key="n:{n:03d}:{label!r}")
        def numbered(n: int, label: str) -> str:
            return f"{n}{label}"

        numbered(7, "a:b")
        key = numbered.key_for(n=7, label="a:b")
        assert key == "n:007:'a:b'"
        assert cache.get(key) == "7a:b"


@pytest.mark.parametrize("template", ["{a}{b}", "k\\{a}"])
def test_templates_that_cannot_be_unambiguous_are_refused(template: str) -> None:
    with _cache() as cache, pytest.raises(KeyTemplateError):

        @cache.cached(key=template)
        def load(a: str, b: str = "") -> str:
            return a
