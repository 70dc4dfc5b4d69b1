"""Hiding secrets in what is shown: URLs with passwords, settings with credentials, and the
values a config error refuses.

A URL such as ``redis://user:secret@host:6379/0`` is shown as ``redis://***@host:6379/0``
wherever a setting is shown (``repr``, ``str``, errors, logs, start-up lines): the whole
userinfo goes, the user too (an AWS access key id, a Redis ACL user). Passwords given as a
query parameter (``?password=secret``, ``?ssl_password=``, ``?auth_token=``) are hidden the
same way.

What a config error may show of the value it refuses, the one rule here: a value that is one
of the known choices; a URL, through :func:`redact_url` (:func:`shown_url`); a key template
with a placeholder (:func:`shown_template`); numbers. Text it does not recognise (an unknown
codec or kind, a duration it cannot read, an endpoint that is no URL, a key template with no
placeholder) may be a secret typed into the wrong field (a variable shifted by one, a line
off in a file), and every log that keeps the error would keep it: it is named by its field,
the choices it may take (:func:`unknown_value`) and its kind (:func:`refused`), never shown,
not even in part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: What replaces a secret.
MASK = "***"

# scheme://[user][:password]@rest -- the password is whatever lies between the first ':' after
# the scheme and the last '@' of the URL. Not of the authority as a URL parser reads it: a
# generated password (base64, an ElastiCache AUTH token) holds '/', '#' or '?', and written
# unencoded it ends the authority early, so the password's tail looked like a path or a query
# and was shown. An '@' that is not the credentials' (in a query) then hides the host too: a
# display may hide too much, never a password. The scheme is optional: "user:pass@host:6379"
# (the scheme left out, as tools that take "host:port" are given it) hides its password too.
_AUTHORITY = re.compile(
    r"^(?P<scheme>[^:/?#]+://)?(?P<authority>.*@[^/?#]*|[^/?#]*)(?P<rest>.*)$", re.S
)
# A query parameter whose name holds one of these words, not only is one: redis-py takes the
# TLS key's passphrase as ?ssl_password=, and a token may come as ?auth_token=. Its value runs
# to the next '&': redis-py reads the query with '&' alone between fields (Python's parse_qs),
# so a ';' is the password's own, and a '#' the user wrote in it begins a fragment only to a
# URL parser (ended there, the value's tail was shown).
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;][^=&;#]*(?:pass|secret|token|credential)[^=&;#]*=)[^&]*", re.I
)


def redact_url(url: str) -> str:
    """``url`` with its userinfo (user and password) and the secrets of its query replaced by
    ``***``."""
    match = _AUTHORITY.match(url)
    if match is None:  # the pattern matches any text; kept for the type checker
        return _QUERY_SECRET.sub(lambda found: found.group("name") + MASK, url)
    authority = match.group("authority")
    credentials, at, host = authority.rpartition("@")
    if at and credentials:
        # The whole userinfo: its user may be a secret too (an AWS access key id, the user
        # of a Redis ACL), and a lone one (redis://token@host) is often a token.
        authority = f"{MASK}@{host}"
    rest = _QUERY_SECRET.sub(lambda found: found.group("name") + MASK, match.group("rest"))
    return f"{match.group('scheme') or ''}{authority}{rest}"


# A URL inside a message (an error's text): a scheme, then everything up to a blank or a quote.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_IN_TEXT = re.compile(_SCHEME.pattern + r"[^\s\"'<>]+")


def redact_urls_in(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***`` (:func:`redact_url`):
    for messages written by others, such as botocore's, that quote a URL whole."""
    return _URL_IN_TEXT.sub(lambda found: redact_url(found.group()), text)


def redacted_repr_args(
    args: Iterable[tuple[str | None, Any]], url_fields: Iterable[str]
) -> Iterable[tuple[str | None, Any]]:
    """A pydantic model's ``__repr_args__`` with the URLs in ``url_fields`` redacted."""
    urls = frozenset(url_fields)
    for name, value in args:
        yield name, redact_url(value) if name in urls and isinstance(value, str) else value


def refused(value: object) -> str:
    """What a refused value is, for an error: its kind, never its text (see the module)."""
    if isinstance(value, str):
        return "text that is not one"
    if isinstance(value, bool):
        return "true or false"
    return f"a {type(value).__name__}"


def unknown_value(what: str, choices: Iterable[str], listed: str = "expected one of") -> str:
    """The error for a value of ``what`` (``"codec"``, ``"tier kind"``) that is none of
    ``choices``: the choices, never the value (see the module); the caller puts the field's
    path in front."""
    names = ", ".join(repr(choice) for choice in choices) or "none"
    return f"unknown {what} (the value given is not shown); {listed}: {names}"


def shown_template(text: str) -> str:
    """``text``, a key template, for an error: quoted if it has a placeholder (a ``{``), else
    said to have none, unshown (text with no placeholder may be no template at all)."""
    return repr(text) if "{" in text else "(not shown: it has no placeholder)"


def shown_url(value: str) -> str:
    """``value`` for an error about a URL field: quoted and redacted (:func:`redact_url`) if
    it is a URL (a scheme, then ``://``), else said to be text that is not a URL, unshown."""
    if _SCHEME.match(value) is None:
        return "text that is not a URL"
    return repr(redact_url(value))
