"""Which key templates of one cache could make the same key: the owner of the rule that two
decorated functions of a cache never share a key unless their templates are the same.

A decorated function's key is its template with each value escaped as
:func:`tiered_cache.decorator.render_key` does: every value but the last has a backslash and
the character that ends it escaped, the last is left as ``str.format`` writes it (the key a
DynamoDB source's ``key_template`` reads). Within one template that is unambiguous; across two it
is not: ``"user:{uid}"`` makes ``user:42:secrets`` for ``uid="42:secrets"``, which is what
``"user:{uid}:secrets"`` makes for ``uid="42"``, so a caller choosing ``uid`` was answered with
another function's cached value (and a load of it filled the other function's key).

Each template's keys form a regular language (literal characters; an escaped value; any text
for the last value); :func:`shared_key` walks the product of two of them to find a key both
can make. :func:`claim` keeps, per cache, the templates its functions were decorated with:
per chain object, not per namespace (two chains of one namespace over one Redis are not
checked against each other; why, in docs/keys.md, "Templates of one cache").
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass

from .errors import KeyTemplateError
from .keys import ESCAPE

#: A step of a template: a literal character, or a value with the character that ends it
#: (None for the last value, which is not escaped).
Token = tuple[str, str | None]
LITERAL, VALUE = "literal", "value"

#: Characters tried for "any character but these" when an example key is written.
_SAMPLES = "x0y1z2_-"


#: A template's parts as the decorator reads them (``tiered_cache.decorator._parts``):
#: ``(literal, field, spec, conversion, ender)``.
Part = tuple[str, str | None, str, str | None, str | None]


def tokens(parts: list[Part]) -> tuple[Token, ...]:
    """The steps of a template from its parts; field names, conversions and format specs do
    not change which keys it can make (a value's text is any text)."""
    steps: list[Token] = []
    for literal, field, _, _, ender in parts:
        steps += [(LITERAL, character) for character in literal]
        if field is not None:
            steps.append((VALUE, ender))
    return tuple(steps)


@dataclass(frozen=True)
class _Class:
    """A set of characters: exactly ``only``, or any character but those of ``besides``."""

    only: str | None = None
    besides: frozenset[str] = frozenset()

    def meet(self, other: _Class) -> str | None:
        """A character of both sets, or None."""
        if self.only is not None and other.only is not None:
            return self.only if self.only == other.only else None
        if self.only is not None:
            return None if self.only in other.besides else self.only
        if other.only is not None:
            return None if other.only in self.besides else other.only
        return next((c for c in _SAMPLES if c not in self.besides | other.besides), None)


#: A state of a template's automaton: the step it is at, and whether an escaped value has just
#: read its backslash (the next character must be a backslash or the value's end character).
State = tuple[int, bool]


def _moves(steps: tuple[Token, ...], state: State) -> list[tuple[_Class, State]]:
    """The characters ``state`` reads and the state each leads to."""
    index, escaping = state
    if index == len(steps):
        return []
    kind, text = steps[index]
    if kind == LITERAL:
        assert text is not None
        return [(_Class(only=text), (index + 1, False))]
    if text is None:  # the last value: any text
        return [(_Class(), (index, False))]
    if escaping:
        return [(_Class(only=ESCAPE), (index, False)), (_Class(only=text), (index, False))]
    return [
        (_Class(besides=frozenset((ESCAPE, text))), (index, False)),
        (_Class(only=ESCAPE), (index, True)),
    ]


def _closure(steps: tuple[Token, ...], state: State) -> list[State]:
    """``state`` and the states it reaches reading nothing (a value may end at any point
    between escapes)."""
    found = [state]
    index, escaping = state
    while not escaping and index < len(steps) and steps[index][0] == VALUE:
        index += 1
        found.append((index, False))
    return found


def shared_key(a: tuple[Token, ...], b: tuple[Token, ...]) -> str | None:
    """A key both templates (their :func:`tokens`) can make, the shortest, or None when they
    make no key alike."""
    start = [(x, y) for x in _closure(a, (0, False)) for y in _closure(b, (0, False))]
    seen: dict[tuple[State, State], tuple[tuple[State, State], str] | None] = dict.fromkeys(start)
    queue = deque(start)
    while queue:
        pair = queue.popleft()
        x, y = pair
        if x == (len(a), False) and y == (len(b), False):
            text = []
            while (back := seen[pair]) is not None:
                pair, character = back
                text.append(character)
            return "".join(reversed(text))
        for class_a, next_a in _moves(a, x):
            for class_b, next_b in _moves(b, y):
                both = class_a.meet(class_b)
                if both is None:
                    continue
                for after in ((p, q) for p in _closure(a, next_a) for q in _closure(b, next_b)):
                    if after not in seen:
                        seen[after] = ((x, y), both)
                        queue.append(after)
    return None


class _Claims:
    """The templates of one cache's decorated functions: each template's steps, and the name of
    the first function decorated with it."""

    def __init__(self) -> None:
        self.by_steps: dict[tuple[Token, ...], tuple[str, str]] = {}


_claims: weakref.WeakKeyDictionary[object, _Claims] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def claim(cache: object, template: str, parts: list[Part], function: str) -> None:
    """Record that ``function`` of ``cache`` makes its keys with ``template``, or
    :class:`KeyTemplateError` if another function of ``cache`` has a different template that
    can make one of the same keys. The same template twice (two readers of one entry, a
    closure decorated for each instance of a class) shares its keys as meant."""
    steps = tokens(parts)
    with _lock:
        claims = _claims.setdefault(cache, _Claims())
        if steps in claims.by_steps:
            return
        for other, (other_template, other_function) in claims.by_steps.items():
            example = shared_key(steps, other)
            if example is not None:
                raise KeyTemplateError(
                    f"key template {template!r} of {function} can make the same keys as "
                    f"{other_template!r} of {other_function} (both make {example!r}), so a "
                    "call of one could be answered with the other's cached value: end each "
                    "template with fixed text after its last field ('user:{uid}:profile' and "
                    "'user:{uid}:secrets'), or give each a prefix of its own"
                )
        claims.by_steps[steps] = (template, function)
