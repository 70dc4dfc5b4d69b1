"""A decorated function's plain hit in C (tiered_cache/_hitcall.c) answers as the generated
wrapper it falls back to, which stays the reference.

Two chains run the same calls, clock moves, invalidations and bus outages: one whose
decorated functions are what ``@cache.cached`` returns (a ``HitCall`` when the C extension is
built), one whose functions are the generated Python wrappers alone. Their answers, errors,
loads, clock reads, counters and kept keys must stay identical. The behaviour tests below run
on both kinds of function.
"""

from __future__ import annotations

import gc
import inspect
import pickle
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache, decorator
from tiered_cache.clocks import ManualClock
from tiered_cache.decorator import HIT_CALL_BUILT
from tiered_cache.protection import Protection

needs_build = pytest.mark.skipif(
    not HIT_CALL_BUILT,
    reason="the C extension is not in use (not built, stale, or TIERED_CORE_PURE=1): the "
    "decorator returns its generated wrappers, which the other tests cover",
)


class StrSub(str):
    """A str subclass: its formatting is its own, so the C path leaves it to the wrapper."""

    def __format__(self, spec: str) -> str:
        return "sub-" + str.__format__(self, spec)


#: Argument values: some need escaping, some are not str or int, some are equal but typed
#: differently (1, True, "1"); few enough that calls repeat and hit.
VALUES: list[object] = [
    "1",
    "a:b",
    "x-y",
    "back\\slash",
    "é",
    "中文",
    "🙂",
    "",
    0,
    1,
    -5,
    10**20,
    True,
    1.5,
    None,
    StrSub("1"),
    ("t",),
]


class Side:
    """One chain with a counting manual clock, and the decorated functions of every shape."""

    def __init__(self, generated_only: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = ManualClock(1_000.0)
        self.clock_reads = 0
        self.loads: list[tuple[str, tuple[object, ...]]] = []

        def clock() -> float:
            self.clock_reads += 1
            return self.clock()

        self.tier = MemoryTier(max_entries=50, clock=clock)
        self.cache = TieredCache(
            [self.tier],
            clock=clock,
            ttl=30.0,
            protection=Protection(soft_timeout=None),
            background=lambda job: job(),
        )
        with monkeypatch.context() as patch:
            if generated_only:
                patch.setattr(decorator, "HIT_CALL_BUILT", False)
            self.functions = self._decorate()

    def _decorate(self) -> dict[str, Callable[..., Any]]:
        cached, loads = self.cache.cached, self.loads

        @cached(key="one:{a}")
        def one(a: object) -> object:
            loads.append(("one", (a,)))
            return ("one", a)

        @cached(key="two:{a}:{b}/")
        def two(a: object, b: object = 7, *, c: object = "c") -> object:
            loads.append(("two", (a, b, c)))
            return ("two", a, b, c)

        @cached(key="r:{a}-{a}|{b}€")  # a literal beyond Latin-1: the wide key
        def repeated(a: object, /, b: object, *rest: object, **extra: object) -> object:
            loads.append(("repeated", (a, b, rest, tuple(sorted(extra.items())))))
            return ("repeated", a, b)

        @cached(key="conv:{a!r}:{b:>3}")
        def converted(a: object, b: object) -> object:
            loads.append(("converted", (a, b)))
            return ("converted", a, b)

        class Repository:
            @cached(key="repo:{a}")
            def get(self, a: object) -> object:
                loads.append(("method", (a,)))
                return ("method", a)

        repository = Repository()
        return {
            "one": one,
            "two": two,
            "repeated": repeated,
            "converted": converted,
            "method": repository.get,
            "unbound": lambda a: Repository.get(repository, a),
        }

    def call(self, name: str, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
        try:
            return ("value", self.functions[name](*args, **kwargs))
        except Exception as exc:  # the same error on both sides, message included
            return ("error", type(exc).__name__, str(exc))

    def apply(self, step: tuple[Any, ...]) -> object:
        kind = step[0]
        if kind == "call":
            return self.call(step[1], step[2], step[3])
        if kind == "advance":
            self.clock.advance(step[1])
        elif kind == "invalidate":
            self.functions["one"].invalidate(a=step[1])  # type: ignore[attr-defined]
        else:
            self.cache._set_bus_connected(step[1])  # the bus went down (False) or came back
        return None

    def state(self) -> object:
        stats = self.cache.stats()
        return (
            self.loads,
            self.clock_reads,
            stats["tiers"],
            stats["loads"],
            sorted(self.tier.policy.keys()),
        )


value = st.sampled_from(VALUES)
calls = st.one_of(
    st.tuples(st.just("call"), st.just("one"), st.tuples(value), st.just({})),
    st.tuples(st.just("call"), st.just("one"), st.just(()), st.fixed_dictionaries({"a": value})),
    st.tuples(st.just("call"), st.just("one"), st.tuples(value, value), st.just({})),
    st.tuples(st.just("call"), st.just("one"), st.just(()), st.just({})),
    st.tuples(st.just("call"), st.just("two"), st.tuples(value), st.just({})),
    st.tuples(st.just("call"), st.just("two"), st.tuples(value, value), st.just({})),
    st.tuples(
        st.just("call"), st.just("two"), st.tuples(value), st.fixed_dictionaries({"c": value})
    ),
    st.tuples(st.just("call"), st.just("two"), st.tuples(value, value, value), st.just({})),
    st.tuples(st.just("call"), st.just("repeated"), st.tuples(value, value), st.just({})),
    st.tuples(st.just("call"), st.just("repeated"), st.tuples(value, value, value), st.just({})),
    st.tuples(
        st.just("call"), st.just("repeated"), st.tuples(value), st.fixed_dictionaries({"b": value})
    ),
    st.tuples(st.just("call"), st.just("converted"), st.tuples(value, value), st.just({})),
    st.tuples(
        st.just("call"), st.sampled_from(["method", "unbound"]), st.tuples(value), st.just({})
    ),
)
steps = st.lists(
    st.one_of(
        calls,
        calls,
        calls,
        st.tuples(st.just("advance"), st.sampled_from([0.5, 10.0, 29.5, 40.0])),
        st.tuples(st.just("invalidate"), value),
        st.tuples(st.just("bus"), st.booleans()),
    ),
    min_size=20,
    max_size=150,
)


@settings(max_examples=80, deadline=None)
@given(script=steps)
def test_the_c_hit_answers_as_the_generated_wrapper(script: list[tuple[Any, ...]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        answered, generated = Side(False, monkeypatch), Side(True, monkeypatch)
    for step in script:
        assert answered.apply(step) == generated.apply(step), step
        assert answered.state() == generated.state(), step


# -- behaviour, on both kinds of function -------------------------------------------------------


@pytest.fixture(params=["as built", "generated only"])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "generated only":
        monkeypatch.setattr(decorator, "HIT_CALL_BUILT", False)
    yield request.param


@pytest.fixture
def cache(clock: Callable[[], float]) -> TieredCache:
    return TieredCache([MemoryTier(max_entries=100, clock=clock)], clock=clock)


@needs_build
def test_the_c_hit_is_used_when_built_and_only_for_shapes_it_can_answer(
    cache: TieredCache,
) -> None:
    from tiered_cache._hitcall import HitCall

    @cache.cached(key="a:{a}")
    def plain(a: str) -> str:
        return a

    @cache.cached(key="a:{a:>4}")
    def with_spec(a: str) -> str:
        return a

    @cache.cached(key="a:{a}")
    def keyword_only_required(a: str, *, b: str) -> str:
        return a + b

    @cache.cached(key="a:{a}")
    def keyword_only_field(*, a: str) -> str:
        return a

    assert isinstance(plain, HitCall)
    for function in (with_spec, keyword_only_required, keyword_only_field):
        assert inspect.isfunction(function)
    assert plain.reader is cache.l1_hit
    cache._set_bus_connected(False)
    assert plain.reader is cache.l1_hit  # followed while the bus is down
    cache._set_bus_connected(True)
    assert plain.reader is cache.l1_hit


@pytest.mark.usefixtures("kind")
def test_introspection_and_helpers(cache: TieredCache) -> None:
    def tweet(tweet_id: str, lang: str = "en") -> dict[str, str]:
        """The tweet."""
        return {"tweet_id": tweet_id, "lang": lang}

    tweet.extra = 1  # type: ignore[attr-defined]
    wrapped = cache.cached(key="tweet:{tweet_id}:{lang}")(tweet)
    assert wrapped.__wrapped__ is tweet
    assert (wrapped.__name__, wrapped.__qualname__, wrapped.__doc__, wrapped.__module__) == (
        "tweet",
        tweet.__qualname__,
        "The tweet.",
        __name__,
    )
    assert wrapped.extra == 1
    assert inspect.signature(wrapped) == inspect.signature(tweet)
    assert "tweet" in repr(wrapped)
    assert wrapped.key_for(tweet_id="1", lang="fr") == "tweet:1:fr"
    assert wrapped("1") == {"tweet_id": "1", "lang": "en"}
    wrapped.invalidate(tweet_id="1", lang="en")
    assert len(cache.tiers[0]) == 0  # type: ignore[arg-type]


@pytest.mark.usefixtures("kind")
def test_methods_bind_on_instances_and_stay_themselves_on_the_class(cache: TieredCache) -> None:
    loads: list[tuple[str, str]] = []

    class Repository:
        def __init__(self, name: str) -> None:
            self.name = name

        @cache.cached(key="user:{user_id}")
        def get(self, user_id: str) -> str:
            loads.append((self.name, user_id))
            return f"{self.name}:{user_id}"

    first, second = Repository("first"), Repository("second")
    assert first.get("1") == "first:1"
    assert second.get("1") == "first:1"  # one key for both instances
    assert Repository.get(second, "2") == "second:2"
    assert first.get(user_id="2") == "second:2"
    assert loads == [("first", "1"), ("second", "2")]
    assert Repository.__dict__["get"] is Repository.get  # read on the class: itself
    bound = first.get
    assert bound.__self__ is first  # type: ignore[attr-defined]
    assert bound.__func__ is Repository.get  # type: ignore[attr-defined]
    assert list(inspect.signature(bound).parameters) == ["user_id"]
    assert bound.key_for(user_id="1") == "user:1"
    bound.invalidate(user_id="1")
    assert second.get("1") == "second:1"


@pytest.mark.usefixtures("kind")
def test_wrong_calls_get_python_s_own_errors(cache: TieredCache) -> None:
    @cache.cached(key="n:{n}")
    def f(n: int, /) -> int:
        return n

    with pytest.raises(TypeError, match="positional-only"):
        f(n=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional argument"):
        f(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="missing"):
        f()  # type: ignore[call-arg]


@pytest.mark.usefixtures("kind")
def test_an_int_past_the_digit_limit_raises_as_in_an_f_string(cache: TieredCache) -> None:
    @cache.cached(key="n:{n}")
    def f(n: int) -> int:
        return n

    with pytest.raises(ValueError, match="integer string conversion"):
        f(10**5000)
    assert f(10**20) == 10**20


@pytest.mark.usefixtures("kind")
def test_an_error_of_the_reader_reaches_the_caller_once(clock: Any) -> None:
    reads = 0
    broken = False

    def failing_clock() -> float:
        nonlocal reads
        reads += 1
        if broken:
            raise RuntimeError("clock broke")
        return float(clock())

    cache = TieredCache([MemoryTier(clock=failing_clock)], clock=failing_clock)

    @cache.cached(key="k:{k}")
    def f(k: str) -> str:
        return k

    f("1")
    broken, reads = True, 0
    with pytest.raises(RuntimeError, match="clock broke"):
        f("1")
    assert reads == 1


_module_cache = TieredCache([MemoryTier()])


@_module_cache.cached(key="module:{n}")
def module_level(n: int) -> int:
    """A decorated function at module level."""
    return n * 2


def test_a_module_level_function_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(module_level)) is module_level
    assert module_level(3) == module_level(3) == 6


@pytest.mark.usefixtures("kind")
def test_the_chain_does_not_keep_a_dropped_function_alive(cache: TieredCache) -> None:
    @cache.cached(key="k:{k}")
    def f(k: str) -> str:
        return k

    assert f("1") == f("1") == "1"
    reference = weakref.ref(f)
    del f
    gc.collect()
    assert reference() is None
    cache._set_bus_connected(False)  # telling the followers skips the dropped one
    cache._set_bus_connected(True)


def hits_and_bounded_serves(cache: TieredCache | AsyncTieredCache) -> tuple[int, int]:
    """Memory's hits, and those of them served within the bound while the bus was down."""
    stats = cache.stats()
    return stats["tiers"][0]["hits"], stats["bus_down_served"]


@pytest.mark.usefixtures("kind")
@pytest.mark.parametrize("call", ["positional", "keyword"])
def test_the_chain_s_reader_is_followed_through_a_bus_outage(cache: TieredCache, call: str) -> None:
    loads: list[str] = []

    @cache.cached(key="user:{user_id}")
    def user(user_id: str) -> str:
        loads.append(user_id)
        return f"user {user_id}"

    def read() -> str:
        return user("1") if call == "positional" else user(user_id="1")

    assert read() == read() == "user 1"
    assert (loads, *hits_and_bounded_serves(cache)) == (["1"], 1, 0)
    cache._set_bus_connected(False)  # memory is emptied, then read only within a bound
    assert read() == read() == read() == "user 1"
    # Memory's two hits are bounded serves (a plain hit counts none): no plain hit.
    assert (loads, *hits_and_bounded_serves(cache)) == (["1", "1"], 3, 2)
    cache._set_bus_connected(True)  # memory is read again (emptied: it may have missed some)
    assert read() == read() == "user 1"
    assert (loads, *hits_and_bounded_serves(cache)) == (["1", "1", "1"], 4, 2)


@pytest.mark.anyio
async def test_an_async_wrapper_follows_the_chain_s_reader_too(clock: Any) -> None:
    cache = AsyncTieredCache([MemoryTier(max_entries=10, clock=clock)], clock=clock)
    loads: list[str] = []

    @cache.cached(key="user:{user_id}")
    async def user(user_id: str) -> str:
        loads.append(user_id)
        return f"user {user_id}"

    assert await user("1") == await user("1") == "user 1"
    cache._set_bus_connected(False)  # memory is emptied, then read only within a bound
    assert await user("1") == await user("1") == await user("1") == "user 1"
    # Memory's two hits are bounded serves (a plain hit counts none): no plain hit.
    assert (loads, *hits_and_bounded_serves(cache)) == (["1", "1"], 3, 2)
    cache._set_bus_connected(True)
    assert await user("1") == await user("1") == "user 1"
    assert (loads, *hits_and_bounded_serves(cache)) == (["1", "1", "1"], 4, 2)
    await cache.aclose()


@needs_build
def test_the_c_type_refuses_arguments_it_cannot_answer_for() -> None:
    from tiered_cache._hitcall import HitCall
    from tiered_cache.hit import NOT_FRESH

    def good(**changes: Any) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "fallback": print,
            "rest": print,
            "not_fresh": NOT_FRESH,
            "escape": "\\",
            "literals": ("a:", ""),
            "indexes": (0,),
            "enders": (None,),
            "min_args": 1,
            "max_args": 1,
        }
        return {**arguments, **changes}

    HitCall(**good())
    for changes in (
        {"escape": "ab"},
        {"literals": ("a:",)},
        {"indexes": ()},
        {"indexes": (1,)},  # a field beyond the arguments every fast call has
        {"enders": ("ab",)},
        {"min_args": 2},
        {"max_args": 9},
        {"literals": ("a:", b"")},
    ):
        with pytest.raises(ValueError):
            HitCall(**good(**changes))
