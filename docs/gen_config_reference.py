"""The configuration reference, generated from the settings models.

    python docs/gen_config_reference.py > reference.md

``docs/hooks.py`` calls :func:`render` while ``mkdocs build`` runs, so the page can never drift
from the code: every model below is walked field by field (type, default, description), the
chain's own models first, then the model of every tier and source kind installed (found through
the same entry points the chain uses).
"""

from __future__ import annotations

import re
import sys
import types
import typing
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tiered_cache.registry import BUSES_GROUP, SOURCES_GROUP, TIERS_GROUP
from tiered_cache.settings import CacheSettings

#: Models of the chain itself, with the TOML table they appear under.
CORE_MODELS: list[tuple[str, str]] = [
    ("[tiered_cache]", "CacheSettings"),
    ("[tiered_cache.protection]", "Protection"),
    ("[[tiered_cache.tiers]] (every kind)", "TierSettings"),
    ("[tiered_cache.tiers.breaker]", "BreakerSettings"),
    ("[tiered_cache.bus] (every kind)", "BusSettings"),
]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base = typing.get_args(annotation)[0]
        extras = typing.get_args(annotation)[1:]
        validator = " ".join(repr(extra) for extra in extras)
        if "parse_duration" in validator or "parse_ttl" in validator:
            return "duration"
        if "parse_size" in validator:
            return "size"
        return _type_name(base)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"list[{', '.join(_type_name(arg) for arg in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "none"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _field_type(info: FieldInfo) -> str:
    # pydantic moves Annotated metadata (the duration and size parsers) off the annotation.
    marks = " ".join(repr(item) for item in info.metadata)
    if "parse_duration" in marks or "parse_ttl" in marks:
        return "duration"
    if "parse_size" in marks:
        return "size"
    return _type_name(info.annotation)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
        if isinstance(value, BaseModel):
            return "(see its table)"
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return f"[{', '.join(repr(getattr(item, 'kind', item)) for item in value)}]"
        return f"`{value!r}`"
    if info.default is PydanticUndefined:
        return "**required**"
    if info.default is None:
        return "none"
    return f"`{info.default!r}`"


def _cell(text: str) -> str:
    text = _plain(text).replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _plain(text: str) -> str:
    """Sphinx roles (``:class:`~a.B```) as code spans: the site is markdown."""
    return re.sub(r":(?:class|mod|func|meth|attr):`~?([^`]+)`", r"`\1`", text)


def _summary(model: type[BaseModel]) -> str:
    """The docstring's first paragraph, joined: a first line alone may stop mid-sentence."""
    paragraph = (model.__doc__ or "").strip().split("\n\n")[0]
    return _plain(" ".join(line.strip() for line in paragraph.splitlines()))


def model_table(model: type[BaseModel], *, skip: set[str] | None = None) -> str:
    """One markdown table: field, type, default, description."""
    lines = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        if skip and name in skip:
            continue
        kind = _field_type(info)
        default = _default(info)
        if kind.startswith("duration") and isinstance(info.default, float):
            default = f"`{info.default:g}` s"
        lines.append(
            f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(info.description or '')} |"
        )
    return "\n".join(lines)


def _plugins(group: str) -> list[tuple[str, type[BaseModel], str]]:
    found = []
    for point in sorted(entry_points(group=group), key=lambda ep: ep.name):
        plugin = point.load()
        distribution = point.dist.name if point.dist is not None else "?"
        found.append((point.name, plugin.settings_model, distribution))
    return found


def render() -> str:
    """The whole reference page as markdown."""
    import tiered_cache.settings as settings_module

    parts = [
        "# Configuration reference",
        "",
        "Generated from the settings models by `docs/gen_config_reference.py` at every docs "
        "build. A config file (UTF-8, with or without a byte order mark) holds a "
        "`[tiered_cache]` table; every value can be overridden "
        "from the environment: `TIERED_CACHE_NAMESPACE=tweets`, `TIERED_CACHE_TIERS__1__URL=...` "
        "(the second tier of the file), or a whole list as JSON "
        '(`TIERED_CACHE_TIERS=\'[{"kind": "memory"}]\'`); a variable whose value starts '
        "with `[` or `{` but is not valid JSON is refused, naming the variable, the field and "
        "where the JSON breaks (never its text), when the field wants a list or a table. "
        "Durations are written `'50ms'`, "
        "`'5m'`, `'1h'`, compound as `'1h30m'` or `'1m30s'`, as seconds, or (from Python) as a "
        "`timedelta`; never negative, NaN or infinite, nor longer than 100 years (`'36500d'`; "
        "no limit is written `'none'`, where a field allows it: TOML has no null, and the word, "
        "in any case, is how a file or a variable says None). Sizes are written `'64MiB'` or "
        "as bytes. A number, size or duration is never `true` or `false` (refused, naming the "
        "field, where pydantic alone would read `true` as 1). A ttl (`ttl`, a tier's `ttl`, "
        "`hot_ttl`) is more than 0 (`'none'` where allowed: no ttl of its own), and so is "
        "the `ttl=` of a call (`get`, `get_many`, `set`, `set_many`, `cached`), whose "
        "refusal starts `ttl:`. The credentials of a URL (a "
        "Redis URL, a DynamoDB endpoint), its user and its password, are shown as `***` "
        "wherever settings are shown "
        "(repr, errors, logs); a password holding `/`, `?` or `#` must be percent-encoded. "
        "A bad value is a `ConfigError` naming the field (and the variable that set it) and "
        "what is wrong with it, never the value: a secret typed into the wrong field is not "
        "shown (`expected a duration such as '250ms', ..., got text that is not one`; "
        "`unknown codec (the value given is not shown); available codecs: 'json', "
        "'msgpack', 'pickle'`): text that is none of a field's choices, or no URL where a "
        "URL goes, is never shown, not even in part. "
        "The same from `load_settings`, `TieredCache.from_config` and `CacheSettings(...)` "
        "built in code, and `CacheSettings.model_validate(...)`, and by the same rules for "
        "the options built in code: `Protection(...)` "
        "(the one model of `[tiered_cache.protection]`, built in code or read from a file), a "
        "chain's `ttl`, `negative_ttl`, `write_policy` and `max_stale_when_disconnected` "
        "(`TieredCache(...)`, `AsyncTieredCache(...)`), `MemoryTier(...)`'s "
        "`max_entries`, `max_bytes`, `ttl` and `ttl_jitter`, a circuit breaker's "
        "`failure_threshold` and `cool_down` (`CircuitBreaker`, `CircuitBreakerTier`: more "
        "than 0, as `breaker.cool_down`), the hot-key policy's options "
        "(`TinyLfuPolicy(...)`: `hot_ttl`, `sketch_width`, `top_k`...), the Redis tier's "
        "`ttl`, `ttl_jitter`, `max_value_size` and `keys_per_call` (`RedisTier`, "
        "`AsyncRedisTier`) and its client's `timeout`, `connect_timeout` and `pool_size` "
        "(`make_client`, `make_async_client`), and a DynamoDB source's table, keys, "
        "projection, `batch_retry_limit` and backoffs (`DynamoDBSource`, "
        "`AsyncDynamoDBSource`): what a file may not say, code may not either, the error "
        "naming the argument (`ttl: ...`, `Protection.soft_timeout: ...`). A duration given "
        "in code takes what a file's does: seconds, text such as `'5m'`, or a `timedelta` "
        "(`tiered_cache.units.DurationLike`, the type of those arguments).",
        "",
    ]
    for table, name in CORE_MODELS:
        model = getattr(settings_module, name, None)
        if model is None:
            continue
        skip = {"tiers", "source", "bus"} if model is CacheSettings else None
        parts += [f"## `{table}`", "", _summary(model), ""]
        parts += [model_table(model, skip=skip), ""]
        if model is CacheSettings:
            parts += [
                "`tiers` (a list of tables, fastest first, each with a `kind`), `source` "
                "and `bus` (one table each, with a `kind`) are described per kind below.",
                "",
            ]
    for heading, group, table in (
        ("Tier kinds", TIERS_GROUP, "[[tiered_cache.tiers]]"),
        ("Source kinds", SOURCES_GROUP, "[tiered_cache.source]"),
        ("Bus kinds", BUSES_GROUP, "[tiered_cache.bus]"),
    ):
        parts += [f"## {heading}", ""]
        for kind, model, distribution in _plugins(group):
            doc = _summary(model)
            parts += [
                f"### `{kind}`",
                "",
                f'{doc} In `{table}` with `kind = "{kind}"`; '
                f"from the distribution `{distribution}`.",
                "",
                model_table(model),
                "",
            ]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render() + "\n")
