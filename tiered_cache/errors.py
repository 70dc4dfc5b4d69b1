"""Exceptions raised by tiered-cache; all derive from :class:`TieredCacheError`."""

from __future__ import annotations

from collections.abc import Mapping
from types import FrameType, FunctionType, MemberDescriptorType, TracebackType
from typing import Any, TypeVar, cast

E = TypeVar("E", bound=BaseException)


def caused(error: E, cause: BaseException | None) -> E:
    """``raise caused(error, cause)`` is ``raise error from cause`` (``None``: the context is
    not shown), in the modules compiled with mypyc too (:mod:`tiered_cache.compiled`): their
    compiled ``raise ... from`` drops its clause (mypyc 2.4), chaining the error to the one
    being handled instead. Inside an ``except`` it is written ``raise caused(error, exc) from
    exc``: the clause repeats what this sets (for the pure sources and the linter's B904);
    compiled, only this holds."""
    error.__cause__ = cause  # sets __suppress_context__ as well, as ``from`` does
    return error


def handed_on(error: E) -> E:
    """``error`` for one more caller of the work that raised it (a single-flight waiter), to
    raise as its own: a copy of its type, arguments and attributes, with its cause, context
    and traceback as they are now (where the work raised it). Raised as it was, the one
    object went to every caller: each raise set its ``__context__`` to what that caller was
    handling and added that caller's frames to its ``__traceback__``, which the others then
    saw as theirs (across threads, racing). An exception that cannot be made again from its
    arguments without its ``__init__`` (its class refuses them, or keeps no ``__dict__``), or
    whose class refuses an attribute set (a frozen dataclass), is handed on as it is. Never
    raises: a flight lands with what it returns (raised there, its waiters waited for ever)."""
    try:
        fresh = _made_again(error, error.args)
    except Exception:
        return error
    chain = error.__cause__, error.__suppress_context__, error.__context__, error.__traceback__
    return fresh if _chained(fresh, *chain) else error


def _made_again(error: E, args: tuple[Any, ...]) -> E:
    """A copy of what ``error`` says, made with ``args`` (its own, or copies of them): its
    type, arguments, attributes and notes, with no cause, context or traceback (set by
    :func:`_chained`: :func:`handed_on` the original's, :func:`frameless` its copies'); raises
    what stopped it."""
    kind = type(error)
    fresh = kind.__new__(kind, *args)
    if not isinstance(kind.__init__, FunctionType):
        # A built-in __init__ (BaseException's, OSError's) takes the arguments as given; a
        # class's own may make them from others (its message from a key): its attributes
        # are copied instead.
        kind.__init__(fresh, *args)
    fresh.__dict__.update(error.__dict__)
    _copy_fields(error, fresh)
    # OSError.__new__ of a class with an __init__ of its own leaves the arguments to it.
    fresh.args = args
    notes = error.__dict__.get("__notes__")
    if isinstance(notes, list):
        fresh.__notes__ = list(notes)  # one caller's add_note() is not the others'
    return fresh


def _chained(
    fresh: BaseException,
    cause: BaseException | None,
    suppress_context: bool,
    context: BaseException | None,
    traceback: TracebackType | None,
) -> bool:
    """Set ``fresh``'s cause, context and traceback (``__suppress_context__`` after
    ``__cause__``, whose setting sets it too); False if its class refuses a set (a frozen
    dataclass refuses every attribute, dunders too)."""
    try:
        fresh.__cause__ = cause
        fresh.__suppress_context__ = suppress_context
        fresh.__context__ = context
        fresh.__traceback__ = traceback
    except Exception:
        return False
    return True


def said(error: BaseException) -> str:
    """What ``error`` says, for a message of ours that quotes it: its ``str``, or its type's
    name when that fails (a class's own ``__str__`` raising failed the message, and the call
    making it, instead)."""
    try:
        return str(error)
    except Exception:
        return type(error).__name__


#: How many errors of a chain of causes and contexts :func:`frameless` copies; past them the
#: chain ends.
_CHAIN_LINKS = 16
#: How many errors :func:`frameless` copies in all (the chain's, and those its errors hold:
#: an exception group's, an argument, an attribute); past them the others are left out.
_MOST_COPIES = 64
_TRACEBACK_HOLDERS = (BaseException, TracebackType, FrameType)


def frameless(error: E) -> E | None:
    """``error`` to keep once the raise that made it has ended (a throttled key's rest,
    :mod:`tiered_cache.throttle_rest`): a copy (:func:`_made_again`) of it and of its causes and
    contexts, none with a traceback; so are the errors it holds (in its arguments, an
    exception group's among them, and in its attributes, a dict's values among them: ``raise
    SourceThrottled(exc)``, botocore's ``kwargs``), and
    a traceback or frame it holds is dropped. A traceback holds the frames the error went
    through, and each frame its caller's, up the stack: kept, the error kept alive every local
    of the call that raised it, up to a service's handler. What it says (type, arguments,
    attributes, its causes') stays. None if ``error`` cannot be copied; an error it holds that
    cannot be, or past the chain's first ``_CHAIN_LINKS`` or ``_MOST_COPIES`` in all, is left
    out (None in its place; out of a group's list)."""
    copies: dict[int, BaseException | None] = {}

    def copy(link: BaseException | None, depth: int) -> BaseException | None:
        if link is None or depth >= _CHAIN_LINKS or len(copies) >= _MOST_COPIES:
            return None
        if id(link) in copies:  # a chain that loops: the same copy (None while in the making)
            return copies[id(link)]
        copies[id(link)] = None
        try:
            fresh = _made_again(link, tuple(held(arg, depth) for arg in link.args))
            state = fresh.__dict__
            for name, value in state.items():
                state[name] = held(value, depth)
        except Exception:
            return None
        copies[id(link)] = fresh
        cause = copy(link.__cause__, depth + 1)
        context = copy(link.__context__, depth + 1)
        if not _chained(fresh, cause, link.__suppress_context__, context, None):
            copies[id(link)] = None
            return None
        return fresh

    def held(value: object, depth: int) -> object:
        """``value``, held by an error, with no traceback in it (a list or a tuple one level
        down: an exception group's errors; a dict's values: botocore's ``kwargs``)."""
        if isinstance(value, BaseException):
            return copy(value, depth + 1)
        if isinstance(value, TracebackType | FrameType):
            return None
        if isinstance(value, list | tuple) and any(
            isinstance(item, _TRACEBACK_HOLDERS) for item in value
        ):
            kept = (held(item, depth) for item in value)
            return type(value)(item for item in kept if item is not None)
        if isinstance(value, dict) and any(
            isinstance(item, _TRACEBACK_HOLDERS) for item in value.values()
        ):
            return {key: held(item, depth) for key, item in value.items()}
        return value

    return cast("E | None", copy(error, 0))  # _made_again keeps the type


#: BaseException's own fields: set by :func:`_chained`, after the others.
_OWN_FIELDS = frozenset(vars(BaseException))


def _copy_fields(error: BaseException, fresh: BaseException) -> None:
    """Copy to ``fresh`` what ``error`` keeps outside its ``__dict__`` and its arguments: C
    fields (OSError's ``errno``, ``strerror`` and ``filename``, which an OSError subclass
    with an ``__init__`` of its own never had set from the arguments, and the ``filename``
    that is never one of them; ImportError's ``name``; AttributeError's ``obj``) and the
    slots of its classes. A field that cannot be read (never set) or written is left, and
    one the copy holds already is not set again: OSError's message tells a ``filename2``
    of None from one never set."""
    for cls in type(error).__mro__:
        for name, field in vars(cls).items():
            if not isinstance(field, MemberDescriptorType) or name in _OWN_FIELDS:
                continue
            try:
                value = getattr(error, name)
                if value is not getattr(fresh, name, None):  # OSError's str tells None from unset
                    setattr(fresh, name, value)
            except (AttributeError, TypeError):
                continue


class TieredCacheError(Exception):
    """Base class of every error raised by tiered-cache."""


class ConfigError(TieredCacheError, ValueError):
    """The configuration is wrong; the message names the field path and the problem."""


class CodecError(TieredCacheError, TypeError):
    """A value cannot be encoded for (or decoded from) a tier; nothing was written."""


class UnencodableKey(CodecError):
    """A key a tier of the chain cannot encode (a lone surrogate, which UTF-8 cannot encode,
    for a tier that stores keys as UTF-8): refused at the chain's face, before anything is
    sent. The message names the problem and the key's hash, never the key."""


class KeyTooLong(UnencodableKey):
    """A key longer than a tier of the chain takes (``tiered_cache.keys.MAX_KEY_LENGTH``
    characters, for a tier that stores keys as UTF-8: Redis): refused at the chain's face,
    before anything is sent, as an :class:`UnencodableKey` is. The message gives the key's
    hash and length, never the key."""


class ChainClosedError(TieredCacheError, RuntimeError):
    """A call on a chain after its ``close()`` (``aclose()``): every read, write and
    invalidation is refused, of the chain and of its decorated functions. Nothing was
    asked of a tier or the source, and no tier's failure is counted. Build a new chain."""


class EventLoopConflict(TieredCacheError, RuntimeError):
    """An asyncio chain with a tier whose connections belong to one event loop at a time (the
    Redis tier on ``redis.asyncio``) was called from a second loop while the first still
    runs (two threads, each with its loop). Nothing was asked of a tier or the source. Build
    one chain per event loop; one loop after another (``asyncio.run`` per job) is fine."""


class TierUnavailable(TieredCacheError):
    """A tier cannot be used right now (connection lost, timeout, circuit open)."""


class TierCallFailed(TierUnavailable):
    """A call made that failed (the tier's error is its ``__cause__``): raised by a circuit
    breaker that let the call through, or by a tier for a batch that failed in part.
    Counted as the tier's error, where a refused call (:class:`CircuitOpen`) or a tier's
    own :class:`TierUnavailable` (a call it did not make) is a skip."""


class CircuitOpen(TierUnavailable):
    """A circuit breaker refused a call without making it (its circuit is open, or its one
    probe is in flight): nothing was attempted, unlike a call that failed."""


class RecursiveLoad(TieredCacheError, RuntimeError):
    """A load of a key asked for that same key (its loader, or a function it calls, read it
    through the cache): it would wait for its own result for ever. The loader must not read
    the key it loads."""


class InvalidationIncomplete(TieredCacheError):
    """A strict invalidation did not reach every shared tier or the bus; the message says
    which. The steps that could be taken were taken: retrying is safe."""


class SourceError(TieredCacheError):
    """The source of truth failed to answer."""


class SourceThrottled(SourceError):
    """The source refused the request for lack of capacity, after its retries were spent."""


class SourceResting(SourceThrottled):
    """The source throttled this key lately and it rests (``throttle_backoff``), with no copy
    to serve: answered at once, without a request (its cause: that throttle)."""


class LoadTimeout(SourceError):
    """A load took longer than the hard timeout (it goes on in the background)."""

    @classmethod
    def no_slot(cls, key: str, count: int, *, hung: bool, timeout: float) -> LoadTimeout:
        """A timed load of ``key`` refused for want of a slot: ``count`` loads hang
        (``max_abandoned_loads``), or ``count`` ran for all of ``timeout``
        (``max_timed_loads``) (:mod:`tiered_cache.timed_slots`)."""
        if hung:
            return cls(
                f"{count} loads are still running after their callers stopped waiting "
                f"(max_abandoned_loads); {key!r} was not loaded"
            )
        return cls(
            f"{count} loads were running (max_timed_loads) for all of the timeout of "
            f"{timeout}s; {key!r} was not loaded"
        )


class KeyTemplateError(TieredCacheError, ValueError):
    """A cache key does not fit a key template, or a template does not fit a function."""


class PartialLoadError(SourceError):
    """A source's ``load_many`` read some keys before it failed.

    A source raises it (or a subclass) so that the chain can keep what was read. Attributes:
        found: the items read before the failure (cache key -> value; ``None``: not found).
        left: how many keys were left unread.
    """

    def __init__(self, message: str, found: Mapping[str, Any], left: int) -> None:
        super().__init__(message)
        self.found = dict(found)
        self.left = left


class PartialBatchError(SourceError):
    """``get_many`` could serve only some keys; this carries what it served and why not the rest.

    Attributes:
        values: every key it could serve (fresh, stale under fail-safe, or read before the
            source failed), in the order asked for.
        errors: for each key it could not serve, the exception that stopped it.
    """

    def __init__(self, values: Mapping[str, Any], errors: Mapping[str, BaseException]) -> None:
        self.values = dict(values)
        self.errors = dict(errors)
        kinds = sorted({type(error).__name__ for error in self.errors.values()})
        shown = ", ".join(repr(key) for key in list(self.errors)[:5])
        more = f" and {len(self.errors) - 5} more" if len(self.errors) > 5 else ""
        super().__init__(
            f"get_many could not serve {len(self.errors)} of "
            f"{len(self.errors) + len(self.values)} keys ({shown}{more}): {', '.join(kinds)}"
        )
