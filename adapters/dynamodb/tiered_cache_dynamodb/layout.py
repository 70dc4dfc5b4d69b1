"""The private names of botocore's, urllib3's, aiobotocore's, aiohttp's and asyncio's that the
connection watches read (:mod:`.pools`, :mod:`.aio_pools`): declared here alone, read through
here, and checked here against the libraries installed.

Nothing of those libraries' promises these names: another version may rename one. A watch
reading an object that lacks one raises ``AttributeError`` and is off (``not_watched``), but
some reads fail without it: a frame whose connection is held in a local of another name reads
as a frame holding none (``names.get``), a method that moved out of the pool's class runs in
a frame the scan does not read (:func:`.pools._in_use`). So every name is checked against the
installed classes and functions by :func:`missing` (a test pins them all present: an upgrade
that renames one fails it), and a watch that starts where one is missing, or where the
client's objects lacked one, says so in a warning (once per process: :func:`started`)
and its source counts it (``stats()["source"]["watches_on_another_layout"]``).
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import CodeType
from typing import Any, ClassVar

from tiered_cache.logs import logger_for

__all__ = ["Aiobotocore", "Boto3", "Layout", "Local", "Private", "missing", "started"]


@dataclass(frozen=True)
class Private:
    """An attribute the watch reads (or replaces) of the objects of ``owner``: a class, by its
    module and qualified name; present where the class (or a base) defines it or its code
    names it (``self.<name> = ...``: an object's own attributes are set in its class's code;
    a name its code still reads passes too, a rename removes both)."""

    owner: str
    name: str

    def of(self, obj: Any) -> Any:
        """``obj``'s: ``AttributeError`` where it has none (laid out otherwise)."""
        return getattr(obj, self.name)

    def set(self, obj: Any, value: Any) -> None:
        """Replace ``obj``'s."""
        setattr(obj, self.name, value)


@dataclass(frozen=True)
class Local:
    """A local of the frames of ``functions`` (by module and qualified name) the scan reads:
    present where each of them has a local (or an argument) of that name."""

    functions: tuple[str, ...]
    name: str

    def of(self, names: Mapping[str, Any]) -> Any:
        """The value of a frame's local (``names``: its ``f_locals``), or None."""
        return names.get(self.name)


class Layout:
    """A set of names, the attributes of a subclass (:func:`names`)."""

    #: The libraries that own the names (for the warning).
    libraries: ClassVar[str] = ""


class Boto3(Layout):
    """What :mod:`.pools` reads of a boto3 client's connections."""

    libraries = "botocore and urllib3"

    endpoint = Private("botocore.client.BaseClient", "_endpoint")
    http_session = Private("botocore.endpoint.Endpoint", "http_session")
    manager = Private("botocore.httpsession.URLLib3Session", "_manager")
    proxy_managers = Private("botocore.httpsession.URLLib3Session", "_proxy_managers")
    pool_classes = Private("botocore.httpsession.URLLib3Session", "_pool_classes_by_scheme")
    pools = Private("urllib3.poolmanager.PoolManager", "pools")
    container = Private("urllib3._collections.RecentlyUsedContainer", "_container")
    #: A pool's queue of idle connections (None once the pool is closed).
    queue = Private("urllib3.connectionpool.HTTPConnectionPool", "pool")
    queued = Private("queue.LifoQueue", "queue")
    connection_class = Private("urllib3.connectionpool.HTTPConnectionPool", "ConnectionCls")
    put_back = Private("urllib3.connectionpool.HTTPConnectionPool", "_put_conn")
    connect = Private("urllib3.connection.HTTPConnection", "connect")
    sock = Private("urllib3.connection.HTTPConnection", "sock")
    #: The pool's methods that hold a connection taken from its queue, until it is put back.
    held = Local(
        (
            "urllib3.connectionpool.HTTPConnectionPool._get_conn",
            "urllib3.connectionpool.HTTPConnectionPool.urlopen",
            "urllib3.connectionpool.HTTPConnectionPool._make_request",
            "urllib3.connectionpool.HTTPConnectionPool._put_conn",
        ),
        "conn",
    )
    #: A reply holds its connection once ``urlopen`` has returned, until it is put back.
    reply_pool = Private("urllib3.response.HTTPResponse", "_pool")
    reply_connection = Private("urllib3.response.HTTPResponse", "_connection")


class Aiobotocore(Layout):
    """What :mod:`.aio_pools` reads of an aiobotocore client's connections."""

    libraries = "aiobotocore, aiohttp and asyncio"
    endpoint = Boto3.endpoint
    http_session = Boto3.http_session
    sessions = Private("aiobotocore.httpsession.AIOHTTPSession", "_sessions")
    connector_args = Private("aiobotocore.httpsession.AIOHTTPSession", "_connector_args")
    connector = Private("aiohttp.client.ClientSession", "connector")
    socket_factory = Private("aiohttp.connector.TCPConnector", "_socket_factory")
    idle = Private("aiohttp.connector.BaseConnector", "_conns")
    acquired = Private("aiohttp.connector.BaseConnector", "_acquired")
    transport = Private("aiohttp.client_proto.ResponseHandler", "transport")
    extra_info = Private("asyncio.transports.BaseTransport", "get_extra_info")
    shown_socket = Private("asyncio.trsock.TransportSocket", "_sock")


def names(layout: type[Layout]) -> list[Private | Local]:
    """The names ``layout`` declares."""
    return [value for value in vars(layout).values() if isinstance(value, Private | Local)]


def _resolve(path: str) -> Any:
    """The object at ``module.qualified.name``; ``LookupError`` where there is none."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            try:
                found = getattr(found, part)
            except AttributeError:
                raise LookupError(path) from None
        return found
    raise LookupError(path)


def _codes(code: CodeType) -> Iterator[CodeType]:
    """``code`` and the code nested in it (its comprehensions, its inner functions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _codes(const)


def _has(cls: type[Any], name: str) -> bool:
    for kind in cls.__mro__:
        values = vars(kind)
        if name in values:  # a method, a class attribute, a property, a slot
            return True
        for value in values.values():
            # A property's getter, a static or class method's function, a wrapper's own.
            function: Any = value.fget if isinstance(value, property) else value
            function = inspect.unwrap(getattr(function, "__func__", function))
            if inspect.isfunction(function) and any(
                name in code.co_names for code in _codes(function.__code__)
            ):
                return True
    return False


def _lacks(name: Private | Local) -> list[str]:
    if isinstance(name, Private):
        try:
            owner = _resolve(name.owner)
        except LookupError:
            return [name.owner]
        return [] if _has(owner, name.name) else [f"{name.owner}.{name.name}"]
    lacking: list[str] = []
    for path in name.functions:
        try:
            code = inspect.unwrap(_resolve(path)).__code__
        except LookupError:
            lacking.append(path)
            continue
        if name.name not in code.co_varnames + code.co_cellvars:
            lacking.append(f"{path}: local {name.name}")
    return lacking


def missing(layout: type[Layout]) -> list[str]:
    """The names of ``layout`` the installed libraries lack (each once, in order): a class or
    function that is not there, an attribute no class of its owner's defines or sets, a local
    a function does not have."""
    lacking: list[str] = []
    for name in names(layout):
        lacking.extend(found for found in _lacks(name) if found not in lacking)
    return lacking


class _Once:
    """Whether the warning was given in this process (a forked child's is its parent's)."""

    def __init__(self) -> None:
        self.said = False
        self.lock = threading.Lock()


_ONCE = _Once()


def said_changed(layout: type[Layout], not_watched: str | None) -> bool:
    """Whether a watch of ``layout`` starts on another layout than this module declares: a
    name the installed libraries lack (:func:`missing`), or one the client's objects lacked
    (``not_watched``, the watch's ``AttributeError``). The first such watch of the process
    says so in a warning (``tiered_cache.source``); its source counts each."""
    lacking = missing(layout)
    if not_watched is not None:
        lacking.append(not_watched)
    if not lacking:
        return False
    with _ONCE.lock:
        first, _ONCE.said = not _ONCE.said, True
    if first:
        logger_for("source").warning(
            "the installed %s lay a client's connections out otherwise than this adapter "
            "reads them (%s): the sockets of connections it does not see stay open in a "
            "forked child",
            layout.libraries,
            "; ".join(lacking),
        )
    return True


def started(layout: type[Layout], start: Callable[[], None]) -> tuple[str | None, bool]:
    """Start a watch of ``layout`` (``start``): why it notes nothing (the ``AttributeError``
    of an object laid out otherwise) or None, and whether it started on another layout
    (:func:`said_changed`)."""
    try:
        start()
    except AttributeError as exc:
        not_watched: str | None = str(exc)
    else:
        not_watched = None
    return not_watched, said_changed(layout, not_watched)
