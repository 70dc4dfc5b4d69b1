"""``@cache.cached(key="tweet:{tweet_id}", ttl="1h")`` for repository functions and methods.

The values put into a key are escaped (:func:`tiered_cache.keys.escape_part`) so that no two
argument tuples share a key: in each value but the last, a backslash and the character that
ends the value (the first one of the literal text after it) get a backslash in front. So
``"doc:{owner}:{name}"`` gives ``("alice", "secret:plan")`` the key ``doc:alice:secret:plan``
and ``("alice:secret", "plan")`` the key ``doc:alice\\:secret:plan``. A template of one field
(``"tweet:{tweet_id}"``) is filled exactly as ``str.format`` fills it.
"""

from __future__ import annotations

import functools
import inspect
import re
import string
import types
from collections.abc import Awaitable, Callable, Mapping, Set
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

from .compiled import compiled_core
from .errors import KeyTemplateError
from .hit import NOT_FRESH
from .keys import ESCAPE, escape_part
from .l1 import HitFollower
from .protection import REFRESH_DUE
from .read_state import ReadState
from .stamp import check_ttl
from .template_overlap import claim
from .tier import MISSING
from .units import DurationLike

if TYPE_CHECKING or compiled_core():  # built by tools/build_core.py with the compiled core
    from ._hitcall import HitCall

#: Whether a sync decorated function's plain hits are answered in C (:func:`_hit_call`).
HIT_CALL_BUILT = compiled_core()


class CachedReads(Protocol):
    """What the decorator needs of a cache: :class:`~tiered_cache.TieredCache`'s ``get`` in
    its three parts (so the generated wrapper can inline the L1 hit: the plain-hit reader
    through ``follow_l1_hit``), and ``invalidate``."""

    def lookup_l1(self, key: str) -> Any:
        """The fresh value in tier 0, ``MISSING``, ``REFRESH_DUE``, or the bus's
        :class:`~tiered_cache.read_state.ReadState` (tier 0 not read)."""
        ...

    def get_after_l1(
        self, key: str, loader: Callable[[], Any], ttl: float | None, looked: Any = ...
    ) -> Any:
        """The rest of ``get`` after an L1 miss (or an early refresh)."""
        ...

    def invalidate(self, key: str) -> None:
        """Remove ``key`` from every tier and every process's memory."""
        ...

    def follow_l1_hit(self, follower: HitFollower) -> None:
        """Keep ``follower.reader`` equal to the chain's plain L1 hit (``l1_hit``: the value,
        or ``NOT_FRESH``), which changes while the bus is down, for as long as ``follower``
        lives."""
        ...


class AsyncCachedReads(Protocol):
    """What the decorator needs of :class:`~tiered_cache.AsyncTieredCache` (the L1 lookup is
    a plain call; the rest is awaited)."""

    def lookup_l1(self, key: str) -> Any:
        """The fresh value in tier 0, ``MISSING``, ``REFRESH_DUE``, or the bus's
        :class:`~tiered_cache.read_state.ReadState` (tier 0 not read)."""
        ...

    async def get_after_l1(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        looked: Any = ...,
    ) -> Any:
        """The rest of ``get`` after an L1 miss (or an early refresh)."""
        ...

    async def invalidate(self, key: str) -> None:
        """Remove ``key`` from every tier and every process's memory."""
        ...

    def follow_l1_hit(self, follower: HitFollower) -> None:
        """Keep ``follower.reader`` equal to the chain's plain L1 hit (``l1_hit``: the value,
        or ``NOT_FRESH``), which changes while the bus is down, for as long as ``follower``
        lives."""
        ...


P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class BoundCachedFunction(Protocol[R_co]):
    """A cached method read through an instance: ``repo.get``.

    Binding hides the first parameter, which a type cannot express for a callable of unknown
    shape, so the arguments are not checked here; the result and the helpers still are.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> R_co:
        """Read the value through the cache (the method runs only on a miss)."""
        ...

    def key_for(self, **names: Any) -> str:
        """The cache key for these template names."""
        ...

    def invalidate(self, **names: Any) -> None:
        """Remove the entry for these template names from every tier (a name the function
        has a default for may be left out)."""
        ...


class CachedFunction(Protocol[P, R_co]):
    """What ``@cache.cached(...)`` returns: the function, read through the cache, plus helpers.

    Calls are checked against the decorated function's own parameters.
    """

    @property
    def __wrapped__(self) -> Callable[P, R_co]:
        """The undecorated function (the loader)."""
        ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Read the value through the cache (the function runs only on a miss)."""
        ...

    def key_for(self, **names: Any) -> str:
        """The cache key for these template names: ``key_for(tweet_id="42")``; a name the
        function has a default for may be left out."""
        ...

    def invalidate(self, **names: Any) -> None:
        """Remove the entry for these template names from every tier (a name the function
        has a default for may be left out)."""
        ...

    # A plain function is a descriptor: read on a class it stays itself, read on an instance it
    # becomes a bound method, whose attributes are the function's (so `repo.get.invalidate` works).
    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> CachedFunction[P, R_co]: ...

    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None
    ) -> BoundCachedFunction[R_co]: ...

    def __get__(
        self, instance: object | None, owner: type[Any] | None = None
    ) -> CachedFunction[P, R_co] | BoundCachedFunction[R_co]:
        """The function on a class, a bound method on an instance."""
        ...


class BoundAsyncCachedFunction(Protocol[R_co]):
    """A cached ``async def`` method read through an instance: ``await repo.get(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[R_co]:
        """Read the value through the cache (the method runs only on a miss)."""
        ...

    def key_for(self, **names: Any) -> str:
        """The cache key for these template names."""
        ...

    def invalidate(self, **names: Any) -> Awaitable[None]:
        """Remove the entry for these template names from every tier."""
        ...


class AsyncCachedFunction(Protocol[P, R_co]):
    """What ``@async_cache.cached(...)`` returns for an ``async def``: awaiting a call gives
    the cached (awaited) result; ``invalidate`` is awaited too."""

    @property
    def __wrapped__(self) -> Callable[P, Awaitable[R_co]]:
        """The undecorated coroutine function (the loader)."""
        ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R_co]:
        """Read the value through the cache (the function runs only on a miss)."""
        ...

    def key_for(self, **names: Any) -> str:
        """The cache key for these template names."""
        ...

    def invalidate(self, **names: Any) -> Awaitable[None]:
        """Remove the entry for these template names from every tier."""
        ...

    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> AsyncCachedFunction[P, R_co]: ...

    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None
    ) -> BoundAsyncCachedFunction[R_co]: ...

    def __get__(
        self, instance: object | None, owner: type[Any] | None = None
    ) -> AsyncCachedFunction[P, R_co] | BoundAsyncCachedFunction[R_co]:
        """The function on a class, a bound method on an instance."""
        ...


def function_name(fn: Callable[..., Any]) -> str:
    """How errors name a decorated callable: its qualified name, or its repr for one without
    (a ``functools.partial``, an object with ``__call__``)."""
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else repr(fn)


def check_cacheable(fn: Callable[..., Any], *, asynchronous: bool) -> None:
    """Refuse, at decoration time, a function whose result cannot be cached as a value: a
    generator (its result is consumed once), or a function of the other kind than the
    cache (a coroutine's result must be awaited; a sync chain would block the event loop
    on a miss, and an async chain cannot answer a sync caller)."""
    name = function_name(fn)
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        kind = "an async generator" if inspect.isasyncgenfunction(fn) else "a generator"
        raise TypeError(
            f"cannot cache {name}: it is {kind} function, whose result can be iterated only "
            "once; return a list (or a tuple) instead and cache that"
        )
    is_coroutine = inspect.iscoroutinefunction(fn)
    if is_coroutine and not asynchronous:
        raise TypeError(
            f"cannot cache {name} with a TieredCache: it is an async def, and the sync chain "
            "would cache the coroutine object (and block the event loop on a miss); use an "
            "AsyncTieredCache (tiered_cache.AsyncTieredCache.from_config(...)) for async code"
        )
    if asynchronous and not is_coroutine:
        raise TypeError(
            f"cannot cache {name} with an AsyncTieredCache: it is not an async def; use a "
            "TieredCache for sync functions (both can be built from one settings file)"
        )


def template_fields(template: str) -> list[str]:
    """The names a key template refers to: ``"tweet:{tweet_id}"`` -> ``["tweet_id"]``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise KeyTemplateError(f"key template {template!r} is malformed: {exc}") from None
    names: list[str] = []
    previous: str | None = None
    for literal, field, _, _ in parsed:
        if ESCAPE in literal:
            raise KeyTemplateError(
                f"key template {template!r}: a backslash is the escape character of keys; "
                "use another separator"
            )
        if previous is not None and not literal and field is not None:
            raise KeyTemplateError(
                f"key template {template!r}: {{{previous}}} and {{{field}}} need text between "
                "them, or two different calls could share one key"
            )
        previous = field
        if field is None:
            continue
        if not field.isidentifier():
            raise KeyTemplateError(
                f"key template {template!r}: {{{field}}} must be a parameter name"
            )
        if field not in names:
            names.append(field)
    if not names:
        raise KeyTemplateError(
            f"key template {template!r} names no parameter: every call would share one key"
        )
    return names


#: The prefix of the names the generated key function and wrapper use beside the function's
#: parameters (``__tc_key``, ``__tc_value``, ``__tc_default0``, ...).
GENERATED = "__tc_"


def _defaults_inspect_cannot_see(fn: Callable[..., Any]) -> list[str]:
    """The parameters of ``fn`` whose default is ``inspect.Parameter.empty`` itself: inspect
    reads them as having none, so the generated functions (made from ``inspect.signature``)
    would make them required, and a call leaving them out would fail where ``fn`` answers."""
    target = inspect.unwrap(fn)
    if not isinstance(target, types.FunctionType):
        return []
    code = target.__code__
    names = code.co_varnames[: code.co_argcount]  # the positional ones, posonly first
    defaults = target.__defaults__ or ()
    hidden = [
        name
        for name, default in zip(names[len(names) - len(defaults) :], defaults, strict=True)
        if default is inspect.Parameter.empty
    ]
    hidden += [
        name
        for name, default in (target.__kwdefaults__ or {}).items()
        if default is inspect.Parameter.empty
    ]
    return hidden


def compile_key_function(fn: Callable[..., Any], template: str) -> Callable[..., str]:
    """A function taking ``fn``'s arguments and returning the filled template.

    It is generated with ``fn``'s own parameter list, so Python's C-level argument binding
    maps the call to names: binding with ``inspect.Signature.bind`` on every call would cost
    more than the cache hit it is in front of.
    """
    fields = template_fields(template)
    signature = inspect.signature(fn)
    # The generated functions' own names: a parameter of one of them was overwritten before
    # the call (the function got the chain's MISSING, and its result was cached) or broke
    # the generated source.
    own = [name for name in signature.parameters if name.startswith(GENERATED)]
    if own:
        raise KeyTemplateError(
            f"parameter {own[0]} of {function_name(fn)}: names starting with {GENERATED} are "
            "the generated wrapper's own; rename it"
        )
    hidden = _defaults_inspect_cannot_see(fn)
    if hidden:
        raise KeyTemplateError(
            f"parameter {hidden[0]} of {function_name(fn)}: its default is "
            "inspect.Parameter.empty, which inspect cannot tell from no default; use another "
            "marker (a module-level object())"
        )
    unknown = [name for name in fields if name not in signature.parameters]
    if unknown:
        raise KeyTemplateError(
            f"key template {template!r} of {function_name(fn)} names {', '.join(unknown)}, "
            f"which {'is' if len(unknown) == 1 else 'are'} not among its parameters "
            f"({', '.join(signature.parameters) or 'none'})"
        )
    variadic = [
        name
        for name in fields
        if signature.parameters[name].kind
        in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if variadic:
        raise KeyTemplateError(
            f"key template {template!r} of {function_name(fn)}: {', '.join(variadic)} "
            "is a *args/**kwargs parameter; name a plain parameter instead"
        )
    namespace: dict[str, Any] = {}
    parameters, _ = _render_parameters(signature, namespace)
    source = f"def key_for({parameters}):\n    return {_as_fstring(template, namespace)}\n"
    exec(source, namespace)  # the source is built from parameter names only
    return cast(Callable[..., str], namespace["key_for"])


def _render_parameters(
    signature: inspect.Signature, namespace: dict[str, Any], leading: str | None = None
) -> tuple[str, str]:
    """``(parameter list, call arguments)`` as source text for a function that takes exactly
    the parameters of ``signature`` and passes them on; defaults go into ``namespace``.

    ``leading``: a parameter of the generated function's own before them, positional-only (a
    ``**kwargs`` of the function takes any keyword, that name too: passed on, it was given
    twice)."""
    rendered: list[str] = [] if leading is None else [leading]
    passed: list[str] = []
    seen_keyword_only = False
    previous_kind: inspect._ParameterKind | None = (
        None if leading is None else inspect.Parameter.POSITIONAL_ONLY
    )
    for index, parameter in enumerate(signature.parameters.values()):
        kind = parameter.kind
        name = parameter.name
        if previous_kind is inspect.Parameter.POSITIONAL_ONLY and kind is not previous_kind:
            rendered.append("/")
        if kind is inspect.Parameter.KEYWORD_ONLY and not seen_keyword_only:
            rendered.append("*")
        text = name
        if kind is inspect.Parameter.VAR_POSITIONAL:
            text = "*" + name
            passed.append("*" + name)
            seen_keyword_only = True
        elif kind is inspect.Parameter.VAR_KEYWORD:
            text = "**" + name
            passed.append("**" + name)
        elif kind is inspect.Parameter.KEYWORD_ONLY:
            seen_keyword_only = True
            passed.append(f"{name}={name}")
        else:
            passed.append(name)
        if parameter.default is not inspect.Parameter.empty:
            namespace[f"__tc_default{index}"] = parameter.default
            text += f"=__tc_default{index}"
        rendered.append(text)
        previous_kind = kind
    if previous_kind is inspect.Parameter.POSITIONAL_ONLY:
        rendered.append("/")
    return ", ".join(rendered), ", ".join(passed)


class _ReaderSlot:
    """The chain's ``l1_hit`` as a generated wrapper reads it (set by ``follow_l1_hit``)."""

    __slots__ = ("__weakref__", "reader")

    reader: Callable[[Any], Any]


def _compile_wrapper(
    fn: Callable[..., Any],
    template: str,
    cache: CachedReads | AsyncCachedReads,
    lifetime: float | None,
    *,
    asynchronous: bool = False,
) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    """The cached function, generated with ``fn``'s own parameters, and its second half.

    One Python frame on a hit: the key is an f-string over the parameters, then the chain's
    plain-hit reader (``cache.l1_hit``, a compiled call). It changes while the bus is down;
    the chain sets it on a :class:`_ReaderSlot` of the wrapper's own whenever it does
    (``follow_l1_hit``): reading that slot costs less than reading the chain's attribute on
    every call. Only when the reader has no plain hit does the wrapper call the second half,
    ``rest(key, <fn's parameters>)``: the general L1 lookup, then the rest of ``get`` with
    ``fn`` as the loader. A generic ``*args, **kwargs`` wrapper calling a
    key function would pack the arguments and add a frame, which is as much as the whole L1
    hit costs; and the loader's lambda lives in ``rest``, so that a hit does not pay for the
    cells it closes over. The async wrapper is one function (``rest`` is returned as None).
    """
    compile_key_function(fn, template)  # checks the template against the parameters
    reader = _ReaderSlot()
    cache.follow_l1_hit(reader)
    namespace: dict[str, Any] = {
        "__tc_fn": fn,
        "__tc_hit": reader,
        "__tc_not_fresh": NOT_FRESH,
        "__tc_lookup": cache.lookup_l1,
        "__tc_slow": cache.get_after_l1,
        "__tc_ttl": lifetime,
        "__tc_missing": MISSING,
        "__tc_refresh": REFRESH_DUE,
        "__tc_state": ReadState,
        "__tc_type": type,  # a parameter named ``type`` would shadow the builtin
    }
    parameters, arguments = _render_parameters(inspect.signature(fn), namespace)
    key = _as_fstring(template, namespace)
    # ``__tc_read = __tc_hit.reader`` then a call, not ``__tc_hit.reader(...)``: the reader is
    # not a method, and CPython specializes an attribute load but not a method load of it.
    if asynchronous:
        # The slow half awaited: the L1 hit stays a plain call, and the loader lambda returns
        # the coroutine the chain awaits once.
        source = (
            f"async def wrapper({parameters}):\n"
            f"    __tc_key = {key}\n"
            "    __tc_read = __tc_hit.reader\n"
            "    __tc_value = __tc_read(__tc_key)\n"
            "    if __tc_value is __tc_not_fresh:\n"
            "        __tc_value = __tc_lookup(__tc_key)\n"
            "        if (__tc_value is __tc_missing or __tc_value is __tc_refresh\n"
            "                or __tc_type(__tc_value) is __tc_state):\n"
            "            return await __tc_slow(__tc_key,\n"
            f"                                   lambda: __tc_fn({arguments}),\n"
            "                                   __tc_ttl, __tc_value)\n"
            "    return __tc_value\n"
        )
        exec(source, namespace)  # built from parameter names and the checked template only
        return cast(Callable[..., Any], namespace["wrapper"]), None
    # The key positional-only: a **kwargs of fn's may hold a keyword of that name.
    rest_parameters, _ = _render_parameters(inspect.signature(fn), namespace, "__tc_key")
    source = (
        f"def __tc_rest({rest_parameters}):\n"
        "    __tc_value = __tc_lookup(__tc_key)\n"
        "    if (__tc_value is __tc_missing or __tc_value is __tc_refresh\n"
        "            or __tc_type(__tc_value) is __tc_state):\n"
        f"        return __tc_slow(__tc_key, lambda: __tc_fn({arguments}),\n"
        "                         __tc_ttl, __tc_value)\n"
        "    return __tc_value\n"
        f"def wrapper({parameters}):\n"
        f"    __tc_key = {key}\n"
        "    __tc_read = __tc_hit.reader\n"
        "    __tc_value = __tc_read(__tc_key)\n"
        "    if __tc_value is __tc_not_fresh:\n"
        f"        return __tc_rest(__tc_key, {arguments})\n"
        "    return __tc_value\n"
    )
    exec(source, namespace)  # built from parameter names and the checked template only
    return cast(Callable[..., Any], namespace["wrapper"]), namespace["__tc_rest"]


def _hit_call(
    fn: Callable[..., Any],
    template: str,
    wrapper: Callable[..., Any],
    rest: Callable[..., Any],
    cache: CachedReads,
) -> HitCall | None:
    """The generated sync ``wrapper`` with its plain hits answered in C (``_hitcall.c``):
    for a call of positional arguments alone whose template values are each an exact
    ``str`` or ``int``, the key is built and the chain's reader called without a Python
    frame; any other call is the wrapper's. None when the C type is not built, or when no
    call could take that path: a template with a conversion or a format spec, more than eight
    fields or a field among the first eight parameters, or a keyword-only parameter without
    a default (a call without keywords would be refused by the wrapper, never answered)."""
    if not HIT_CALL_BUILT:
        return None
    parts = _parts(template)
    if any(field is not None and (spec or conversion) for _, field, spec, conversion, _ in parts):
        return None
    parameters = list(inspect.signature(fn).parameters.values())
    positional = [
        parameter.name
        for parameter in parameters
        if parameter.kind
        in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required = sum(
        1
        for parameter in parameters
        if parameter.default is inspect.Parameter.empty
        and parameter.kind
        in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    if any(
        parameter.kind is inspect.Parameter.KEYWORD_ONLY
        and parameter.default is inspect.Parameter.empty
        for parameter in parameters
    ):
        return None
    fields = [(literal, field, ender) for literal, field, _, _, ender in parts if field]
    trailing = "".join(literal for literal, field, _, _, _ in parts if field is None)
    if not fields or len(fields) > _HIT_CALL_LIMIT:
        return None
    indexes = []
    for _, field, _ in fields:
        if field not in positional:
            return None  # a keyword-only parameter: never in a positional call
        indexes.append(positional.index(field))
    least = max(required, max(indexes) + 1)
    most = min(len(positional), _HIT_CALL_LIMIT)
    if least > most:
        return None
    call = HitCall(
        wrapper,
        rest,
        NOT_FRESH,
        ESCAPE,
        (*(literal for literal, _, _ in fields), trailing),
        tuple(indexes),
        tuple(ender for _, _, ender in fields),
        least,
        most,
    )
    cache.follow_l1_hit(call)
    return call


#: At most this many template fields and positional arguments are handled in C.
_HIT_CALL_LIMIT = 8


def _parts(template: str) -> list[tuple[str, str | None, str, str | None, str | None]]:
    """``(literal, field, spec, conversion, ender)`` per part of ``template``; ``ender`` is the
    character that ends the field's value: the first one of the literal text after it (the
    template was checked to have some between fields). The last field needs none: only fixed
    text follows it."""
    parsed = list(string.Formatter().parse(template))
    last = max((i for i, part in enumerate(parsed) if part[1] is not None), default=-1)
    parts = []
    for index, (literal, field, spec, conversion) in enumerate(parsed):
        following = parsed[index + 1][0] if index < last else ""
        parts.append((literal, field, spec or "", conversion, following[:1] or None))
    return parts


_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}

#: Types whose text is their value: a key part of theirs is taken without a check.
_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})

#: A memory address as Python's default repr shows it (``<Req object at 0x7f3a...>``; also
#: functions and bound methods). CPython reuses an address once its object is freed, so a key
#: holding one would give another object the cached value of a dead one.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")


def _unordered(value: Any) -> Set[Any] | Mapping[Any, Any] | None:
    """The first set or mapping in ``value`` or the lists and tuples it holds, or None."""
    pending, seen = [value], set()
    while pending:
        item = pending.pop()
        if isinstance(item, Set | Mapping):
            return item
        if isinstance(item, list | tuple) and id(item) not in seen:
            seen.add(id(item))  # a list may hold itself
            pending.extend(item)
    return None


def _key_part_text(
    template: str, field: str, conversion: str | None, spec: str
) -> Callable[[Any], str]:
    """A function that returns the text of a value of ``field`` in the key, converted and
    formatted as ``str.format`` would, and raises ``TypeError`` if that text holds a memory
    address, or the value is (or its lists and tuples hold) a set or a mapping. The key
    builders call it only for a value whose type is not in ``_PLAIN``, and use the text it
    returns: a value is turned into text once, so the text checked is the text keyed (a
    ``__format__`` or ``__repr__`` need not give the same text twice)."""

    def text_of(value: Any) -> str:
        unordered = _unordered(value)
        if unordered is not None:
            raise TypeError(
                f"key template {template!r}: {field} holds a {type(unordered).__name__}, whose "
                "text lists its items in an order its value does not fix (a set's follows the "
                "process's hash seed, a mapping's how it was filled), so equal values would "
                "make different keys and an invalidation from another process miss the entry; "
                "pass tuple(sorted(...)) of it (of its items, for a mapping) instead"
            )
        text = format(_CONVERSIONS[conversion](value) if conversion else value, spec)
        if _ADDRESS.search(text):
            raise TypeError(
                f"key template {template!r}: {field}={text!r} ({type(value).__name__}) shows "
                "a memory address, which Python reuses once the object is freed, so another "
                "object could be given its cached value; give the class a __str__ that "
                "identifies the object (e.g. its id), or pass the identifying value itself as "
                "a parameter (templates name parameters, not attributes)"
            )
        return text

    return text_of


def _as_fstring(template: str, namespace: dict[str, Any]) -> str:
    """The template as f-string source (several times faster than ``str.format``).

    Literal text goes in as variables of ``namespace``, so no quoting or escaping of user text
    reaches the generated source; fields were checked to be parameter names. Each value but
    the last is escaped inline with ``str.replace`` (no call of a Python function: this runs
    on every cache hit).
    """
    namespace["__tc_str"] = str
    # The builtins the key calls, under names of the namespace: a parameter of the function
    # named format, repr, str or ascii (``def export(self, id, format="csv")``) is a local of
    # the generated code and would be called in their place.
    namespace["__tc_format"] = format
    namespace.update({f"__tc_{call.__name__}": call for call in _CONVERSIONS.values()})
    namespace["__tc_plain"] = _PLAIN
    namespace["__tc_escape"] = ESCAPE
    namespace["__tc_escaped_escape"] = ESCAPE + ESCAPE
    parts: list[str] = []
    for index, (literal, field, spec, conversion, ender) in enumerate(_parts(template)):
        if literal:
            namespace[f"__tc_text{index}"] = literal
            parts.append(f"{{__tc_text{index}}}")
        if field is None:
            continue
        if "{" in spec or "}" in spec:
            raise KeyTemplateError(f"key template {template!r}: nested fields are not supported")
        # A plain value is formatted by the f-string itself (one membership test on a hit);
        # any other is turned into its checked text by __tc_part (once: see _key_part_text).
        namespace[f"__tc_part{index}"] = _key_part_text(template, field, conversion, spec)
        other = f"__tc_part{index}({field})"
        plain = f"{field}.__class__ in __tc_plain"
        if conversion or spec:
            namespace[f"__tc_spec{index}"] = spec
            converted = (
                f"__tc_{_CONVERSIONS[conversion].__name__}({field})" if conversion else field
            )
            text = f"(__tc_format({converted}, __tc_spec{index}) if {plain} else {other})"
        elif ender is None:
            text = f"({field} if {plain} else {other})"  # a text formats as itself
        else:
            # A str (the usual key part) skips the format() call: ~50 ns on every hit.
            text = (
                f"({field} if {field}.__class__ is __tc_str else "
                f"__tc_format({field}, '') if {plain} else {other})"
            )
        if ender is None:  # formatted as str.format would: nothing to escape
            parts.append(f"{{{text}}}")
            continue
        namespace[f"__tc_ender{index}"] = ender
        namespace[f"__tc_escaped{index}"] = ESCAPE + ender
        text += (
            f".replace(__tc_escape, __tc_escaped_escape)"
            f".replace(__tc_ender{index}, __tc_escaped{index})"
        )
        parts.append(f"{{{text}}}")
    return 'f"' + "".join(parts) + '"'


def render_key(template: str, names: dict[str, Any]) -> str:
    """``template`` filled with ``names``, each value escaped as the decorated function's own
    key is (see the module's docstring)."""
    rendered: list[str] = []
    for literal, field, spec, conversion, ender in _parts(template):
        rendered.append(literal)
        if field is None:
            continue
        value = names[field]
        if value.__class__ in _PLAIN:
            text = format(_CONVERSIONS[conversion](value) if conversion else value, spec)
        else:
            text = _key_part_text(template, field, conversion, spec)(value)
        rendered.append(text if ender is None else escape_part(text, ender))
    return "".join(rendered)


def cached(
    cache: CachedReads | AsyncCachedReads, key: str, *, ttl: DurationLike | None = None
) -> Callable[[Callable[P, R]], Any]:
    """Decorate a function so its results are read through ``cache`` under ``key``.

    The template is checked against the function's parameters at decoration time, and so is
    the function's kind: an ``async def`` needs an :class:`~tiered_cache.AsyncTieredCache`
    (which caches the awaited result), a plain function a :class:`~tiered_cache.TieredCache`;
    generator functions are refused. The wrapper gains ``invalidate(**names)`` (remove the
    entry from every tier; awaited on an async chain), ``key_for(**names)`` and
    ``__wrapped__``. It may be written above ``@classmethod`` or ``@staticmethod`` as well as
    below.
    """
    from .async_chain import AsyncTieredCache

    fields = template_fields(key)
    lifetime = check_ttl(ttl)
    asynchronous = isinstance(cache, AsyncTieredCache)

    def decorate(fn: Callable[P, R]) -> Any:
        if isinstance(fn, (classmethod, staticmethod)):
            # Written above @classmethod or @staticmethod: cache the function inside and wrap
            # the result again, so either order of the two decorators means the same.
            return type(fn)(decorate(fn.__func__))
        check_cacheable(fn, asynchronous=asynchronous)
        generated, rest = _compile_wrapper(fn, key, cache, lifetime, asynchronous=asynchronous)
        # Refused here, not on the call that collides: another function's key is any caller's
        # to ask for through a value that holds the rest of that key.
        claim(cache, key, _parts(key), function_name(fn))
        functools.update_wrapper(generated, fn)  # its repr and tracebacks name fn
        answered = (
            None if rest is None else _hit_call(fn, key, generated, rest, cast(CachedReads, cache))
        )
        wrapper = generated if answered is None else functools.update_wrapper(answered, fn)
        # A template name the function has a default for may be left out, as in a call.
        parameters = inspect.signature(fn).parameters
        defaults = {
            name: parameters[name].default
            for name in fields
            if parameters[name].default is not inspect.Parameter.empty
        }

        def key_for(**names: Any) -> str:
            names = {**defaults, **names}
            missing = [name for name in fields if name not in names]
            extra = [name for name in names if name not in fields]
            if missing or extra:
                problems = []
                if missing:
                    problems.append(f"missing {', '.join(missing)}")
                if extra:
                    problems.append(f"unknown {', '.join(extra)}")
                raise KeyTemplateError(
                    f"key template {key!r} of {function_name(fn)} takes {', '.join(fields)}: "
                    + "; ".join(problems)
                )
            return render_key(key, names)

        if asynchronous:
            reads = cast(AsyncCachedReads, cache)

            async def invalidate_async(**names: Any) -> None:
                await reads.invalidate(key_for(**names))

            wrapper.invalidate = invalidate_async  # type: ignore[attr-defined]
        else:
            sync_reads = cast(CachedReads, cache)

            def invalidate(**names: Any) -> None:
                sync_reads.invalidate(key_for(**names))

            wrapper.invalidate = invalidate  # type: ignore[attr-defined]
        wrapper.key_for = key_for  # type: ignore[attr-defined]
        # The generated function has exactly fn's parameters and the two helpers just set.
        return wrapper

    return decorate
