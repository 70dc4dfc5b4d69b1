"""The ``tiered-cache`` command line.

Each subcommand is a :class:`Subcommand` in :data:`SUBCOMMANDS`: a name, a one-line help, a
function that adds its arguments to its parser, and a function that runs it and returns the exit
status. Adding a subcommand is adding an entry (see :func:`register`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .registry import BUSES_GROUP, SOURCES_GROUP, TIERS_GROUP, load_entry_point

__all__ = [
    "COMMANDS_GROUP",
    "INTERRUPTED",
    "READER_GONE",
    "SUBCOMMANDS",
    "Subcommand",
    "main",
    "register",
    "version_text",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Subcommand:
    """One ``tiered-cache NAME ...`` command."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}

#: Entry-point group of the subcommands other distributions add.
COMMANDS_GROUP = "tiered_cache.commands"


def register(command: Subcommand) -> Subcommand:
    """Add ``command`` to the command line (replacing one of the same name)."""
    SUBCOMMANDS[command.name] = command
    return command


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


# -- replay ---------------------------------------------------------------------------------


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    from .replay import FORMATS

    parser.add_argument("trace", help="path of the trace file")
    parser.add_argument("--format", choices=FORMATS, default="keys", help="trace format")
    parser.add_argument(
        "--l1-size", type=int, required=True, help="entries of the memory tier (max_entries)"
    )
    parser.add_argument(
        "--admission",
        choices=("hot-keys", "always"),
        default="hot-keys",
        help="the memory tier's admission policy",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also compute LRU and Belady's optimum, and ARC, S3-FIFO and W-TinyLFU when "
        "libcachesim is installed",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress bar on stderr (auto: when stderr is a terminal); tqdm's when it is "
        "installed, else a plain progress line",
    )


def _progress(args: argparse.Namespace) -> Callable[[Iterable[T], int, str], Iterable[T]] | None:
    """Wraps an iterable in a progress bar on stderr; ``None`` when there is to be no bar.

    A pipe or a file gets no bar, unless asked for (``--progress always``). tqdm comes with the
    ``examples`` extra, not the core: without it the bar is the core's plain progress line
    (asked for a bar, the command drew nothing and said nothing).
    """
    wanted = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    if not wanted:
        return None
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs; optional
    except ImportError:
        return _plain_bar
    return lambda items, total, label: tqdm(
        items, total=total or None, desc=label, unit=" reads", unit_scale=True, leave=False
    )


def _plain_bar(items: Iterable[T], total: int, label: str) -> Iterator[T]:
    """``items`` counted on a :class:`~tiered_cache.progress.ProgressLine` (drawn even on a
    pipe: the caller decided there is to be a bar), ended with its last state."""
    from .progress import ProgressLine

    line = ProgressLine(sys.stderr, unit="reads", enabled=True)
    done = 0
    for item in items:
        yield item
        done += 1
        line.update(done, total or None, label)
    line.finish(done, total or None, label)


def _replay_run(args: argparse.Namespace) -> int:
    from .replay import (
        LIBCACHESIM_POLICIES,
        belady_hits,
        count_reads,
        libcachesim_hits,
        lru_hits,
        read_trace,
        replay,
    )

    if args.l1_size < 1:
        _error("--l1-size must be at least 1")
        return 2
    progress = _progress(args)
    # The reads stream from the file through the tier: a trace larger than memory (or an ARC
    # line standing for 10**14 blocks) replays in the tier's own memory. Only --compare holds
    # the keys, since Belady's optimum looks ahead over the whole trace.
    try:
        requests: Iterable[tuple[float | None, str]]
        if args.compare:
            requests = list(read_trace(args.trace, args.format))
            total = len(requests)
        else:
            requests = read_trace(args.trace, args.format)
            # Counting the bar's total reads the trace once more: a trace that is not a
            # regular file (a pipe, `<(zcat trace.gz)`, /dev/stdin) can be read once, and was
            # then empty for the replay (0 requests, exit 0). Its bar has no total.
            counted = progress is not None and Path(args.trace).is_file()
            total = count_reads(args.trace, args.format) if counted else 0
        shown = requests if progress is None else progress(requests, total, args.admission)
        result = replay(shown, args.l1_size, admission=args.admission)
    except ConfigError as exc:  # the memory tier's settings refuse the flags
        _error(f"--l1-size {args.l1_size} --admission {args.admission}: {exc}")
        return 2
    except (OSError, ValueError) as exc:
        _error(f"cannot read trace {args.trace!r}: {exc}")
        return 1
    report: dict[str, Any] = {
        "trace": args.trace,
        "format": args.format,
        "l1_size": args.l1_size,
        "admission": args.admission,
        "requests": result.requests,
        "hits": result.hits,
        "hit_ratio": result.hit_ratio,
    }
    if args.compare:
        keys = [key for _, key in requests]

        def bar(items: list[str], label: str) -> Iterable[str]:
            return items if progress is None else progress(items, total, label)

        peers: dict[str, int] = {"lru": lru_hits(bar(keys, "lru"), args.l1_size)}
        for policy in LIBCACHESIM_POLICIES:
            hits = libcachesim_hits(policy, bar(keys, policy), args.l1_size)
            if hits is not None:
                peers[policy.lower()] = hits
        peers["belady"] = belady_hits(keys, args.l1_size)
        for name, hits in peers.items():
            report[name] = {"hits": hits, "hit_ratio": hits / max(total, 1)}
    if args.json:
        _write(json.dumps(report))
        return 0
    _write(f"requests   {result.requests}")
    _write(f"hits       {result.hits}")
    _write(f"hit_ratio  {result.hit_ratio:.4f}")
    if args.compare:
        for name in peers:
            _write(f"{name:<10} {report[name]['hit_ratio']:.4f}")
    return 0


register(
    Subcommand(
        name="replay",
        help="replay a trace through the memory tier and print its hit ratio",
        add_arguments=_replay_arguments,
        run=_replay_run,
    )
)


# -- entry point ----------------------------------------------------------------------------


def _error(message: str) -> None:
    sys.stderr.write(f"tiered-cache: {message}\n")


def _discover_commands() -> None:
    """Add the subcommands that installed packages declare under ``tiered_cache.commands``
    (``follow-stream`` comes from tiered-cache-dynamodb); the core imports no adapter."""
    for entry in entry_points(group=COMMANDS_GROUP):
        try:
            command = load_entry_point(entry, f"subcommand {entry.name!r}")
        except ConfigError as exc:  # one broken package must not take the others' commands
            _error(f"warning: {exc}; skipped")
            continue
        if isinstance(command, Subcommand):
            SUBCOMMANDS.setdefault(command.name, command)  # never replaces a core command


def version_text() -> str:
    """``tiered-cache X.Y.Z`` and the installed distributions that plug into it, with theirs.

    Read from the installed metadata (the one place a version is written is pyproject.toml),
    so a bug report names exactly what was installed.
    """
    try:
        core = version("tiered-cache")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        core = "unknown (not installed)"
    plugins = sorted(
        {
            f"{point.dist.name} {point.dist.version}"
            for group in (TIERS_GROUP, SOURCES_GROUP, BUSES_GROUP, COMMANDS_GROUP)
            for point in entry_points(group=group)
            if point.dist is not None and point.dist.name != "tiered-cache"
        }
    )
    return f"tiered-cache {core}" + (f" ({', '.join(plugins)})" if plugins else "")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every registered subcommand."""
    _discover_commands()
    parser = argparse.ArgumentParser(
        prog="tiered-cache", description="The tiered-cache command line."
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


#: Exit statuses of a command stopped from outside, as a shell reports a process killed by
#: the signal: Ctrl-C (SIGINT), and the reader of its output gone (SIGPIPE: ``| head -1``).
INTERRUPTED = 128 + signal.SIGINT
READER_GONE = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tiered-cache`` with ``argv`` (default: the process's arguments).

    Every subcommand ends here: Ctrl-C and a reader of the output that went away end it with
    the shell's statuses for them, without a traceback (both printed Python's)."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        return run(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return INTERRUPTED
    except BrokenPipeError:
        # Nothing more can be shown; stdout goes to /dev/null so that the interpreter's own
        # flush of it as the process exits does not fail again (and print that).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return READER_GONE


if __name__ == "__main__":
    # Run as ``python -m tiered_cache.cli``: this module is ``__main__``, and the adapters'
    # subcommands are instances of tiered_cache.cli's Subcommand, not of this copy's (which
    # refused them as not subcommands): the command line is the imported module's.
    from tiered_cache.cli import main as imported_main

    sys.exit(imported_main())
