"""The key layout is unambiguous in a shared Redis: namespaces never share keys, and a
decorator key template gives different argument tuples different keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tiered_cache import TieredCache, load_settings
from tiered_cache.testing.servers import RedisServer


def _cache(server: RedisServer, namespace: str) -> TieredCache:
    settings = load_settings(
        namespace=namespace, tiers=[{"kind": "redis", "url": server.url}], bus={"kind": "off"}
    )
    return TieredCache.from_settings(settings)


@pytest.fixture
def app_and_v2(redis_server: RedisServer, namespace: str) -> Iterator[tuple[TieredCache, ...]]:
    with _cache(redis_server, namespace) as app, _cache(redis_server, f"{namespace}:v2") as v2:
        yield app, v2


def test_a_namespace_does_not_read_a_longer_namespaces_keys(
    app_and_v2: tuple[TieredCache, TieredCache],
) -> None:
    app, v2 = app_and_v2
    v2.set("user:1", "v2's user")
    assert app.get("v2:user:1", loader=lambda: "app's own") == "app's own"
    app.set("v2:user:2", "app's v2:user:2")
    assert v2.get("user:2", loader=lambda: "v2's own") == "v2's own"
    assert v2.get("user:1") == "v2's user"


def test_clear_and_invalidate_prefix_stay_in_their_namespace(
    app_and_v2: tuple[TieredCache, TieredCache], redis_server: RedisServer
) -> None:
    app, v2 = app_and_v2
    v2.set("user:1", "v2's user")
    v2.set("other", "v2's other")
    app.set("mine", "app's")
    app.invalidate_prefix("v2:")
    assert v2.get("user:1", loader=lambda: "reloaded") == "v2's user"
    app.clear()
    assert v2.get("user:1", loader=lambda: "reloaded") == "v2's user"
    assert v2.get("other", loader=lambda: "reloaded") == "v2's other"
    assert app.get("mine", loader=lambda: "reloaded") == "reloaded"
    raw = redis.Redis.from_url(redis_server.url)
    try:
        # The documented layout: the namespace's ':' is escaped, the key is not.
        assert raw.exists(f"{app.namespace}\\:v2:user:1") == 1
    finally:
        raw.close()


def test_decorator_keys_of_different_arguments_differ(
    redis_server: RedisServer, namespace: str
) -> None:
    calls: list[tuple[str, str]] = []
    with _cache(redis_server, namespace) as cache:

        @cache.cached(key="doc:{owner}:{name}")
        def document(owner: str, name: str) -> str:
            calls.append((owner, name))
            return f"{owner}/{name}"

        assert document("alice", "secret:plan") == "alice/secret:plan"
        assert document("alice:secret", "plan") == "alice:secret/plan"
        assert calls == [("alice", "secret:plan"), ("alice:secret", "plan")]
        first = document.key_for(owner="alice", name="secret:plan")
        second = document.key_for(owner="alice:secret", name="plan")
        assert first != second
        # Invalidating one leaves the other in Redis.
        document.invalidate(owner="alice", name="secret:plan")
        assert document("alice:secret", "plan") == "alice:secret/plan"
        assert len(calls) == 2
        assert cache.get(second) == "alice:secret/plan"


def test_a_namespace_starting_with_a_brace_holds_no_other_namespaces_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    """A lease lives at ``{<Redis key>}:lease``. Unescaped, the namespace ``{tweets`` put
    its key ``42}:lease`` at ``{tweets:42}:lease``: the lease of ``tweets``'s key ``42``.
    Every read of that key then waited ``lease_wait`` for a holder that never filled it
    (seen: 1 lease wait, 2 s, on each read), and its loads never reached Redis."""
    settings = load_settings(
        namespace=namespace,
        tiers=[{"kind": "redis", "url": redis_server.url}],
        bus={"kind": "off"},
        protection={"lease_wait": "2s"},
    )
    with (
        TieredCache.from_settings(settings) as tweets,
        _cache(redis_server, "{" + namespace) as braced,
    ):
        braced.set("42}:lease", "braced's own")
        assert tweets.get("42", loader=lambda: "tweet 42") == "tweet 42"
        assert tweets.stats()["lease_waits"] == 0
        assert tweets.get("42", loader=lambda: "loaded again") == "tweet 42"  # from Redis
        assert braced.get("42}:lease") == "braced's own"
