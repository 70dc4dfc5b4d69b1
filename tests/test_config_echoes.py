"""What a config error may show of a value it refuses: a known choice, never unknown text.

A secret pasted into the wrong field (a variable shifted by one, a line off in a file) was
shown by the error that refused it (``unknown codec 'hunter2SECRET'``), and by every log that
kept the error. An unknown value is named by its field and the choices it may take
(:func:`tiered_cache.redaction.unknown_value`), never echoed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tiered_cache import ConfigError, load_settings
from tiered_cache.codecs import get_codec

SECRET = "hunter2SECRET"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("TIERED_CACHE_"):
            monkeypatch.delenv(name)
    yield


def test_an_unknown_codec_is_not_echoed_and_the_codecs_are_listed() -> None:
    with pytest.raises(ConfigError) as caught:
        get_codec(SECRET)
    message = str(caught.value)
    assert SECRET not in message and SECRET[:4] not in message, message
    assert message.startswith("unknown codec"), message
    assert "'json', 'msgpack', 'pickle'" in message, message


@pytest.mark.parametrize(
    ("fields", "path", "what"),
    [
        ({"tiers": [{"kind": "memory"}, {"kind": SECRET}]}, "tiered_cache.tiers[1].kind", "tier"),
        ({"source": {"kind": SECRET}}, "tiered_cache.source.kind", "source"),
        ({"bus": {"kind": SECRET}}, "tiered_cache.bus.kind", "bus"),
    ],
    ids=["tier", "source", "bus"],
)
def test_an_unknown_kind_is_named_by_its_field_not_echoed(
    fields: dict[str, object], path: str, what: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**fields)
    message = str(caught.value)
    assert SECRET not in message and SECRET[:4] not in message, message
    assert message.startswith(f"{path}: unknown {what} kind"), message
    assert "installed kinds: " in message, message


def test_an_unknown_kind_from_a_variable_names_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIERED_CACHE_SOURCE__KIND", SECRET)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert SECRET not in message, message
    assert "tiered_cache.source.kind" in message, message
