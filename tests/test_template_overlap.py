"""Two decorated functions of one cache never share a key unless their templates are the same:
a template whose keys another template can make is refused when it is decorated."""

from __future__ import annotations

import functools
import itertools
import re

import pytest

from tiered_cache import AsyncTieredCache, KeyTemplateError, TieredCache
from tiered_cache.decorator import _parts, render_key
from tiered_cache.keys import ESCAPE
from tiered_cache.memory import MemoryTier
from tiered_cache.template_overlap import shared_key, tokens


@pytest.fixture
def cache() -> TieredCache:
    return TieredCache([MemoryTier()], namespace="overlap")


def test_a_template_that_can_make_another_functions_keys_is_refused(cache: TieredCache) -> None:
    @cache.cached(key="user:{uid}:secrets")
    def secrets(uid: str) -> dict[str, str]:
        return {"ssn": f"123-45-{uid}"}

    assert secrets("42") == {"ssn": "123-45-42"}
    # On main this was decorated, and profile("42:secrets") returned user 42's secrets.
    with pytest.raises(KeyTemplateError, match=r"'user:\{uid\}'.*profile.*'user:\{uid\}:secrets'"):

        @cache.cached(key="user:{uid}")
        def profile(uid: str) -> dict[str, str]:
            return {"public": uid}


def test_either_order_of_decoration_is_refused(cache: TieredCache) -> None:
    @cache.cached(key="doc:{owner}:{name}")
    def doc(owner: str, name: str) -> str:
        return f"{owner}/{name}"

    with pytest.raises(KeyTemplateError, match="both make 'doc::'"):  # doc1(":") was doc("", "")

        @cache.cached(key="doc:{name}")
        def doc1(name: str) -> str:
            return name

    with pytest.raises(KeyTemplateError):

        @cache.cached(key="doc:{owner}:{name}:v2")  # doc("a", "b:v2") was its ("a", "b")
        def doc2(owner: str, name: str) -> str:
            return name


def test_templates_that_make_no_key_alike_are_taken(cache: TieredCache) -> None:
    templates = [
        "user:{uid}:profile",
        "user:{uid}:secrets",
        "post:{pid}",
        "user:{uid}:{n}:history",
        "feed/{a}",
    ]
    functions = [cache.cached(key=t)(make(template_names(t), t)) for t in templates]
    answers = [
        f(*[":"] * len(template_names(t))) for f, t in zip(functions, templates, strict=True)
    ]
    assert answers == templates  # each function answered itself


def test_the_same_template_twice_shares_its_keys_as_meant(cache: TieredCache) -> None:
    reads = []
    for instance in range(3):  # a closure decorated per instance of a repository

        @cache.cached(key="tweet:{tweet_id}")
        def read(tweet_id: str, instance: int = instance) -> str:
            reads.append(instance)
            return f"tweet {tweet_id}"

        assert read("1") == "tweet 1"

    @cache.cached(key="tweet:{id}")  # the same keys under another parameter's name
    def other(id: str) -> str:
        return "other"

    assert other("1") == "tweet 1" and reads == [0]


def test_templates_of_two_caches_do_not_meet(cache: TieredCache) -> None:
    other_cache = TieredCache([MemoryTier()], namespace="other")

    @cache.cached(key="user:{uid}:secrets")
    def secrets(uid: str) -> str:
        return "s"

    @other_cache.cached(key="user:{uid}")
    def profile(uid: str) -> str:
        return "p"

    assert (secrets("1"), profile("1:secrets")) == ("s", "p")


@pytest.mark.anyio
async def test_an_async_chains_templates_are_checked_too() -> None:
    cache = AsyncTieredCache([MemoryTier()], namespace="overlap")

    @cache.cached(key="user:{uid}:secrets")
    async def secrets(uid: str) -> str:
        return "s"

    with pytest.raises(KeyTemplateError):

        @cache.cached(key="user:{uid}")
        async def profile(uid: str) -> str:
            return "p"

    await cache.aclose()


def template_names(template: str) -> list[str]:
    return [field for _, field, _, _, _ in _parts(template) if field]


def make(fields: list[str], template: str) -> object:
    namespace: dict[str, object] = {}
    exec(f"def load({', '.join(fields)}):\n    return {template!r}\n", namespace)
    return namespace["load"]


def language(template: str) -> re.Pattern[str]:
    """The keys ``template`` makes, written apart from the module under test."""
    pattern = ""
    for literal, field, _, _, ender in _parts(template):
        pattern += re.escape(literal)
        if field is None:
            continue
        if ender is None:
            pattern += "(?s:.*)"
        else:
            e, c = re.escape(ESCAPE), re.escape(ender)
            pattern += f"(?:[^{e}{c}]|{e}{e}|{e}{c})*"
    return re.compile(pattern, re.DOTALL)


TEMPLATES = [
    "{a}",
    "k:{a}",
    "k:{a}:",
    "k:{a}:{b}",
    "k:{a}:x",
    "k:{a}:{b}:x",
    "k:{a}/{b}",
    "k:{a}/x",
    "k:x:{a}",
    "{a}:k",
    "{a}:{b}",
    "k{a}",
    "kk:{a}",
    "k::{a}",
]
VALUES = ["", "x", ":", "/", "k", "x:", ":x", "b:x", "\\", "a\\:", "x/x", ":k", "b/x"]


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(TEMPLATES, 2)))
def test_shared_key_finds_every_collision_and_only_real_ones(first: str, second: str) -> None:
    example = shared_key(tokens(_parts(first)), tokens(_parts(second)))
    if example is not None:  # a key both really make
        assert language(first).fullmatch(example) and language(second).fullmatch(example)
    made = {}
    for values in itertools.product(VALUES, repeat=len(template_names(first))):
        made[render_key(first, dict(zip(template_names(first), values, strict=True)))] = values
    for values in itertools.product(VALUES, repeat=len(template_names(second))):
        key = render_key(second, dict(zip(template_names(second), values, strict=True)))
        if key in made:  # a collision of real calls: it must be found
            assert example is not None, (key, made[key], values)


def test_callables_without_a_qualified_name_are_decorated_and_named(cache: TieredCache) -> None:
    def scaled(a: int, scale: int = 1) -> int:
        return a * scale

    class Loader:
        def __call__(self, a: int) -> int:
            return -a

    # A partial has no __qualname__: the template's record of it failed with AttributeError.
    partial = cache.cached(key="p:{a}")(functools.partial(scaled, scale=2))
    assert (partial(3), partial.key_for(a=3)) == (6, "p:3")
    assert cache.cached(key="q:{a}")(Loader())(4) == -4
    with pytest.raises(KeyTemplateError, match=r"functools\.partial.*'p:\{a\}'"):
        cache.cached(key="p:{a}:x")(functools.partial(scaled, scale=3))
    with pytest.raises(KeyTemplateError, match=r"functools\.partial.*names b"):
        cache.cached(key="r:{b}")(functools.partial(scaled, scale=3))
    with pytest.raises(KeyTemplateError, match=r"takes a: missing a; unknown z"):
        partial.key_for(z=1)
