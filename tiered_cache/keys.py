"""The key layout: how a namespace and the parts of a key are joined without ambiguity.

Joining parts with a separator is ambiguous as soon as a part may hold the separator:
namespaces ``app`` and ``app:v2`` would share ``app:v2:user:1``, and the key template
``doc:{owner}:{name}`` would give ``("alice", "secret:plan")`` and ``("alice:secret", "plan")``
the same key. Each part is therefore escaped: a backslash and every separator character are
preceded by a backslash, so the first unescaped separator always ends the part. Parts without
those characters (``tweets``, a UUID, a number) are unchanged. See docs/keys.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: The escape character (escaped itself first).
ESCAPE = "\\"
#: What separates a shared tier's namespace from the key.
NAMESPACE_SEPARATOR = ":"


def escape_part(text: str, separators: Iterable[str]) -> str:
    """``text`` with ``\\`` and each character of ``separators`` preceded by a backslash."""
    text = text.replace(ESCAPE, ESCAPE + ESCAPE)
    for character in dict.fromkeys(separators):
        if character != ESCAPE:
            text = text.replace(character, ESCAPE + character)
    return text


def namespace_prefix(namespace: str) -> str:
    """What a shared tier puts before each key of ``namespace``: ``"tweets:"``,
    ``"app\\:v2:"``; no namespace's prefix is the start of another's."""
    return escape_part(namespace, NAMESPACE_SEPARATOR) + NAMESPACE_SEPARATOR


def check_keys(keys: Iterable[Any]) -> None:
    """Raise ``TypeError`` for a key that is not a ``str`` (an int id passed as it is): a
    caller's mistake, refused before any tier is asked -- a tier would fail on it, and count
    that as its own failure (enough of them open its circuit breaker for every key)."""
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(
                f"cache keys are str, not {type(key).__name__} ({key!r}): "
                f"format it into the key, e.g. f'tweet:{{tweet_id}}'"
            )
