"""The decorator: key templates filled from arguments, invalidation, clear errors."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from tiered_cache import (
    KeyTemplateError,
    MemoryTier,
    PartialBatchError,
    RecursiveLoad,
    TieredCache,
)
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock


@pytest.fixture
def cache(clock: FakeClock) -> TieredCache:
    return TieredCache(
        [MemoryTier(max_entries=100, clock=clock)], clock=clock, protection=Protection.never_stale()
    )


def test_method_of_a_repository_class(cache: TieredCache) -> None:
    loads: list[str] = []

    class TweetRepository:
        @cache.cached(key="tweet:{tweet_id}", ttl="1h")
        def get(self, tweet_id: str) -> dict[str, str]:
            loads.append(tweet_id)
            return {"tweet_id": tweet_id}

    repo = TweetRepository()
    assert repo.get("1") == {"tweet_id": "1"}
    assert repo.get(tweet_id="1") == {"tweet_id": "1"}
    assert TweetRepository().get("1") == {"tweet_id": "1"}  # another instance, same key
    assert repo.get("2") == {"tweet_id": "2"}
    assert loads == ["1", "2"]
    assert TweetRepository.get.key_for(tweet_id="1") == "tweet:1"
    repo.get.invalidate(tweet_id="1")
    repo.get("1")
    assert loads == ["1", "2", "1"]


def test_ttl_of_the_decorator(cache: TieredCache, clock: FakeClock) -> None:
    loads: list[int] = []

    @cache.cached(key="n:{n}", ttl="10s")
    def square(n: int) -> int:
        loads.append(n)
        return n * n

    assert square(3) == 9
    clock.advance(9)
    assert square(3) == 9
    clock.advance(2)
    assert square(3) == 9
    assert loads == [3, 3]


def test_defaults_keyword_only_and_positional_only(cache: TieredCache) -> None:
    calls: list[tuple[object, ...]] = []

    @cache.cached(key="{a}/{b}/{c}")
    def f(a: int, /, b: int = 2, *, c: int = 3) -> int:
        calls.append((a, b, c))
        return a + b + c

    assert f(1) == 6
    assert f(1, 2, c=3) == 6
    assert f(1, b=2) == 6
    assert f(1, 5) == 9
    assert calls == [(1, 2, 3), (1, 5, 3)]
    with pytest.raises(TypeError):
        f()  # type: ignore[call-arg]  # the wrapper binds arguments like the function


def test_wrapper_keeps_name_and_doc(cache: TieredCache) -> None:
    @cache.cached(key="k:{x}")
    def documented(x: int) -> int:
        """Doubles x."""
        return 2 * x

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Doubles x."
    assert documented(4) == 8


def test_template_naming_an_unknown_parameter_fails_at_decoration(cache: TieredCache) -> None:
    with pytest.raises(
        KeyTemplateError,
        match=r"names tweetid, which is not among its parameters \(self, tweet_id\)",
    ):

        class Repo:
            @cache.cached(key="tweet:{tweetid}")
            def get(self, tweet_id: str) -> str:
                return tweet_id


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("tweet", "names no parameter"),
        ("tweet:{", "malformed"),
        ("t:{a.b}", "must be a parameter name"),
        ("t:{rest}", "is a \\*args/\\*\\*kwargs parameter"),
    ],
)
def test_bad_templates(cache: TieredCache, template: str, message: str) -> None:
    with pytest.raises(KeyTemplateError, match=message):

        @cache.cached(key=template)
        def f(a: int, *rest: int) -> int:
            return a


def test_a_parameter_named_as_the_generated_wrappers_own_is_refused(cache: TieredCache) -> None:
    """The wrapper is generated with the function's own parameters beside names of its own
    (``__tc_...``): a parameter named as one of them was overwritten before the call (the
    function got the chain's ``MISSING``, and that result was cached), or broke the generated
    source (``SyntaxError``). Each is refused at decoration, the name said."""

    def value(__tc_value: int) -> Any:
        return __tc_value

    def key(__tc_key: int) -> Any:
        return __tc_key

    outcomes = {}
    for function, template in ((value, "v:{__tc_value}"), (key, "k:{__tc_key}")):
        try:
            outcomes[function.__name__] = repr(cache.cached(key=template)(function)(5))
        except Exception as exc:
            outcomes[function.__name__] = f"{type(exc).__name__}: {exc}"
    assert outcomes == {
        function.__name__: f"KeyTemplateError: parameter __tc_{function.__name__} of "
        f"{function.__qualname__}: names starting with __tc_ are the generated wrapper's "
        "own; rename it"
        for function in (value, key)
    }


def test_a_default_that_is_inspects_own_empty_marker_is_refused(cache: TieredCache) -> None:
    """``inspect`` reads a default of ``inspect.Parameter.empty`` as no default at all, so the
    generated wrapper and key function made that parameter required: ``f("1")`` raised
    ``TypeError: ... missing 1 required positional argument: 'x'`` where the undecorated
    function returned. Refused at decoration, the parameter named."""
    empty = inspect.Parameter.empty

    def positional(k: str, x: Any = empty) -> Any:
        return [k, x is empty]

    def keyword_only(k: str, *, x: Any = empty) -> Any:
        return [k, x is empty]

    outcomes = {}
    for function in (positional, keyword_only):
        try:
            outcomes[function.__name__] = repr(cache.cached(key="e:{k}")(function)("1"))
        except Exception as exc:
            outcomes[function.__name__] = f"{type(exc).__name__}: {exc}"
    assert outcomes == {
        function.__name__: f"KeyTemplateError: parameter x of {function.__qualname__}: its "
        "default is inspect.Parameter.empty, which inspect cannot tell from no default; "
        "use another marker (a module-level object())"
        for function in (positional, keyword_only)
    }


#: Names of the generated wrapper's (its locals, its second half's parameters, its globals)
#: and others, as keywords a ``**kwargs`` parameter takes in.
GENERATED_KEYWORDS = ("__tc_key", "__tc_value", "__tc_read", "__tc_fn", "__tc_rest", "wrapper")


def test_generated_names_passed_in_kwargs_reach_the_function(cache: TieredCache) -> None:
    """A ``**kwargs`` parameter takes any keyword, the generated wrapper's own names too: each
    reaches the function as it does undecorated. The second half of the sync wrapper took its
    key as a parameter that could be passed by keyword: ``f(1, __tc_key=2)`` raised
    ``TypeError: __tc_rest() got multiple values for argument '__tc_key'``."""

    def keywords(a: int, **kw: int) -> Any:
        return [a, sorted(kw.items())]

    def positional_only(a: int, /, **kw: int) -> Any:
        return [a, sorted(kw.items())]

    def variadic(a: int, *args: int, **kw: int) -> Any:
        return [a, list(args), sorted(kw.items())]

    outcomes = {}
    expected = {}
    for function, template in (
        (keywords, "kw:{a}"),
        (positional_only, "po:{a}"),
        (variadic, "va:{a}"),
    ):
        decorated = cache.cached(key=template)(function)
        for name in GENERATED_KEYWORDS:
            expected[function.__name__, name] = repr(function(1, **{name: 2}))
            try:
                outcomes[function.__name__, name] = repr(decorated(1, **{name: 2}))
            except Exception as exc:
                outcomes[function.__name__, name] = f"{type(exc).__name__}: {exc}"
            cache.invalidate(template.format(a=1))
    assert outcomes == expected


def test_invalidate_needs_exactly_the_template_names(cache: TieredCache) -> None:
    @cache.cached(key="u:{user}:t:{tweet}")
    def f(user: str, tweet: str) -> str:
        return user + tweet

    with pytest.raises(KeyTemplateError, match="missing tweet"):
        f.invalidate(user="a")
    with pytest.raises(KeyTemplateError, match="unknown other"):
        f.invalidate(user="a", tweet="b", other=1)


def test_invalidate_and_key_for_take_the_functions_defaults(cache: TieredCache) -> None:
    """``invalidate(**names)`` needed every template name, even one the function has a
    default for, where the call it undoes left it out: ``export(42)`` was invalidated only
    by ``export.invalidate(tweet_id=42, format="csv")``."""
    calls: list[tuple[object, ...]] = []

    @cache.cached(key="export:{tweet_id}:{format}:{v}")
    def export(tweet_id: int, format: str = "csv", *, v: int = 1) -> str:
        calls.append((tweet_id, format, v))
        return f"{tweet_id}.{format}"

    assert export(42) == "42.csv"
    assert export.key_for(tweet_id=42) == "export:42:csv:1"
    assert export.key_for(tweet_id=42, format="json", v=2) == "export:42:json:2"
    export.invalidate(tweet_id=42)
    assert export(42) == "42.csv"
    assert calls == [(42, "csv", 1), (42, "csv", 1)]
    with pytest.raises(KeyTemplateError, match="missing tweet_id"):
        export.invalidate(format="csv")  # no default: still needed


def test_function_errors_propagate_and_are_not_cached(cache: TieredCache) -> None:
    attempts: list[int] = []

    @cache.cached(key="k:{x}")
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise ConnectionError("source down")
        return x

    with pytest.raises(ConnectionError):
        flaky(1)
    assert flaky(1) == 1
    assert flaky(1) == 1
    assert attempts == [1, 1]


class _Request:
    """A class with Python's default repr: ``<..._Request object at 0x7f...>``."""

    def __init__(self, user: str) -> None:
        self.user = user


def test_an_argument_whose_text_is_its_memory_address_is_refused(cache: TieredCache) -> None:
    # CPython reuses a freed object's address: a key built from the default repr served
    # another object's cached value on 199 of 200 calls.
    loads: list[str] = []

    @cache.cached(key="profile:{req}")
    def profile(req: _Request) -> dict[str, str]:
        loads.append(req.user)
        return {"user": req.user}

    @cache.cached(key="profile_n:{req}:{n}")
    def profile_n(req: object, n: int) -> str:
        loads.append("n")
        return "value"

    served: list[tuple[str, dict[str, str]]] = []
    for i in range(50):
        request = _Request(f"user{i}")
        with pytest.raises(TypeError, match=r"req.*memory address.*__str__"):
            served.append((request.user, profile(request)))
        with pytest.raises(TypeError, match="req"):
            profile_n(request, 1)
        with pytest.raises(TypeError, match="req"):
            profile_n((request.user, request), 1)  # inside a tuple too
        with pytest.raises(TypeError, match="req"):
            profile.key_for(req=request)
        with pytest.raises(TypeError, match="req"):
            profile.invalidate(req=request)
        del request
    assert served == [] and loads == []  # refused before the function ran


def test_values_that_identify_themselves_still_make_keys(cache: TieredCache) -> None:
    class Named(_Request):
        def __str__(self) -> str:
            return f"req-{self.user}"

    @cache.cached(key="profile:{req}:{n}")
    def profile(req: object, n: object) -> str:
        return str(req)

    assert profile(Named("a"), 1) == "req-a"
    assert profile.key_for(req=Named("a"), n=(1, "x")) == "profile:req-a:(1, 'x')"
    assert profile("a", 1.5) == "a"
    assert profile(None, b"x") == "None"


class _Counted:
    """A key part whose text is computed anew on every call, counted: formatting it twice
    for one key could check one text and store under another."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.texts = 0

    def __format__(self, spec: str) -> str:
        self.texts += 1
        return format(f"{self.name}-{self.texts}", spec)

    def __repr__(self) -> str:
        self.texts += 1
        return f"{self.name}-{self.texts}"


@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("a:{req}", "a:r-1"),  # last field, nothing to escape
        ("a:{req}:{n}", "a:r-1:1"),  # escaped before the next literal
        ("a:{req:>5}", "a:  r-1"),  # a spec
        ("a:{req!r}:{n}", "a:r-1:1"),  # a conversion, escaped
        ("a:{n}:{req!r:>4}", "a:1: r-1"),  # both, last
    ],
)
def test_a_key_part_that_is_not_plain_is_turned_into_text_once(
    cache: TieredCache, template: str, key: str
) -> None:
    @cache.cached(key=template)
    def fn(req: object, n: int = 1) -> str:
        return "value"

    part = _Counted("r")
    assert fn(part) == "value"
    assert part.texts == 1  # checked and keyed with one text
    assert cache.get(key) == "value"  # and that text is the key stored
    part = _Counted("r")
    names = {"req": part, "n": 1} if "{n}" in template else {"req": part}
    assert fn.key_for(**names) == key
    assert part.texts == 1


def test_conversions_and_specs_are_checked_too(cache: TieredCache) -> None:
    class ReprOnlyDefault(_Request):
        def __str__(self) -> str:
            return self.user

    @cache.cached(key="a:{req!r}:{n:>3}")
    def first(req: object, n: object) -> str:
        return "value"

    @cache.cached(key="b:{n:>3}:{req!r}")
    def last(req: object, n: object) -> str:
        return "value"

    for fn in (first, last):
        with pytest.raises(TypeError, match="req"):
            fn(ReprOnlyDefault("a"), 1)
        with pytest.raises(TypeError, match="n"):
            fn("a", _Request("b"))
        assert fn("a", 1) == "value"
    assert first.key_for(req="a", n=1) == "a:'a':  1"


def test_a_parameter_named_like_a_builtin_the_key_calls_leaves_the_key_alone(
    cache: TieredCache,
) -> None:
    """The generated key called format(), repr(), str() and ascii() by their builtin names,
    so a parameter of the same name took their place: ``def export(self, id, format="csv")``
    failed every call whose id was an int with TypeError: 'str' object is not callable."""
    loads: list[object] = []

    @cache.cached(key="e:{id}:{lang}")
    def export(id: int, lang: str = "en", format: str = "csv") -> str:
        loads.append(id)
        return f"{id}.{format}"

    @cache.cached(key="r:{id!r}:{a!s}:{b!a}:{n:>4}")
    def shown(
        id: int, a: int, b: int, n: int, *, repr: int = 0, str: int = 0, ascii: int = 0
    ) -> int:
        loads.append(n)
        return n

    assert export(42) == export(42, "en") == "42.csv"
    assert export.key_for(id=42, lang="en") == "e:42:en"
    assert shown(1, 2, 3, 4) == shown(1, 2, 3, 4) == 4
    assert shown.key_for(id=1, a=2, b=3, n=4) == "r:1:2:3:   4"
    assert loads == [42, 4]
    export.invalidate(id=42, lang="en")
    assert export(42) == "42.csv"
    assert loads == [42, 4, 42]


def test_values_written_alike_share_a_key_and_unnormalized_text_does_not(
    cache: TieredCache,
) -> None:
    """What docs/keys.md says: a key is the values' text, never normalized."""
    import unicodedata

    calls: list[object] = []

    @cache.cached(key="t:{x}")
    def f(x: object) -> object:
        calls.append(x)
        return x

    composed, decomposed = (unicodedata.normalize(form, "café") for form in ("NFC", "NFD"))
    for value in ("1", 1, True, "True", composed, decomposed):
        f(value)
    assert calls == ["1", True, composed, decomposed]


def test_cached_written_above_classmethod_or_staticmethod(cache: TieredCache) -> None:
    """Either order of the two decorators caches: ``@cached`` above ``@classmethod`` failed
    with inspect's "is not a callable object", and above ``@staticmethod`` the wrapper became
    a plain function, which an instance then passed itself to as the first argument."""
    loads: list[tuple[str, str]] = []

    class TweetRepository:
        @cache.cached(key="c:{tweet_id}")
        @classmethod
        def by_class(cls, tweet_id: str) -> str:
            loads.append((cls.__name__, tweet_id))
            return f"c{tweet_id}"

        @cache.cached(key="s:{tweet_id}")
        @staticmethod
        def alone(tweet_id: str) -> str:
            loads.append(("static", tweet_id))
            return f"s{tweet_id}"

    repo = TweetRepository()
    assert TweetRepository.by_class("1") == "c1"
    assert repo.by_class("1") == "c1"
    assert repo.alone("2") == "s2"
    assert TweetRepository.alone(tweet_id="2") == "s2"
    assert loads == [("TweetRepository", "1"), ("static", "2")]
    assert TweetRepository.by_class.key_for(tweet_id="1") == "c:1"
    TweetRepository.alone.invalidate(tweet_id="2")
    assert repo.alone("2") == "s2"
    assert loads[-1] == ("static", "2") and len(loads) == 3


# A load that reads its own key joined its own flight and waited for itself for ever (the
# thread hung in Event.wait, with no error and no log): Caffeine and Guava refuse a recursive
# load the same way.
def test_a_function_that_reads_its_own_key_while_loading_it_raises_recursive_load(
    cache: TieredCache,
) -> None:
    calls: list[int] = []

    @cache.cached(key="rec:{x}")
    def rec(x: int) -> str:
        calls.append(x)
        return rec(x)

    with pytest.raises(RecursiveLoad, match="rec:1"):
        rec(1)
    assert calls == [1]
    assert cache.get("rec:1", lambda: "loaded") == "loaded"  # nothing was left in flight


def test_a_loader_that_gets_its_own_key_raises_recursive_load(cache: TieredCache) -> None:
    with pytest.raises(RecursiveLoad, match="'a'"):
        cache.get("a", lambda: cache.get("a", lambda: "inner"))
    assert cache.get("a", lambda: "outer") == "outer"


def test_a_batch_loader_that_gets_a_key_of_its_batch_raises_recursive_load(
    cache: TieredCache,
) -> None:
    def load(keys: list[str]) -> dict[str, str]:
        return {key: cache.get(key, lambda: "inner") for key in keys}

    with pytest.raises(PartialBatchError) as raised:
        cache.get_many(["a", "b"], load)
    assert {key: type(error) for key, error in raised.value.errors.items()} == {
        "a": RecursiveLoad,
        "b": RecursiveLoad,
    }
    assert cache.get_many(["a", "b"], lambda keys: dict.fromkeys(keys, "v")) == {"a": "v", "b": "v"}


@pytest.mark.parametrize("made", ["coroutine", "generator", "iterator"])
def test_a_result_that_can_be_used_only_once_is_refused_not_cached(
    cache: TieredCache, made: str
) -> None:
    """A plain function returning a coroutine (a sync wrapper around an async def, as a
    tracing decorator that is not async-aware makes), a generator or an iterator passes the
    check made when it is decorated: its result was cached, and the next call got the
    coroutine already awaited ("cannot reuse already awaited coroutine") or the iterator used
    up (an empty result)."""

    async def fetch(x: int) -> int:
        return x

    calls: list[int] = []

    @cache.cached(key="once:{x}")
    def one_use(x: int) -> Any:
        calls.append(x)
        if made == "coroutine":
            return fetch(x)
        if made == "generator":
            return (i for i in range(x))
        return iter([x])

    for _ in range(2):
        with pytest.raises(TypeError, match="can be used only once"):
            one_use(1)
    assert calls == [1, 1]  # nothing was cached
