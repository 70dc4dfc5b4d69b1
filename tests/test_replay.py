"""Trace readers, the replayer through the real memory tier, and the replay CLI."""

from __future__ import annotations

import itertools
import json
import os
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_cache.cli import main
from tiered_cache.replay import (
    belady_hits,
    count_reads,
    libcachesim_hits,
    lru_hits,
    read_trace,
    replay,
)
from tiered_cache.workloads import tweet_requests, zipf_keys


def test_keys_format(tmp_path: Path) -> None:
    trace = tmp_path / "t.keys"
    trace.write_text("a\nb\n\na\n")
    assert list(read_trace(trace, "keys")) == [(None, "a"), (None, "b"), (None, "a")]


def test_arc_format_expands_block_ranges(tmp_path: Path) -> None:
    trace = tmp_path / "t.arc"
    trace.write_text("100 3 0 1\n7 1 0 2\n101 2 0 3\n")
    keys = [key for _, key in read_trace(trace, "arc")]
    assert keys == ["100", "101", "102", "7", "101", "102"]


def test_twitter_format_keeps_reads_with_their_timestamps(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "0,k1,10,100,1,get,0\n"
        "1,k2,10,100,1,set,3600\n"
        "2,k1,10,100,2,gets,0\n"
        "3,k3,10,100,2,delete,0\n"
    )
    assert list(read_trace(trace, "twitter")) == [(0.0, "k1"), (2.0, "k1")]


def test_a_malformed_line_is_reported(tmp_path: Path) -> None:
    trace = tmp_path / "bad.arc"
    trace.write_text("12\n")
    with pytest.raises(ValueError, match="line 1"):
        list(read_trace(trace, "arc"))


def test_replay_counts_hits_through_the_memory_tier() -> None:
    result = replay([(None, key) for key in "abab"], 2)
    assert (result.requests, result.hits) == (4, 2)
    assert result.hit_ratio == 0.5


def test_replay_follows_trace_timestamps_for_ttl() -> None:
    requests = [(0.0, "a"), (1.0, "a"), (100.0, "a")]
    result = replay(requests, 10, settings={"ttl": 10.0})
    assert result.hits == 1  # the third read is past the tier's 10 s TTL


def test_hot_keys_beats_lru_and_stays_below_belady() -> None:
    keys = list(zipf_keys(5_000, 0.9, 30_000, seed=4))
    requests = [(None, key) for key in keys]
    ours = replay(requests, 50).hits
    lru = lru_hits(keys, 50)
    best = belady_hits(keys, 50)
    assert lru < ours <= best


def test_tweet_workload_replays_deterministically() -> None:
    requests = list(tweet_requests(5_000, seed=1))
    assert requests == list(tweet_requests(5_000, seed=1))
    assert all(later[0] >= earlier[0] for earlier, later in itertools.pairwise(requests))
    assert replay(requests, 100).hits <= belady_hits([key for _, key in requests], 100)


@settings(max_examples=50, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcdefghij"), max_size=200),
    size=st.integers(min_value=1, max_value=6),
)
def test_belady_is_an_upper_bound(keys: list[str], size: int) -> None:
    best = belady_hits(keys, size)
    assert lru_hits(keys, size) <= best
    assert replay([(None, key) for key in keys], size).hits <= best
    assert best <= len(keys) - len(set(keys))


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "z.keys"
    trace.write_text("\n".join(zipf_keys(2_000, 1.0, 5_000, seed=2)))
    assert main(["replay", str(trace), "--format", "keys", "--l1-size", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 5_000
    assert 0 < report["hits"] < 5_000
    assert report["hit_ratio"] == report["hits"] / 5_000
    assert "lru" not in report


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "z.arc"
    trace.write_text(
        "\n".join(
            f"{key.split(':')[1]} 1 0 {n}"
            for n, key in enumerate(zipf_keys(2_000, 1.0, 5_000, seed=3))
        )
    )
    argv = ["replay", str(trace), "--format", "arc", "--l1-size", "20", "--json", "--compare"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lru"]["hit_ratio"] <= report["belady"]["hit_ratio"]
    assert report["hit_ratio"] <= report["belady"]["hit_ratio"]


def zipf_arc_trace(tmp_path: Path) -> Path:
    trace = tmp_path / "z.arc"
    keys = zipf_keys(2_000, 1.0, 5_000, seed=3)
    trace.write_text("\n".join(f"{key.split(':')[1]} 1 0 {n}" for n, key in enumerate(keys)))
    return trace


def test_cli_compare_adds_the_libcachesim_peers_when_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("libcachesim")
    # 200 entries: libcachesim's W-TinyLFU rounds a 1% window of 20 down to nothing.
    argv = ["replay", str(zipf_arc_trace(tmp_path)), "--format", "arc", "--l1-size", "200"]
    assert main([*argv, "--json", "--compare"]) == 0
    report = json.loads(capsys.readouterr().out)
    for peer in ("arc", "s3fifo", "wtinylfu"):
        assert 0 < report[peer]["hits"] <= report["belady"]["hits"], peer
    # LRU through libcachesim's numbering agrees with the replayer's own LRU.
    assert libcachesim_hits("LRU", [str(n) for n in [1, 2, 1, 3, 1, 2]], 2) == lru_hits(
        ["1", "2", "1", "3", "1", "2"], 2
    )


def test_cli_compare_without_libcachesim_reports_lru_and_belady_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "libcachesim", None)  # import fails as if not installed
    argv = ["replay", str(zipf_arc_trace(tmp_path)), "--format", "arc", "--l1-size", "20"]
    assert main([*argv, "--json", "--compare"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"lru", "belady"} <= set(report)
    assert not {"arc", "s3fifo", "wtinylfu"} & set(report)


def test_cli_progress_bar_only_when_asked_or_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    argv = ["replay", str(zipf_arc_trace(tmp_path)), "--format", "arc", "--l1-size", "20"]
    assert main(argv) == 0  # stderr is captured, not a terminal: quiet
    assert capsys.readouterr().err == ""
    assert main([*argv, "--progress", "always"]) == 0
    err = capsys.readouterr().err
    assert "hot-keys" in err
    assert "reads" in err


def test_cli_progress_always_without_tqdm_draws_the_plain_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for a bar without tqdm installed, the replay drew nothing and said nothing."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "libcachesim", None)  # its passes: none
    argv = ["replay", str(zipf_arc_trace(tmp_path)), "--format", "arc", "--l1-size", "20"]
    assert main([*argv, "--progress", "always", "--compare"]) == 0
    err = capsys.readouterr().err
    # One finished line per pass (the replay, then LRU), each ending at its total.
    assert err.count("100%") == 2
    assert "hot-keys" in err
    assert "lru" in err
    assert err.endswith("\n")


def test_cli_text_output_and_always_admission(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("".join(f"{n},k{n % 3},1,1,1,get,0\n" for n in range(9)))
    argv = ["replay", str(trace), "--format", "twitter", "--l1-size", "5", "--compare"]
    assert main([*argv, "--admission", "always"]) == 0
    out = capsys.readouterr().out
    assert "requests   9" in out
    assert "hits       6" in out
    assert "belady" in out


def test_cli_missing_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "absent"), "--l1-size", "5"]) == 1
    assert "cannot read trace" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--l1-size", str(10**13)], "max_entries"),  # past the hot-key sketch's widest
        (["--l1-size", str(2**40), "--admission", "hot-keys"], "max_entries"),
    ],
)
def test_cli_a_memory_tier_the_settings_refuse_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    """An --l1-size the memory tier's settings refuse ended the command with pydantic's
    ValidationError and its traceback; it is a usage error (exit 2) naming the flag."""
    trace = tmp_path / "t.keys"
    trace.write_text("a\nb\n")
    assert main(["replay", str(trace), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tiered-cache: --l1-size"), err
    assert field in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("fmt", "text", "line"),
    [
        ("arc", "1 2 0 1\nfoo 3 0 2\n", 2),
        ("arc", "1 2 0 1\n\n5 x 0 3\n", 3),
        ("twitter", "0,k1,10,100,1,get,0\nsoon,k2,10,100,1,get,0\n", 2),
    ],
)
def test_a_number_a_trace_line_cannot_hold_is_reported_with_its_line(
    tmp_path: Path, fmt: str, text: str, line: int
) -> None:
    """A line too short named its line; a field that is not a number raised int()'s or
    float()'s own message (invalid literal for int() with base 10: 'foo'), naming none: the
    CLI printed that, and the user had to search a trace of millions of lines for it."""
    trace = tmp_path / "bad"
    trace.write_text(text)
    with pytest.raises(ValueError, match=f"^line {line}: "):
        list(read_trace(trace, fmt))  # type: ignore[arg-type]


@pytest.mark.parametrize("stamp", ["inf", "-inf", "nan", "Infinity", "1e309"])
def test_a_timestamp_that_is_not_a_finite_number_is_reported_with_its_line(
    tmp_path: Path, stamp: str
) -> None:
    """float() reads "inf" and "nan": a twitter trace with one such timestamp replayed without
    a word, its clock at infinity from that line on, so that every entry had expired when it
    was read (83 hits of 20,000 reads where the trace without that line gave 18,962)."""
    trace = tmp_path / "bad.csv"
    trace.write_text(f"0,k1,10,100,1,get,0\n{stamp},k1,10,100,1,get,0\n1,k1,10,100,1,get,0\n")
    with pytest.raises(ValueError, match=r"^line 2: timestamp .* is not a finite number"):
        list(read_trace(trace, "twitter"))


@pytest.mark.usefixtures("broken_distribution")
def test_a_subcommand_that_cannot_be_loaded_is_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another package's subcommand whose module cannot be imported took the whole command
    line down (a ModuleNotFoundError traceback for tiered-cache replay, even --version)."""
    trace = tmp_path / "t.keys"
    trace.write_text("a\na\n")
    assert main(["replay", str(trace), "--l1-size", "5"]) == 0
    out, err = capsys.readouterr()
    assert "hits       1" in out
    assert "'broken'" in err and "tiered_cache_no_such_module" in err


def test_the_cli_streams_a_trace_it_does_not_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI read the whole trace into a list before replaying it: an ARC line standing for
    10**14 blocks exhausted the machine's memory. 200,000 reads held as a list take about
    15 MB; streamed, the replay holds its 10-entry tier. A first replay of a short trace
    imports what the CLI imports (the adapters' clients: about 20 MB, counted too when this
    test ran first or alone) before the count starts."""
    short = tmp_path / "short.arc"
    short.write_text("0 10 0 1\n")
    assert main(["replay", str(short), "--format", "arc", "--l1-size", "10", "--json"]) == 0
    capsys.readouterr()
    trace = tmp_path / "long.arc"
    trace.write_text("0 200000 0 1\n")
    tracemalloc.start()
    try:
        assert main(["replay", str(trace), "--format", "arc", "--l1-size", "10", "--json"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 200_000 and report["hits"] == 0
    assert peak < 2_000_000, peak


def test_count_reads_adds_an_arc_lines_blocks_without_expanding_them(tmp_path: Path) -> None:
    trace = tmp_path / "t.arc"
    trace.write_text("0 99999999999999 0 1\n\n5 3 0 2\n")
    assert count_reads(trace, "arc") == 99_999_999_999_999 + 3
    keys = tmp_path / "t.keys"
    keys.write_text("a\n\nb\na\n")
    assert count_reads(keys, "keys") == 3


@pytest.mark.parametrize("fmt", ["keys", "arc"])
def test_a_trace_from_a_pipe_is_replayed_whole_with_a_progress_bar(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tiered-cache replay <(zcat trace.gz)`` on a terminal (a bar by default): the trace was
    read once to count the bar's total, and the replay then found the pipe empty: 0 requests,
    a hit ratio of 0, exit 0. A trace that is not a regular file is read once."""
    lines = "a\nb\na\n" if fmt == "keys" else "1 2 0 1\n1 1 0 2\n"
    read_end, write_end = os.pipe()
    os.write(write_end, lines.encode())
    os.close(write_end)
    try:
        argv = ["replay", f"/dev/fd/{read_end}", "--format", fmt, "--l1-size", "5", "--json"]
        assert main([*argv, "--progress", "always"]) == 0
    finally:
        os.close(read_end)
    assert json.loads(capsys.readouterr().out)["requests"] == 3
