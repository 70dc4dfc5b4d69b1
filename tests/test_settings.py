"""Settings from a TOML file, the environment and overrides; clear errors for bad config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tiered_cache import ConfigError, MemoryTier, TieredCache, load_settings
from tiered_cache.registry import (
    TIERS_GROUP,
    Plugin,
    available_kinds,
    find_plugin,
    register,
    unregister,
)
from tiered_cache.settings import CacheSettings, MemoryTierSettings, TierSettings
from tiered_cache.units import parse_duration, parse_size

CONFIG = """
[tiered_cache]
namespace = "tweets"
ttl = "10m"

[[tiered_cache.tiers]]
kind = "memory"
max_entries = 500
ttl = "5m"
max_bytes = "64MiB"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiered_cache.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TIERED_CACHE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172800),
        (7, 7.0),
        ("1.5s", 1.5),
        ("100us", 1e-4),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 * 2**20), ("10MB", 10**7), (512, 512), ("1KiB", 1024), ("3GB", 3 * 10**9)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_from_config_file(config_file: Path) -> None:
    settings = load_settings(config_file)
    assert settings.namespace == "tweets"
    assert settings.ttl == 600
    (tier,) = settings.tiers
    assert isinstance(tier, MemoryTierSettings)
    assert (tier.max_entries, tier.ttl, tier.max_bytes) == (500, 300, 64 * 2**20)
    with TieredCache.from_config(config_file) as cache:
        assert cache.namespace == "tweets"
        assert isinstance(cache.tiers[0], MemoryTier)
        assert cache.get("k", lambda: "v") == "v"


def test_environment_overrides_the_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERED_CACHE_NAMESPACE", "123")
    monkeypatch.setenv("TIERED_CACHE_TIERS__0__MAX_ENTRIES", "42")
    monkeypatch.setenv("TIERED_CACHE_NEGATIVE_TTL", "2s")
    settings = load_settings(config_file)
    assert settings.namespace == "123"
    assert settings.tiers[0].max_entries == 42  # type: ignore[attr-defined]
    assert settings.tiers[0].ttl == 300  # the rest of the tier still comes from the file
    assert settings.negative_ttl == 2


def test_whole_tier_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERED_CACHE_TIERS", '[{"kind": "memory", "max_entries": 9}]')
    assert load_settings().tiers[0].max_entries == 9  # type: ignore[attr-defined]


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERED_CACHE_NAMESPACE", "from-env")
    assert load_settings(namespace="explicit").namespace == "explicit"


def test_defaults_without_any_config() -> None:
    settings = load_settings()
    assert settings.namespace == "default"
    assert [tier.kind for tier in settings.tiers] == ["memory"]
    assert settings.source is None


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        (
            [{"kind": "memory", "ttl": "5 minutes"}],
            "tiered_cache.tiers[0].ttl: expected a duration",
        ),
        (
            [{"kind": "memory", "max_entries": 0}],
            "tiered_cache.tiers[0].max_entries: Input should be greater",
        ),
        (
            [{"kind": "memory", "max_entrys": 5}],
            "tiered_cache.tiers[0].max_entrys: Extra inputs are not permitted",
        ),
        (
            [{"kind": "memory"}, {"kind": "memcached"}],
            "tiered_cache.tiers[1].kind: unknown tier kind (the value given is not shown); "
            "installed kinds: ",
        ),
        ([{"ttl": "5m"}], "tiered_cache.tiers[0].kind: Field required"),
        (
            [{"kind": "memory", "max_bytes": "lots"}],
            "tiered_cache.tiers[0].max_bytes: expected a size",
        ),
    ],
)
def test_bad_tier_config_names_the_field(tiers: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tiers=tiers)
    assert message in str(info.value)


def test_unknown_kind_lists_installed_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tiers=[{"kind": "nope"}])
    for kind in available_kinds():
        assert repr(kind) in str(info.value)
    assert "'memory'" in str(info.value)


def test_bad_top_level_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[tiered_cache]\nnegative_ttl = "soon"\nnamspace = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "tiered_cache.negative_ttl: expected a duration" in str(info.value)
    assert "tiered_cache.namspace: Extra inputs are not permitted" in str(info.value)


def test_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[tiered_cache\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)
    other = tmp_path / "other.toml"
    other.write_text("[something_else]\n")
    with pytest.raises(ConfigError, match=r"no \[tiered_cache\] table"):
        load_settings(other)


def test_environment_index_past_the_list_is_named(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERED_CACHE_TIERS__3__TTL", "1s")
    with pytest.raises(ConfigError, match="TIERED_CACHE_TIERS__3__TTL"):
        load_settings(config_file)


def test_memory_kind_is_found_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="tiered_cache.tiers")}
    assert "memory" in names


def test_a_registered_plugin_is_a_kind(clock: object) -> None:
    class EchoSettings(TierSettings):
        kind: str = "echo"
        size: int = 3

    built: list[EchoSettings] = []

    def build(settings: EchoSettings, context: object) -> MemoryTier:
        built.append(settings)
        return MemoryTier(name="echo", max_entries=settings.size)

    register(Plugin("echo", EchoSettings, build))
    try:
        with TieredCache.from_config(tiers=[{"kind": "echo", "size": 7}]) as cache:
            assert cache.tiers[0].name == "echo"
        assert built[0].size == 7
        assert "echo" in available_kinds()
    finally:
        unregister("echo")


@pytest.mark.parametrize("spelling", ["none", "None", "NONE", " none "])
def test_none_is_spelt_none_in_the_environment_and_the_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spelling: str
) -> None:
    """TOML has no null and an environment variable is text: a field that allows none takes
    the word (the file's ttl = "10m" and the tier's "5m" turned off from the environment)."""
    monkeypatch.setenv("TIERED_CACHE_TTL", spelling)
    monkeypatch.setenv("TIERED_CACHE_TIERS__0__TTL", spelling)
    monkeypatch.setenv("TIERED_CACHE_PROTECTION__HARD_TIMEOUT", spelling)
    settings = load_settings(config_file)
    tier = settings.tiers[0]
    assert isinstance(tier, MemoryTierSettings)
    assert (settings.ttl, tier.ttl, settings.protection.hard_timeout) == (None, None, None)
    path = tmp_path / "none.toml"
    path.write_text(
        '[tiered_cache]\nsource = "none"\n[[tiered_cache.tiers]]\nkind = "memory"\n'
        f'hot_ttl = "{spelling}"\nsketch_width = "{spelling}"\n'
    )
    monkeypatch.delenv("TIERED_CACHE_TIERS__0__TTL")
    tier = load_settings(path).tiers[0]
    assert isinstance(tier, MemoryTierSettings)
    assert (tier.hot_ttl, tier.sketch_width) == (None, None)


def test_none_stays_a_word_in_a_text_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERED_CACHE_NAMESPACE", "none")
    monkeypatch.setenv("TIERED_CACHE_TIERS", '[{"kind": "memory", "name": "none"}]')
    settings = load_settings()
    assert (settings.namespace, settings.tiers[0].name) == ("none", "none")


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("TIERED_CACHE_BOGUS", "1", "tiered_cache.bogus"),
        ("tiered_cache_Bogus", "1", "tiered_cache.bogus"),
        ("TIERED_CACHE_PROTECTION__HARD_TIMOUT", "1s", "tiered_cache.protection.hard_timout"),
        ("TIERED_CACHE_TTL", "soon", "tiered_cache.ttl"),
        ("TIERED_CACHE_TIERS", '[{"kind": "memory", "max_entrys": 5}]', "tiered_cache.tiers[0]"),
        # A field of text or a number given a table by a variable below it: the error is the
        # field's ("Input should be a valid string"), and the variable made its table.
        ("TIERED_CACHE_NAMESPACE__X", "v", "tiered_cache.namespace"),
        ("TIERED_CACHE_NEGATIVE_TTL__X", "1s", "tiered_cache.negative_ttl"),
    ],
)
def test_an_error_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{variable} ({field}"), message


#: A password in a variable whose JSON is broken: the error says where, never what.
_PASSWORD = "hunter2-edges-never-shown"


@pytest.mark.parametrize(
    ("variable", "value", "field", "where"),
    [
        ("TIERED_CACHE_TIERS", '[{"kind": "memory",}]', "tiered_cache.tiers", "column 20"),
        (
            "TIERED_CACHE_TIERS",
            f'[{{"kind": "redis", "url": "redis://:{_PASSWORD}@h:6379/0"}}',
            "tiered_cache.tiers",
            "column 73",
        ),
        ("TIERED_CACHE_TIERS", "[" * 100_000, "tiered_cache.tiers", "nested too deeply"),
        ("TIERED_CACHE_PROTECTION", "{soft_timeout: 1}", "tiered_cache.protection", "column 2"),
        ("TIERED_CACHE_BUS", "{'kind': 'off'}", "tiered_cache.bus", "column 2"),
    ],
)
@pytest.mark.parametrize("build", [load_settings, CacheSettings])
def test_a_variable_holding_invalid_json_says_so_and_where(
    monkeypatch: pytest.MonkeyPatch,
    *,
    variable: str,
    value: str,
    field: str,
    where: str,
    build: Callable[[], object],
) -> None:
    """A list or table whose JSON did not parse was kept as text, and the error was
    pydantic's about that text: "Input should be a valid list". Built directly
    (``CacheSettings()``, for ``TieredCache.from_settings``), it still was, in pydantic's
    ValidationError."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    assert message.startswith(f"{variable} ({field}): the variable holds invalid JSON"), message
    assert where in message, message
    assert _PASSWORD not in message and "valid list" not in message


def test_text_that_starts_like_json_is_still_a_text_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not JSON, kept as text: a field of text may start with a bracket."""
    monkeypatch.setenv("TIERED_CACHE_NAMESPACE", "[blue")
    assert load_settings().namespace == "[blue"
    monkeypatch.setenv("TIERED_CACHE_TTL", "{5s")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("TIERED_CACHE_TTL (tiered_cache.ttl): expected a duration"), message
    assert message.endswith(
        "; the variable holds invalid JSON: Expecting property name "
        "enclosed in double quotes at line 1, column 2"
    ), message


#: A password typed into a duration or a size field by mistake (a line off in a file, the
#: wrong variable): the error names the field and what is wrong, never what was typed.
_TYPED = "Tr0ub4dor-3-typed-in-the-wrong-field"


def _assert_not_shown(message: str) -> None:
    assert _TYPED not in message and _TYPED[:8] not in message, message


@pytest.mark.parametrize(
    ("variable", "field", "problem"),
    [
        ("TIERED_CACHE_TTL", "tiered_cache.ttl", "expected a duration"),
        ("TIERED_CACHE_NEGATIVE_TTL", "tiered_cache.negative_ttl", "expected a duration"),
        (
            "TIERED_CACHE_PROTECTION__HARD_TIMEOUT",
            "tiered_cache.protection.hard_timeout",
            "expected a duration",
        ),
        ("TIERED_CACHE_TIERS__0__TTL", "tiered_cache.tiers[0].ttl", "expected a duration"),
        ("TIERED_CACHE_TIERS__0__MAX_BYTES", "tiered_cache.tiers[0].max_bytes", "expected a size"),
    ],
)
def test_a_secret_in_a_duration_or_size_variable_is_not_shown(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, variable: str, field: str, problem: str
) -> None:
    """The errors said ``got 'Tr0ub4dor-...'``: the text of the field, whatever it held."""
    monkeypatch.setenv(variable, _TYPED)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file)
    message = str(info.value)
    assert message.startswith(f"{variable} ({field}): {problem}"), message
    _assert_not_shown(message)


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        ('ttl = "5m"', "tiered_cache.tiers[0].ttl", "expected a duration"),
        ('max_bytes = "64MiB"', "tiered_cache.tiers[0].max_bytes", "expected a size"),
    ],
)
@pytest.mark.parametrize(
    "typed",
    [f'"{_TYPED}"', f'["{_TYPED}"]', f'{{ word = "{_TYPED}" }}'],
    ids=["text", "list", "table"],
)
def test_a_secret_in_a_duration_or_size_of_a_file_is_not_shown(
    config_file: Path, line: str, field: str, problem: str, typed: str
) -> None:
    name = line.partition(" = ")[0]
    config_file.write_text(CONFIG.replace(line, f"{name} = {typed}"))
    with pytest.raises(ConfigError) as info:
        load_settings(config_file)
    message = str(info.value)
    assert message.startswith(f"{field}: {problem}"), message
    _assert_not_shown(message)


def test_a_secret_in_a_duration_or_size_given_in_code_is_not_shown() -> None:
    """Overrides, models built directly, and a ``ttl=`` argument (``@cache.cached``)."""
    with pytest.raises(ConfigError) as info:
        load_settings(ttl=_TYPED)
    _assert_not_shown(str(info.value))
    for build in (
        lambda: MemoryTierSettings(ttl=_TYPED),
        lambda: MemoryTierSettings(max_bytes=_TYPED),
        lambda: parse_duration(_TYPED),
        lambda: parse_size(_TYPED),
        lambda: parse_duration(f"5m{_TYPED}"),
        lambda: parse_size(f"64MiB{_TYPED}"),
    ):
        with pytest.raises(ValueError) as refused:
            build()
        _assert_not_shown(str(refused.value))


def test_an_error_of_the_file_is_not_blamed_on_a_variable(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERED_CACHE_NAMESPACE", "fine")
    config_file.write_text(CONFIG.replace('ttl = "10m"', 'ttl = "soon"'))
    with pytest.raises(ConfigError, match=r"^tiered_cache\.ttl: expected a duration"):
        load_settings(config_file)
    monkeypatch.setenv("TIERED_CACHE_TTL", "1h")
    with pytest.raises(ConfigError, match=r"^tiered_cache\.ttl: expected a duration"):
        load_settings(ttl="later")  # the override's value, not the variable's, was wrong


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xe3\x81\x28\xff\xfe garbage", "is not UTF-8 text"),
        ('[tiered_cache]\nnamespace = "caf\xe9"\n'.encode("latin-1"), "is not UTF-8 text"),
        (None, "cannot be read"),  # a directory
    ],
)
def test_a_config_file_that_cannot_be_read_as_text_is_a_config_error(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    """Only a missing file and bad TOML were ConfigErrors: a file that is not UTF-8 (binary
    garbage, a Latin-1 file) raised a bare UnicodeDecodeError naming no file, and a directory
    (or an empty path, which is '.') a bare IsADirectoryError."""
    path = tmp_path / "tiered_cache.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"config file '{path}' {problem}"):
        load_settings(path)


def test_a_config_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Notepad (and other Windows editors) save UTF-8 with a BOM: tomllib refused the file
    with "Invalid statement (at line 1, column 1)"."""
    path = tmp_path / "tiered_cache.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[tiered_cache]\nnamespace = "bom"\n')
    assert load_settings(path).namespace == "bom"
    path.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf" + b"[tiered_cache]\n")  # one BOM only
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(path)


@pytest.mark.usefixtures("broken_distribution")
@pytest.mark.parametrize(
    ("path", "overrides"),
    [
        ("tiered_cache.tiers[1].kind", {"tiers": [{"kind": "memory"}, {"kind": "broken"}]}),
        ("tiered_cache.source.kind", {"source": {"kind": "broken"}}),
    ],
)
def test_a_kind_whose_plugin_cannot_be_imported_is_a_config_error_naming_the_field(
    path: str, overrides: dict[str, object]
) -> None:
    """Its ModuleNotFoundError escaped load_settings and from_config bare, naming neither the
    field nor the kind."""
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert message.startswith(f"{path}: kind 'broken'"), message
    assert "tiered_cache_no_such_module" in message


@pytest.mark.usefixtures("broken_distribution")
def test_a_plugin_that_cannot_be_imported_is_one_config_error_naming_its_kind_once() -> None:
    """find_plugin wrapped the entry point's ConfigError in a second one, and without a
    field's path (the chain built from a settings object) the message read "kind: kind
    'broken' comes from ..."."""
    with pytest.raises(ConfigError) as caught:
        find_plugin("broken", group=TIERS_GROUP)
    message = str(caught.value)
    assert message.startswith("kind 'broken' comes from entry point"), message
    assert message.count("broken'") == 1, message
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert not isinstance(caught.value.__context__, ConfigError)


_MEMORY_AND_REDIS = """
[tiered_cache]
namespace = "tweets"

[[tiered_cache.tiers]]
kind = "memory"

[[tiered_cache.tiers]]
kind = "redis"
url = "redis://localhost:6379/0"
"""


#: A memory tier and a Redis tier at its defaults: a variable that makes both one kind
#: makes their names one.
_MEMORY_AND_DEFAULT_REDIS = _MEMORY_AND_REDIS.replace('url = "redis://localhost:6379/0"\n', "")


@pytest.mark.parametrize(
    ("config", "setting", "named"),
    [
        (
            _MEMORY_AND_REDIS,
            ("TIERED_CACHE_TIERS__0__KIND", "redis"),
            "tiered_cache.tiers[1].name: tiers[0] has this name too "
            "(TIERED_CACHE_TIERS__0__KIND sets tiers[0].kind)",
        ),
        (
            _MEMORY_AND_DEFAULT_REDIS,
            ("TIERED_CACHE_TIERS__1__KIND", "memory"),
            "tiered_cache.tiers[1].name: tiers[0] has this name too "
            "(TIERED_CACHE_TIERS__1__KIND sets tiers[1].kind)",
        ),
        (
            _MEMORY_AND_REDIS,
            ("TIERED_CACHE_TIERS__1__NAME", "memory"),
            "TIERED_CACHE_TIERS__1__NAME (tiered_cache.tiers[1].name): tiers[0] has this name too",
        ),
    ],
    ids=["earlier-kind", "later-kind", "later-name"],
)
def test_two_tiers_of_one_name_are_refused_when_the_settings_are_loaded(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    setting: tuple[str, str],
    named: str,
) -> None:
    """A tier's name labels its series: two of one name in a chain were accepted, and only
    Prometheus's register() refused the chain, long after the settings were loaded. The
    variable behind either name is named (one that changed an earlier tier's kind was not:
    the error's path is the later tier's); the name itself never is."""
    path = tmp_path / "tiered_cache.toml"
    path.write_text(config)
    assert [tier.kind for tier in load_settings(path).tiers] == ["memory", "redis"]
    variable, value = setting
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{named}: a tier's name labels its series"), message
    assert f"'{value}'" not in message, message
