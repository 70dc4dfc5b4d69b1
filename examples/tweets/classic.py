"""The classic example: create a tweet, read it twice, and see which tier served each read.

    python -m examples.tweets.classic [--config FILE]

With nothing configured it runs on the embedded default (see :mod:`examples.tweets.embedded`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from tiered_cache import TieredCache

from .embedded import Environment, environment
from .repository import TweetRepository


def served_by(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Which tier answered the one read between two ``cache.stats()`` snapshots."""
    for old, new in zip(before["tiers"], after["tiers"], strict=True):
        if new["hits"] > old["hits"]:
            return f"the {new['name']} tier"
    if after["loads"] > before["loads"]:
        return "DynamoDB (GetItem)"
    return "another caller's read of the same key (single-flight)"


def read_and_report(cache: TieredCache, repository: TweetRepository, tweet_id: str) -> str:
    """Read the tweet, print it in typed form and where it came from; return the latter."""
    before = cache.stats()
    item = repository.get(tweet_id)
    where = served_by(before, cache.stats())
    print(item)
    print(f"  -> served by {where}")
    return where


def run(env: Environment) -> list[str]:
    """The example on a ready environment; returns where each of the two reads came from."""
    repository = TweetRepository(env.cache, env.client, table=env.table)
    created = repository.create("Example tweet.")
    tweet_id = created["tweet_id"]["S"]
    print(f"created tweet {tweet_id} in table {env.table!r} (PutItem)")
    return [read_and_report(env.cache, repository, tweet_id) for _ in range(2)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", help="TOML file with a [tiered_cache] table")
    args = parser.parse_args(argv)
    with environment(args.config) as env:
        print(env.describe())
        run(env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
