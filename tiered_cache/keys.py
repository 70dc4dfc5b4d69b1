"""The key layout: how a namespace and the parts of a key are joined without ambiguity.

Joining parts with a separator is ambiguous as soon as a part may hold the separator:
namespaces ``app`` and ``app:v2`` would share ``app:v2:user:1``, and the key template
``doc:{owner}:{name}`` would give ``("alice", "secret:plan")`` and ``("alice:secret", "plan")``
the same key. Each part is therefore escaped: a backslash and every separator character are
preceded by a backslash, so the first unescaped separator always ends the part. Parts without
those characters (``tweets``, a UUID, a number) are unchanged. See docs/keys.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import KeyTooLong, UnencodableKey
from .logs import key_hash

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


#: What starts a lease's key (``{<Redis key>}:lease``, a Redis Cluster hash tag), and so no
#: namespace's prefix.
LEASE_OPENER = "{"


def namespace_prefix(namespace: str) -> str:
    """What a shared tier puts before each key of ``namespace``: ``"tweets:"``,
    ``"app\\:v2:"``; no namespace's prefix is the start of another's, nor starts as a lease's
    key does: a namespace's leading ``{`` is escaped too (unescaped, ``{tweets``'s key
    ``42}:lease`` was ``tweets``'s lease of ``42``)."""
    escaped = escape_part(namespace, NAMESPACE_SEPARATOR)
    if escaped.startswith(LEASE_OPENER):
        escaped = ESCAPE + escaped
    return escaped + NAMESPACE_SEPARATOR


def key_list(keys: Iterable[Any]) -> list[Any]:
    """A batch's ``keys`` as a list (``get_many``, ``lookup_many``, ``invalidate_many``, both
    faces); ``TypeError`` for one ``str`` or ``bytes`` given as the batch. Iterated, its
    characters were the keys: ``get_many("tweet:42")`` read the keys ``t``, ``w``, ``e``...,
    and ``invalidate_many("tweet:42")`` left ``tweet:42`` served everywhere. The message
    gives the text's length, never the text."""
    if isinstance(keys, str | bytes):
        raise TypeError(
            f"a batch of keys is an iterable of str, not one {type(keys).__name__} (of length "
            f"{len(keys)}): pass a list, e.g. [key]"
        )
    return list(keys)


#: The longest key, in characters, a chain sends to a tier that stores keys as UTF-8 (Redis):
#: such a key travels in every command that names it (a lease's script carries it twice) and
#: in the bus's message. A key of 40 MB, sent, timed out writing to the socket: counted as
#: Redis failing, its delete owed and never paid (each try timed out again), so every later
#: call of the process to Redis was refused behind that debt for good; and its message cut
#: every process off the bus (past a subscriber's output buffer limit, 32 MB by default).
#: 65,536 characters is at most 256 KiB as UTF-8: far above a real key (DynamoDB takes 2 KB),
#: far below what a server or the bus chokes on.
MAX_KEY_LENGTH = 65_536


def check_keys(keys: Iterable[Any], utf8_for: str | None = None) -> None:
    """Refuse a caller's key before any tier is asked: ``TypeError`` for a key that is not a
    ``str`` (an int id passed as it is), and with ``utf8_for`` (the chain's tiers that store
    keys as UTF-8, ``TierBase.utf8_keys``, named for the message)
    :class:`~tiered_cache.UnencodableKey` for one UTF-8 cannot encode (a lone surrogate: a
    path decoded with ``surrogateescape``) and :class:`~tiered_cache.KeyTooLong` for one
    longer than :data:`MAX_KEY_LENGTH`. A tier would fail on either and count that as its
    own failure (enough of them open its circuit breaker for every key); the caller's mistake
    is the caller's error, the same on every face and every call."""
    if type(keys) is list and _plain(keys, utf8_for is not None):
        return
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(
                f"cache keys are str, not {type(key).__name__} ({key!r}): "
                f"format it into the key, e.g. f'tweet:{{tweet_id}}'"
            )
        if utf8_for is None:
            continue
        if len(key) > MAX_KEY_LENGTH:
            raise KeyTooLong(
                f"cache key {key_hash(key)} (key_hash) has {len(key)} characters, and tier "
                f"{utf8_for} takes keys of at most {MAX_KEY_LENGTH}: hash a long key into a "
                "short one (e.g. hashlib.sha256 of it)"
            )
        if not key.isascii():  # a flag of the str: ASCII costs nothing
            try:
                key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _unencodable(key, exc, utf8_for) from None


def _plain(keys: list[Any], sent: bool) -> bool:
    """Whether every one of ``keys`` is a ``str`` of ASCII characters, checked in two C calls
    (a batch's keys nearly always are; ``join`` refuses anything but a ``str``), and, ``sent``
    to a tier storing keys as UTF-8, none longer than :data:`MAX_KEY_LENGTH` (a third call,
    only for a batch whose keys together are longer): no key then needs the loop's calls per
    key. False sends the batch through the loop, which names the key at fault."""
    try:
        joined = "".join(keys)
    except TypeError:
        return False
    if not joined.isascii():
        return False
    return not sent or len(joined) <= MAX_KEY_LENGTH or max(map(len, keys)) <= MAX_KEY_LENGTH


def _unencodable(key: str, exc: UnicodeEncodeError, tiers: str) -> UnencodableKey:
    """The error for ``key``: where the surrogate sits and the key's hash (as logs show it),
    never the key itself (a key may hold what should not reach an error report)."""
    return UnencodableKey(
        f"cache key {key_hash(key)} (key_hash; {len(key)} characters) holds "
        f"{_surrogate(key, exc)}, and tier {tiers} stores keys as UTF-8: {_DECODE_HINT}"
    )


_DECODE_HINT = "decode the bytes with errors='replace' or 'backslashreplace', not 'surrogateescape'"


def _surrogate(text: str, exc: UnicodeEncodeError) -> str:
    return (
        f"a lone surrogate (U+{ord(text[exc.start]):04X} at index {exc.start}), which UTF-8 "
        "cannot encode"
    )


def check_label(text: str, field: str) -> str:
    """``text``, or ValueError naming ``field`` if it is empty or UTF-8 cannot encode it.

    The one rule for a chain's namespace and its tiers' names, in code as in the settings:
    each labels every series the exporters show (a surrogate failed every Prometheus scrape),
    and a namespace prefixes every key a shared tier stores as UTF-8 (every key of it would
    fail there). The message never shows the text."""
    if not text:
        raise ValueError(f"the {field} is empty: give it some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the {field} holds {_surrogate(text, exc)}: {_DECODE_HINT}") from None
    return text


def check_namespace(namespace: str) -> str:
    """``namespace``, or ValueError (see :func:`check_label`)."""
    return check_label(namespace, "namespace")


def check_chain_labels(namespace: str, tier_names: Iterable[str]) -> str:
    """``namespace``, or ValueError naming the namespace or the first tier (``tiers[1].name``)
    whose name :func:`check_label` refuses or an earlier tier has (:func:`repeated_tier_name`):
    both chains check what they are built with."""
    check_namespace(namespace)
    names = list(tier_names)
    for index, name in enumerate(names):
        check_label(name, f"tiers[{index}].name")
    repeated = repeated_tier_name(names)
    if repeated is not None:
        index, why = repeated
        raise ValueError(f"tiers[{index}].name: {why}")
    return namespace


def repeated_tier_name(
    tier_names: Iterable[str], origins: Mapping[int, str] | None = None
) -> tuple[int, str] | None:
    """The first tier whose name an earlier tier of the chain has: its index and why that is
    refused, naming the earlier tier (never the name); None: each name is the chain's once.
    ``origins``: by a tier's index, what gave it its name, said after the earlier tier
    (``TIERED_CACHE_TIERS__0__KIND sets tiers[0].kind``): the settings' environment
    variables, which the path of the error, the later tier's, would not name.

    The one rule of tier names in a chain, in code (:func:`check_chain_labels`) as in the
    settings: a name labels its tier's series (``tier="redis"``), and two tiers of one name
    made one series of two, which Prometheus's ``register()`` refused only when it ran."""
    first: dict[str, int] = {}
    for index, name in enumerate(tier_names):
        earlier = first.setdefault(name, index)
        if earlier != index:
            told = [(origins or {}).get(at) for at in (earlier, index)]
            said = "; ".join(origin for origin in told if origin)
            return index, (
                f"tiers[{earlier}] has this name too{f' ({said})' if said else ''}: a tier's "
                "name labels its series, so each tier of a chain needs its own (a tier "
                "without a name takes its kind's)"
            )
    return None
