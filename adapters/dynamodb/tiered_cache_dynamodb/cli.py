"""``tiered-cache follow-stream --config FILE``: the stream follower as its own process.

The core's command line finds this command through the entry point group
``tiered_cache.commands`` (:data:`FOLLOW_STREAM`), so the core never imports this adapter.

The config file is the cache's own (its ``[tiered_cache]`` table builds the chain whose tiers
are invalidated, and its ``dynamodb`` source names the table), plus an optional
``[tiered_cache_stream]`` table of :class:`~tiered_cache_dynamodb.streams.StreamSettings`::

    [tiered_cache_stream]
    checkpoint = "/var/lib/tweets/stream.json"
    poll_interval = "1s"
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from tiered_cache.chain import TieredCache
from tiered_cache.cli import Subcommand
from tiered_cache.errors import ConfigError, TieredCacheError
from tiered_cache.progress import ProgressLine
from tiered_cache.settings import CacheSettings, load_settings, read_config_file, validate_at

from .settings import DynamoDBSourceSettings
from .streams import StreamFollower, StreamSettings

__all__ = [
    "FOLLOW_STREAM",
    "STREAM_TABLE",
    "add_follow_stream_arguments",
    "add_follow_stream_parser",
    "load_follow_stream_config",
    "main",
    "run_follow_stream",
]

logger = logging.getLogger(__name__)

#: The top-level table of the config file that holds the stream settings.
STREAM_TABLE = "tiered_cache_stream"
HELP = "follow the table's DynamoDB stream and invalidate changed keys in every tier"


def add_follow_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.add_argument("--config", required=True, help="the cache's TOML config file")
    parser.add_argument("--checkpoint", help="JSON file for the position (overrides the file)")
    parser.add_argument(
        "--start-position",
        choices=("TRIM_HORIZON", "LATEST"),
        help="where a first run begins (default TRIM_HORIZON)",
    )
    parser.add_argument("--poll-interval", help="wait after an empty pass, such as '1s'")
    parser.add_argument(
        "--max-records",
        type=int,
        help="stop after processing this many records (for tests and one-off catch-ups)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        help="give up (exit 1) after this many passes failed in a row; default: retry with "
        "backoff until stopped",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,  # any case; argparse refuses the others (logging raised a traceback)
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="DEBUG, INFO, WARNING or ERROR (default INFO): tiered-cache's own logs; other "
        "libraries log warnings and above",
    )


def add_follow_stream_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``follow-stream`` to an ``add_subparsers()`` object; for CLIs built by hand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "follow-stream", help=HELP, description=HELP
    )
    add_follow_stream_arguments(parser)
    parser.set_defaults(_run=run_follow_stream)
    return parser


def load_follow_stream_config(
    path: str | Path, **overrides: Any
) -> tuple[CacheSettings, StreamSettings]:
    """The cache settings and the resolved stream settings of a config file.

    ``overrides`` replace fields of the ``[tiered_cache_stream]`` table. Raises
    :class:`ConfigError` naming the problem.
    """
    cache_settings = load_settings(path)
    table = read_config_file(path).get(STREAM_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {str(path)!r}: [{STREAM_TABLE}] must be a table")
    stream = validate_at(StreamSettings, {**table, **overrides}, STREAM_TABLE)
    source = cache_settings.source
    dynamodb = source if isinstance(source, DynamoDBSourceSettings) else None
    return cache_settings, stream.resolve(dynamodb)


#: The loggers --log-level sets: the command's own (the core's and the adapters').
OWN_LOGGERS = ("tiered_cache", "tiered_cache_redis", "tiered_cache_dynamodb")


def _configure_logging(level: str) -> None:
    """Log lines on stderr: ``level`` for the command's own loggers, warnings and above for
    the other libraries. Not the root's level: botocore's DEBUG records print each request's
    headers, an AWS session token among them."""
    logging.basicConfig(
        level=max(logging.WARNING, logging.getLevelName(level)),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _option_problem(field: str, value: Any) -> str | None:
    """What is wrong with an option's value, naming the option (``--poll-interval
    (tiered_cache_stream.poll_interval): ...``, as a variable is named): the settings' own
    error names only the field, of a table the file need not have."""
    try:
        validate_at(StreamSettings, {field: value}, STREAM_TABLE)
    except ConfigError as exc:
        path = f"{STREAM_TABLE}.{field}"
        message = str(exc).removeprefix(f"{path}: ")
        return f"--{field.replace('_', '-')} ({path}): {message}"
    return None


def run_follow_stream(args: argparse.Namespace) -> int:
    """Run the command: 0 when stopped in good order (signal, ``--max-records``); 1 when it
    stopped while failing (records not invalidated everywhere, so not checkpointed: a signal
    during the retries, or ``--max-failures``), or on a stream that cannot be read; 2 on a bad
    configuration. The counters are printed as one JSON line in every case but 2."""
    _configure_logging(args.log_level)
    overrides: dict[str, Any] = {}
    if args.checkpoint is not None:
        overrides["checkpoint"] = args.checkpoint
    if args.start_position is not None:
        overrides["start_position"] = args.start_position
    if args.poll_interval is not None:
        overrides["poll_interval"] = args.poll_interval
    for option, value in (
        ("--max-records", args.max_records),
        ("--max-failures", args.max_failures),
    ):
        if value is not None and value < 1:
            _error(f"{option} must be at least 1")
            return 2
    for field, value in overrides.items():
        problem = _option_problem(field, value)
        if problem is not None:
            _error(problem)
            return 2
    try:
        cache_settings, stream_settings = load_follow_stream_config(args.config, **overrides)
    except (ConfigError, OSError) as exc:
        _error(str(exc))
        return 2
    if all(tier.kind == "memory" for tier in cache_settings.tiers):
        # This process's memory is nobody else's: only shared tiers (and the bus) carry the
        # invalidations to the readers.
        logger.warning(
            "the config has only in-process tiers: invalidations reach other processes only "
            "through the invalidation bus"
        )
    try:
        cache = TieredCache.from_settings(cache_settings)
    except TieredCacheError as exc:
        _error(f"cannot build the cache: {exc}")
        return 2
    try:
        follower = StreamFollower(cache, stream_settings)
        in_order = False
        try:
            follower.connect()
            with _stop_on_signals(follower), _catch_up_progress(follower, args.max_records):
                in_order = follower.run_forever(
                    max_records=args.max_records, max_failures=args.max_failures
                )
        except KeyboardInterrupt:
            in_order = follower.stats()["failing"] == 0
        except TieredCacheError as exc:
            _error(str(exc))
            return 1
        finally:
            follower.close()
        stats = follower.stats()
        sys.stdout.write(json.dumps(stats, default=str) + "\n")
        if not in_order:
            _error(
                f"stopped while failing ({stats['failing']} failed pass(es) in a row, "
                f"{stats['errors']} errors in all): the records not invalidated everywhere "
                "are not checkpointed and will be read again by the next run"
            )
            return 1
        return 0
    finally:
        cache.close()


@contextmanager
def _catch_up_progress(follower: StreamFollower, max_records: int | None) -> Iterator[None]:
    """On a terminal, a progress line on stderr until the follower has caught up with the
    stream (a pass found no record) or stops; piped or redirected, nothing at all."""
    progress = ProgressLine(sys.stderr, unit="records")
    if not progress.enabled:
        yield
        return
    stopped = threading.Event()

    def over(stats: dict[str, Any]) -> bool:
        return bool(stats["idle_passes"]) or stopped.is_set()

    def show() -> None:
        while True:
            # Woken by every counter change, and at least once per redraw interval.
            ended = follower.wait_until(over, timeout=progress.interval)
            stats = follower.stats()
            if ended:
                note = "caught up" if stats["idle_passes"] else "stopped"
                progress.finish(stats["records"], max_records, note)
                return
            progress.update(stats["records"], max_records, f"{stats['shards']} shard(s)")

    thread = threading.Thread(target=show, name="follow-stream-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join(timeout=5)


@contextmanager
def _stop_on_signals(follower: StreamFollower) -> Iterator[None]:
    """SIGTERM and SIGINT stop the follower after its current page (checkpointed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        follower.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _error(message: str) -> None:
    sys.stderr.write(f"tiered-cache follow-stream: {message}\n")


#: The entry point of group ``tiered_cache.commands``.
FOLLOW_STREAM = Subcommand(
    name="follow-stream",
    help=HELP,
    add_arguments=add_follow_stream_arguments,
    run=run_follow_stream,
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tiered_cache_dynamodb.cli --config FILE``: the command without the core's
    command line (for images that do not install its script)."""
    parser = argparse.ArgumentParser(prog="tiered-cache follow-stream", description=HELP)
    add_follow_stream_arguments(parser)
    return run_follow_stream(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
