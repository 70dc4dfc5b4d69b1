"""The classic script's output and the load generator's --json summary, on short runs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from examples.tweets import classic, loadgen
from tiered_cache.testing.servers import redis_server_binary

pytestmark = pytest.mark.skipif(
    redis_server_binary() is None, reason="redis-server is not installed"
)


@pytest.fixture(autouse=True)
def _no_configured_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    # The scripts must choose the embedded default (a private redis-server), never a Redis
    # some variable of the developer's shell points at.
    import os

    for name in list(os.environ):
        if name.upper().startswith("TIERED_CACHE_"):
            monkeypatch.delenv(name)


def test_tweets_classic_prints_two_typed_items_second_from_a_tier(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert classic.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    items = [ast.literal_eval(line) for line in lines if line.startswith("{")]
    served = [line for line in lines if "served by" in line]
    assert len(items) == 2
    assert items[0] == items[1]
    item = items[0]
    assert list(item) == ["tweet_id", "text", "created"]
    assert item["text"] == {"S": "Example tweet."}
    assert set(item["tweet_id"]) == {"S"}
    assert set(item["created"]) == {"S"}
    assert "DynamoDB" in served[0]
    assert "served by the memory tier" in served[1]
    assert any("private redis-server" in line for line in lines)


def test_tweets_loadgen_json_summary_with_classic_baseline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plot = tmp_path / "load.png"
    argv = ["--duration", "1.5", "--rate", "200", "--threads", "4", "--tweets", "200"]
    argv += ["--baseline", "classic", "--json", "--no-progress", "--plot", str(plot)]
    assert loadgen.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    tiered, baseline = report["results"]
    assert (tiered["pattern"], baseline["pattern"]) == (loadgen.TIERED, loadgen.CLASSIC)
    for summary in (tiered, baseline):
        assert summary["reads"] > 0
        assert summary["caller_errors"] == sum(summary["errors"].values())
        assert summary["throttled_requests"] is not None
        assert 0 <= summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
        served = sum(summary["hits"].values()) + summary["served_by_source"]
        assert served >= summary["reads"] - summary["caller_errors"]
    assert set(tiered["hits"]) == {"memory", "redis"}
    assert tiered["hits"]["memory"] > 0
    assert set(baseline["hits"]) == {"redis"}
    assert baseline["memory_share"] == 0.0
    # Classic cache-aside asks Redis on every read; the chain on every read memory missed.
    assert baseline["redis_round_trips"] >= baseline["reads"]
    assert tiered["redis_round_trips"] >= tiered["reads"] - tiered["hits"]["memory"]
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert report["plot"] == str(plot)


def test_tweets_percentile_and_plan_are_deterministic() -> None:
    assert loadgen.percentile([], 0.5) == 0.0
    assert loadgen.percentile([1, 2, 3, 4], 0.5) == 2.0
    assert loadgen.percentile([1, 2, 3, 4], 0.99) == 4.0
    options = loadgen.LoadOptions(duration=0.5, rate=100, initial_tweets=50)
    assert loadgen.plan_requests(options) == loadgen.plan_requests(options)
    assert loadgen.tweet_id_of("tweet:1") == loadgen.tweet_id_of("tweet:1")
