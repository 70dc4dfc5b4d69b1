"""Redis settings: numbers and URLs that make no sense are refused with the field's path, and a
password in a URL never reaches repr/str, an error, a log line or the tweet app's start-up line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tiered_cache_redis import RedisTierSettings

from tiered_cache import ConfigError, TieredCache, load_settings
from tiered_cache.redaction import redact_url
from tiered_cache.testing.servers import RedisServer, refused_port
from tiered_cache.testing.settings_checks import bools_taken_as_something_else

SECRET = "s3cr3t-Pa55-do-not-leak"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TIERED_CACHE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    with RedisServer(password=SECRET) as server:
        yield server


def _tiers(url: str, **fields: Any) -> list[dict[str, Any]]:
    return [{"kind": "memory"}, {"kind": "redis", "url": url, **fields}]


# -- numbers and URLs ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, "0s", float("nan"), float("inf")])
def test_a_redis_ttl_of_zero_or_nan_names_its_path(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"^tiered_cache\.tiers\[1\]\.ttl: "):
        load_settings(tiers=_tiers("redis://localhost:6379/0", ttl=bad))


def test_true_for_a_number_is_refused_naming_its_field() -> None:
    """``pool_size = true`` was a pool of one connection (pydantic's lax mode)."""

    def table_with(name: str, value: Any) -> Any:
        fields = {"url": "redis://localhost:6379/0", name: value}
        return load_settings(tiers=[{"kind": "memory"}, {"kind": "redis", **fields}]).tiers[1]

    path = "tiered_cache.tiers[1]"
    assert bools_taken_as_something_else(RedisTierSettings, path, table_with) == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://localhost:99999/0", "port"),
        ("redis://localhost:0/0", "port"),
        ("redis://localhost:abc/0", "port"),
        ("redis://localhost:6379/abc", "database"),
        ("redis://localhost:6379/-1", "database"),
        ("redis://localhost:6379?db=x", "database"),
        # redis-py sends SELECT with it at the first connect: the server refused it there
        ("redis://localhost:6379/99999999999999999999", "database"),
        ("redis://localhost:6379/2147483647", "database"),
        # str.isdigit() takes these; int() reads the first as 3 and refuses the second
        ("redis://localhost:6379/\u0663", "database"),
        ("redis://localhost:6379/\u00b2", "database"),
        # a NUL, a space or another control character in the host failed at connect
        ("redis://loc\x00alhost:6379/0", "host"),
        ("redis://a b:6379/0", "host"),
        ("redis://:secret@h\x7f:6379/0", "host"),
    ],
)
def test_a_url_with_a_bad_port_or_database_is_refused(url: str, problem: str) -> None:
    path = r"^tiered_cache\.tiers\[1\]\.url: "
    with pytest.raises(ConfigError, match=rf"{path}.*{problem}") as caught:
        load_settings(tiers=_tiers(url))
    assert "secret" not in str(caught.value)


def test_good_urls_are_still_accepted() -> None:
    for url in (
        "redis://localhost:6379/0",
        "redis://localhost",
        "rediss://user:pw@example.com:6380/15",
        "redis://localhost:6379/2147483646",
        "redis://[::1]:6379/0",
        "redis+cluster://node:7000",
        "unix:///tmp/redis.sock?db=2",
    ):
        load_settings(tiers=_tiers(url))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://localhost:6379/0?socket_timout=1", "socket_timout"),
        ("redis://localhost:6379/0?bogus=1", "bogus"),
        ("redis://localhost:6379/0?ssl_cert_reqs=none", "ssl_cert_reqs"),  # not rediss://
        ("redis://localhost:6379/0?health_check_interval=soon", "health_check_interval"),
        ("redis://localhost:6379/0?socket_timeout=x", "socket_timeout"),
        # redis-py's own error, not a ValueError: it escaped the check as a bare RedisError
        ("rediss://localhost:6379/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
    ],
)
def test_a_url_option_the_client_cannot_take_is_refused(url: str, problem: str) -> None:
    """redis-py keeps any option of a URL's query: a misspelt one (or one the connection kind
    has not, as TLS options on redis://) failed every command and every bus
    subscription with TypeError for the life of the process, the tier skipped and memory
    bypassed; a value it cannot read raised a bare ValueError from the build. (A cluster
    URL's options go to the cluster client, which connects at build.)"""
    with pytest.raises(ConfigError, match=rf"^tiered_cache\.tiers\[1\]\.url: .*{problem}"):
        load_settings(tiers=_tiers(url))
    with pytest.raises(ConfigError, match=rf"^tiered_cache\.bus\.url: .*{problem}"):
        load_settings(bus={"kind": "redis", "url": url})


def test_url_options_the_client_takes_are_accepted() -> None:
    for url in (
        "redis://localhost:6379/0?socket_keepalive=true&health_check_interval=5",
        f"rediss://:{SECRET}@example.com:6380/0?ssl_cert_reqs=none",
        "unix:///tmp/redis.sock?db=2&client_name=app",
        "redis+cluster://node:7000?read_from_replicas=true",
    ):
        load_settings(tiers=_tiers(url))


@pytest.mark.parametrize("field", ["timeout", "health_check_interval"])
def test_bus_durations_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^tiered_cache\.bus\.{field}: "):
        load_settings(tiers=_tiers("redis://localhost:6379/0"), bus={"kind": "redis", field: 0})


@pytest.mark.parametrize(
    ("field", "value"), [("cool_down", 0), ("failure_threshold", 0), ("enabled", "maybe")]
)
def test_the_bus_breaker_fields_name_their_path(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^tiered_cache\.bus\.breaker\.{field}: "):
        load_settings(
            tiers=_tiers("redis://localhost:6379/0"),
            bus={"kind": "redis", "breaker": {field: value}},
        )


def test_the_bus_breaker_keeps_its_own_defaults_when_one_field_is_given() -> None:
    """One failure opens it and it cools down for 1 s: the bus's defaults, not a tier's
    (5 failures, 5 s), also when the table sets only some fields."""
    bus = load_settings(tiers=_tiers("redis://localhost:6379/0")).bus
    assert (bus.breaker.enabled, bus.breaker.failure_threshold, bus.breaker.cool_down) == (
        True,
        1,
        1.0,
    )
    bus = load_settings(
        tiers=_tiers("redis://localhost:6379/0"),
        bus={"kind": "redis", "breaker": {"cool_down": "3s"}},
    ).bus
    assert (bus.breaker.failure_threshold, bus.breaker.cool_down) == (1, 3.0)
    with pytest.raises(ConfigError, match=r"^tiered_cache\.bus\.breaker\.colddown: "):
        load_settings(bus={"kind": "redis", "breaker": {"colddown": "3s"}})


def test_a_bad_bus_url_names_its_path() -> None:
    with pytest.raises(ConfigError, match=r"^tiered_cache\.bus\.url: .*port"):
        load_settings(bus={"kind": "redis", "url": "redis://localhost:70000/0"})


def test_a_pool_larger_than_a_redis_server_takes_is_refused() -> None:
    # redis-py's blocking pool puts one placeholder per connection in a queue when it is made:
    # a pool_size of 10**12 hung the build (and grew without bound) instead of failing it.
    with pytest.raises(ConfigError, match=r"^tiered_cache\.tiers\[1\]\.pool_size: "):
        load_settings(tiers=_tiers("redis://localhost:6379/0", pool_size=10**12))
    load_settings(tiers=_tiers("redis://localhost:6379/0", pool_size=10_000))


def test_the_longest_durations_accepted_are_ones_redis_and_its_client_take(
    locked_redis: RedisServer,
) -> None:
    # 1e300 passed the settings and then failed every fill (PX out of range) or every command
    # (a socket timeout that does not fit): the cap of parse_duration is under both limits.
    longest = "36500d"
    settings = load_settings(
        namespace="longest",
        protection={"lease_ttl": longest, "lease_wait": longest, "max_stale": longest},
        tiers=_tiers(locked_redis.url, ttl=longest, timeout=longest, connect_timeout=longest),
    )
    with TieredCache.from_settings(settings) as cache:
        cache.set("k", {"v": 1})
        assert cache.get("loaded", loader=lambda: 2) == 2
        assert cache.stats()["tiers"][1]["errors"] == 0
    for field in ("ttl", "timeout", "connect_timeout"):
        with pytest.raises(ConfigError, match=rf"^tiered_cache\.tiers\[1\]\.{field}: .*100 years"):
            load_settings(tiers=_tiers(locked_redis.url, **{field: 1e300}))


# -- secrets ---------------------------------------------------------------------------------


def _assert_hidden(text: str) -> None:
    assert SECRET not in text
    assert "***" in text, text


def test_repr_and_str_of_the_settings_hide_the_password() -> None:
    url = f"redis://:{SECRET}@localhost:6379/0"
    settings = load_settings(
        tiers=_tiers(url), bus={"kind": "redis", "url": f"redis://user:{SECRET}@localhost/1"}
    )
    for shown in (repr(settings), str(settings), repr(settings.tiers[1]), str(settings.bus)):
        _assert_hidden(shown)
    # The value itself is intact: only its display is redacted.
    tier = settings.tiers[1]
    assert isinstance(tier, RedisTierSettings)
    assert tier.url == url


#: A Redis ACL user (or an access key id where a URL takes one): shown, it named the account
#: whose password was masked beside it.
USER = "acl-user-do-not-leak"


def test_the_user_of_a_url_is_hidden_with_its_password() -> None:
    url = f"redis://{USER}:{SECRET}@localhost:6379/0"
    settings = load_settings(tiers=_tiers(url), bus={"kind": "redis", "url": url})
    for shown in (repr(settings), str(settings), repr(settings.tiers[1]), str(settings.bus)):
        assert USER not in shown and SECRET not in shown, shown
    with pytest.raises(ConfigError) as caught:  # a port no TCP port is: the URL is shown
        load_settings(tiers=_tiers(f"redis://{USER}:{SECRET}@localhost:99999/0"))
    assert "localhost:99999" in str(caught.value)
    assert USER not in str(caught.value) and SECRET not in str(caught.value)


def test_an_unknown_codec_is_named_by_its_path_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tiers=_tiers("redis://localhost:6379/0", codec=SECRET))
    message = str(caught.value)
    assert message.startswith("tiered_cache.tiers[1].codec: unknown codec"), message
    assert "'json', 'msgpack', 'pickle'" in message and SECRET not in message, message
    with pytest.raises(ValidationError) as direct:
        RedisTierSettings(codec=SECRET)
    assert SECRET not in str(direct.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@localhost:99999/0",
        f"redis://:{SECRET}@localhost:6379/abc",
        f"http://:{SECRET}@localhost:6379/0",
        f"redis://u:{SECRET}@localhost:6379/0?db=x",
        f"redis://localhost:6379/0?password={SECRET}&db=x",
        # Secrets under other names: the TLS key's passphrase (a redis-py connection option)
        # and a token, both shown as given.
        f"rediss://localhost:6379/0?ssl_password={SECRET}&db=x",
        f"redis://localhost:6379/0?auth_token={SECRET}&db=x",
    ],
)
def test_errors_about_a_malformed_url_hide_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tiers=_tiers(url))
    _assert_hidden(str(caught.value))
    # Built directly, the model's own ValidationError does not echo the input either.
    with pytest.raises(ValidationError) as direct:
        RedisTierSettings(url=url)
    assert SECRET not in str(direct.value)


@pytest.mark.parametrize(
    "url",
    [
        # The scheme left out, as tools that take "host:port" are given it.
        f"default:{SECRET}@localhost:6379/0",
        f":{SECRET}@localhost:6379",
        # The password put where the URL goes (TIERED_CACHE_TIERS__1__URL=$REDIS_PASSWORD).
        SECRET,
    ],
)
def test_a_url_field_holding_no_url_does_not_show_what_it_holds(url: str) -> None:
    """Such a value was shown whole: "'default:<password>@localhost:6379/0' is not a URL"."""
    with pytest.raises(ConfigError, match="is not a URL") as caught:
        load_settings(tiers=_tiers(url))
    assert SECRET not in str(caught.value), str(caught.value)
    with pytest.raises(ValidationError) as direct:
        RedisTierSettings(url=url)
    assert SECRET not in str(direct.value)


def test_credentials_written_without_a_scheme_are_hidden_where_a_url_is_shown() -> None:
    # The Django backend shows a LOCATION it does not read through redact_url.
    assert redact_url(f"default:{SECRET}@localhost:6379/0") == "***@localhost:6379/0"
    assert redact_url(f"{SECRET}@localhost:6379") == "***@localhost:6379"
    assert redact_url("localhost:6379") == "localhost:6379"


# Generated passwords (base64, ElastiCache AUTH tokens) hold '/', '+', '#' or '?'. Written into
# the URL without percent-encoding, they end the URL's authority early: the part after them
# looked like a path, a query or a fragment, and was shown as it was.
@pytest.mark.parametrize("cut", ["/", "#", "?", "/+/="])
@pytest.mark.parametrize(
    "template",
    [
        "redis://:{pw}@localhost:6379/0",
        "redis://user:{pw}@localhost:6379/0",
        "rediss://{pw}@localhost:6379/0",
        "redis+cluster://user:{pw}@localhost:7000",
    ],
)
def test_a_password_with_a_url_delimiter_is_hidden_everywhere_it_is_shown(
    template: str, cut: str
) -> None:
    secret = SECRET[:6] + cut + SECRET[6:]
    url = template.format(pw=secret)
    shown = redact_url(url)
    assert SECRET[6:] not in shown and SECRET[:6] not in shown, shown
    assert shown.endswith("@localhost:6379/0") or shown.endswith("@localhost:7000"), shown
    try:
        settings = load_settings(tiers=_tiers(url))
    except ConfigError as exc:  # most such URLs are malformed: the error must not show it
        assert SECRET[6:] not in str(exc) and SECRET[:6] not in str(exc), str(exc)
    else:
        assert SECRET[6:] not in repr(settings) and SECRET[:6] not in repr(settings)


# The same in the query: redis-py reads a query with '&' alone between its fields (Python's
# parse_qs), so a ';' belongs to the password's value, and a '#' begins a fragment the user
# wrote as part of it.
@pytest.mark.parametrize("cut", [";", "#", ";db=1"])
@pytest.mark.parametrize("name", ["password", "ssl_password", "auth_token"])
def test_a_query_password_with_a_delimiter_is_hidden_whole(name: str, cut: str) -> None:
    url = f"redis://localhost:6379/0?{name}={SECRET[:6]}{cut}{SECRET[6:]}"
    shown = redact_url(url)
    assert SECRET[6:] not in shown and SECRET[:6] not in shown, shown
    assert shown == f"redis://localhost:6379/0?{name}=***"


def test_an_at_sign_outside_the_credentials_hides_too_much_rather_than_too_little() -> None:
    # Without a password an '@' in the query is not a secret; hiding up to it is the safe side.
    assert SECRET not in redact_url(f"redis://localhost:6379/0?client_name={SECRET}@x")
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    # ... and such a URL is still accepted.
    load_settings(tiers=_tiers("redis://localhost:6379/0?client_name=me@there"))


def test_no_log_line_of_a_working_or_failing_chain_shows_the_password(
    locked_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = load_settings(namespace="secrets", tiers=_tiers(locked_redis.url))
    with TieredCache.from_settings(good) as cache:
        cache.set("k", {"v": 1})
        assert cache.get("k") == {"v": 1}
        shown = repr(cache) + str(cache.stats())
    # Wrong password, then a server that is not there: both fail and are logged.
    for url in (
        f"redis://:{SECRET}-wrong@{locked_redis.host}:{locked_redis.port}/0",
        f"redis://:{SECRET}@127.0.0.1:{refused_port()}/0",
    ):
        settings = load_settings(namespace="secrets", tiers=_tiers(url))
        with TieredCache.from_settings(settings) as cache:
            assert cache.get("k", loader=lambda: "loaded") == "loaded"
            shown += repr(cache) + str(cache.stats())
    assert caplog.records, "the failing chains logged nothing: the test would prove nothing"
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in (record.exc_text or "")
    assert SECRET not in shown


def test_the_tweet_app_start_up_line_hides_the_password(
    locked_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples.tweets.embedded import environment

    config = tmp_path / "tweets.toml"
    config.write_text(
        "[tiered_cache]\nnamespace = 'tweets-secret'\n"
        "[[tiered_cache.tiers]]\nkind = 'memory'\n"
        f"[[tiered_cache.tiers]]\nkind = 'redis'\nurl = '{locked_redis.url}'\n"
    )
    with environment(config) as env:
        line = env.describe()
        assert env.cache.get("missing-tweet", loader=lambda: None) is None
    assert "configured" in line  # the configured (password-protected) Redis was used
    _assert_hidden(line)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


def test_a_bus_table_without_a_kind_keeps_its_fields() -> None:
    """A ``[tiered_cache.bus]`` table that leaves ``kind`` at ``auto`` (as the docs' ``bus.timeout``
    and ``bus.max_stale_when_disconnected`` do) is the bus's: resolving the kind built a bus of
    defaults, and the table's url, channel, timeouts and max_stale_when_disconnected (the 0
    Django's backend forces) were dropped without a word."""
    bus = load_settings(
        tiers=_tiers("redis://localhost:6379/0"),
        bus={
            "url": "redis://bus:6379/1",
            "channel": "mine",
            "timeout": "5s",
            "max_stale_when_disconnected": 0,
        },
    ).bus
    fields = (bus.kind, bus.url, bus.channel, bus.timeout, bus.max_stale_when_disconnected)
    assert fields == ("redis", "redis://bus:6379/1", "mine", 5.0, 0.0)


def test_a_misspelt_field_of_a_bus_without_a_kind_is_refused_by_its_path() -> None:
    with pytest.raises(ConfigError, match=r"^tiered_cache\.bus\.chanel: Extra inputs"):
        load_settings(tiers=_tiers("redis://localhost:6379/0"), bus={"chanel": "mine"})


@pytest.mark.parametrize("kind", [{"kind": "off"}, {}])  # {}: auto, no memory tier: off
def test_an_off_bus_keeps_no_url_to_show(kind: dict[str, str]) -> None:
    """A bus turned off (``TIERED_CACHE_BUS__KIND=off`` over a file that names its url) reads
    only the fields every bus has: the url was kept beside them, and the settings' repr showed
    its password."""
    settings = load_settings(
        tiers=[{"kind": "redis", "url": "redis://localhost:6379/0"}],
        bus={**kind, "url": f"redis://:{SECRET}@bus:6379/0", "max_stale_when_disconnected": 0},
    )
    assert SECRET not in repr(settings)
    assert (settings.bus.kind, settings.bus.max_stale_when_disconnected) == ("off", 0.0)
