"""``@cache.cached(key="tweet:{tweet_id}", ttl="1h")`` for repository functions and methods."""

from __future__ import annotations

import functools
import inspect
import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .errors import KeyTemplateError
from .tier import MISSING
from .units import parse_duration

if TYPE_CHECKING:
    from .chain import TieredCache

from .chain import _REFRESH_DUE

F = TypeVar("F", bound=Callable[..., Any])


def template_fields(template: str) -> list[str]:
    """The names a key template refers to: ``"tweet:{tweet_id}"`` -> ``["tweet_id"]``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise KeyTemplateError(f"key template {template!r} is malformed: {exc}") from None
    names: list[str] = []
    for _, field, _, _ in parsed:
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


def compile_key_function(fn: Callable[..., Any], template: str) -> Callable[..., str]:
    """A function taking ``fn``'s arguments and returning the filled template.

    It is generated with ``fn``'s own parameter list, so Python's C-level argument binding
    maps the call to names: binding with ``inspect.Signature.bind`` on every call would cost
    more than the cache hit it is in front of.
    """
    fields = template_fields(template)
    signature = inspect.signature(fn)
    unknown = [name for name in fields if name not in signature.parameters]
    if unknown:
        raise KeyTemplateError(
            f"key template {template!r} of {fn.__qualname__} names {', '.join(unknown)}, "
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
            f"key template {template!r} of {fn.__qualname__}: {', '.join(variadic)} "
            "is a *args/**kwargs parameter; name a plain parameter instead"
        )
    namespace: dict[str, Any] = {}
    rendered: list[str] = []
    seen_keyword_only = False
    previous_kind = None
    for index, parameter in enumerate(signature.parameters.values()):
        kind = parameter.kind
        if previous_kind is inspect.Parameter.POSITIONAL_ONLY and kind is not previous_kind:
            rendered.append("/")
        if kind is inspect.Parameter.KEYWORD_ONLY and not seen_keyword_only:
            rendered.append("*")
        text = parameter.name
        if kind is inspect.Parameter.VAR_POSITIONAL:
            text = "*" + text
            seen_keyword_only = True
        elif kind is inspect.Parameter.VAR_KEYWORD:
            text = "**" + text
        if kind is inspect.Parameter.KEYWORD_ONLY:
            seen_keyword_only = True
        if parameter.default is not inspect.Parameter.empty:
            namespace[f"__tc_default{index}"] = parameter.default
            text += f"=__tc_default{index}"
        rendered.append(text)
        previous_kind = kind
    if previous_kind is inspect.Parameter.POSITIONAL_ONLY:
        rendered.append("/")
    source = f"def key_for({', '.join(rendered)}):\n    return {_as_fstring(template, namespace)}\n"
    exec(source, namespace)  # the source is built from parameter names only
    return cast(Callable[..., str], namespace["key_for"])


def _as_fstring(template: str, namespace: dict[str, Any]) -> str:
    """The template as f-string source (several times faster than ``str.format``).

    Literal text goes in as variables of ``namespace``, so no quoting or escaping of user text
    reaches the generated source; fields were checked to be parameter names.
    """
    parts: list[str] = []
    for index, (literal, field, spec, conversion) in enumerate(string.Formatter().parse(template)):
        if literal:
            namespace[f"__tc_text{index}"] = literal
            parts.append(f"{{__tc_text{index}}}")
        if field is None:
            continue
        if spec and ("{" in spec or "}" in spec):
            raise KeyTemplateError(f"key template {template!r}: nested fields are not supported")
        piece = field
        if conversion:
            piece += f"!{conversion}"
        if spec:
            namespace[f"__tc_spec{index}"] = spec
            piece += f":{{__tc_spec{index}}}"
        parts.append(f"{{{piece}}}")
    return 'f"' + "".join(parts) + '"'


def cached(cache: TieredCache, key: str, *, ttl: float | str | None = None) -> Callable[[F], F]:
    """Decorate a function so its results are read through ``cache`` under ``key``.

    The template is checked against the function's parameters at decoration time. The
    wrapper gains ``invalidate(**names)`` (remove the entry from every tier),
    ``key_for(**names)`` and ``__wrapped__``.
    """
    fields = template_fields(key)
    lifetime = None if ttl is None else parse_duration(ttl)

    def decorate(fn: F) -> F:
        key_of = compile_key_function(fn, key)
        lookup, slow = cache._lookup_l1, cache._get_slow
        refresh_due = _REFRESH_DUE

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cache_key = key_of(*args, **kwargs)
            value = lookup(cache_key)
            if value is MISSING or value is refresh_due:
                return slow(cache_key, lambda: fn(*args, **kwargs), lifetime, value is refresh_due)
            return value

        def key_for(**names: Any) -> str:
            missing = [name for name in fields if name not in names]
            extra = [name for name in names if name not in fields]
            if missing or extra:
                problems = []
                if missing:
                    problems.append(f"missing {', '.join(missing)}")
                if extra:
                    problems.append(f"unknown {', '.join(extra)}")
                raise KeyTemplateError(
                    f"key template {key!r} of {fn.__qualname__} takes {', '.join(fields)}: "
                    + "; ".join(problems)
                )
            return key.format(**names)

        def invalidate(**names: Any) -> None:
            cache.invalidate(key_for(**names))

        wrapper.key_for = key_for  # type: ignore[attr-defined]
        wrapper.invalidate = invalidate  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate
