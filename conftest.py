"""Every Python block of the Markdown files (README.md, docs/, the adapters' readmes) is a test.

pytest-markdown-docs turns each ```` ```python ```` fence into a test item; a fence marked
``notest`` is skipped on purpose, ``continuation`` runs after the block before it. Only
Markdown files are collected here (the plugin's ``--markdown-docs`` would also import every
module to read its docstrings).

A block runs as a reader would run it: in an empty directory holding the ``tiered_cache.toml``
its page shows (the page's TOML block whose first line is ``# tiered_cache.toml``, else the
README's configuration block, unchanged), with a Redis and a DynamoDB to talk to. Those are a
private ``redis-server`` and moto's server on free loopback ports; the environment points the
file at them exactly as a reader points it at their own: ``TIERED_CACHE_TIERS__<i>__URL`` for
the Redis tier, ``AWS_ENDPOINT_URL`` and dummy credentials for boto3. The table ``tweet`` (with
a stream) holds tweet 42 when a block starts. Caches a block builds are closed after it (a
page need not end every example with ``cache.close()``).
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from pytest_markdown_docs.plugin import MARKER_NAME, MarkdownTextFile

ROOT = Path(__file__).resolve().parent
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)
TWEET_42 = {"tweet_id": {"S": "42"}, "text": {"S": "Example tweet."}}

# Tests assert behaviour and counts, never times: hypothesis's default deadline (200 ms an
# example) failed a property test of the ghosts on a loaded machine. Loaded here, before any
# test module is imported, so every @settings(...) inherits it.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".md" and not parent.config.option.markdowndocs:
        collector: pytest.Collector = MarkdownTextFile.from_parent(parent, path=file_path)
        return collector
    return None


def page_config(page: Path) -> str:
    """The ``tiered_cache.toml`` a page's blocks read: its own, else the README's."""
    for block in TOML_BLOCK.findall(page.read_text(encoding="utf-8")):
        if block.startswith("# tiered_cache.toml"):
            return str(block)
    for block in TOML_BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        if "[tiered_cache]" in block:
            return str(block)
    raise LookupError("README.md shows no [tiered_cache] configuration block")


@pytest.fixture(scope="session")
def docs_redis() -> Iterator[Any]:
    from tiered_cache.testing.servers import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def docs_dynamodb() -> Iterator[Any]:
    import logging

    from tiered_cache_dynamodb.testing import MotoDynamoDB

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with MotoDynamoDB() as server:
        yield server


@pytest.fixture(autouse=True)
def docs_environment(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """For a Markdown block: the directory, the config file, Redis and DynamoDB (see above)."""
    if request.node.get_closest_marker(MARKER_NAME) is None:
        yield
        return
    import boto3
    import redis
    from tiered_cache_dynamodb import create_table
    from tiered_cache_dynamodb.testing import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

    redis_server = request.getfixturevalue("docs_redis")
    dynamodb = request.getfixturevalue("docs_dynamodb")
    config = page_config(Path(request.node.path))
    settings = tomllib.loads(config)["tiered_cache"]
    region = settings.get("source", {}).get("region", dynamodb.region)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiered_cache.toml").write_text(config, encoding="utf-8")
    for variable in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", dynamodb.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_KEY)
    for index, tier in enumerate(settings.get("tiers", [])):
        if tier.get("kind") == "redis":
            monkeypatch.setenv(f"TIERED_CACHE_TIERS__{index}__URL", redis_server.url)

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    built = _record_built_caches(monkeypatch)
    # moto's tables are process-wide: start from a known `tweet` and drop what a block made.
    client = boto3.client("dynamodb", region_name=region)
    try:
        before = _tables(client) - {"tweet"}
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            client.delete_table(TableName="tweet")
        create_table(client, "tweet", "tweet_id", stream=True)
        client.put_item(TableName="tweet", Item=TWEET_42)
        yield
    finally:
        for cache in built:
            cache.close()
        for table in _tables(client) - before:
            client.delete_table(TableName=table)
        client.close()


def _tables(client: Any) -> set[str]:
    # Every page: the other tests of the session leave hundreds of tables in moto.
    pages = client.get_paginator("list_tables").paginate()
    return {name for page in pages for name in page["TableNames"]}


def _record_built_caches(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every chain ``from_config``/``from_settings`` builds from now on, to close it after."""
    import tiered_cache.build

    built: list[Any] = []
    build_cache = tiered_cache.build.build_cache

    def recording(*args: Any, **kwargs: Any) -> Any:
        cache = build_cache(*args, **kwargs)
        built.append(cache)
        return cache

    monkeypatch.setattr(tiered_cache.build, "build_cache", recording)
    return built
