"""How the ``tiered-cache`` command ends when its reader or its user stops it: no traceback.

Both run the command in a child process, as a shell does: a reader of its output that went
away (``tiered-cache replay trace.keys ... | head -1``) and Ctrl-C (``KeyboardInterrupt``) each
ended it with Python's traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path


def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``| head -1`` or ``| true``: the output's pipe has no reader left, so writing it fails
    (``BrokenPipeError``); the command ends as a command killed by SIGPIPE reports it."""
    trace = tmp_path / "t.keys"
    trace.write_text("a\nb\na\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before the command wrote anything
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tiered_cache.cli", "replay", str(trace), "--l1-size", "5"],
            check=False,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, "")


def test_an_interrupt_ends_the_command_with_a_line_and_130(tmp_path: Path) -> None:
    """Ctrl-C during a replay: one line on stderr and the shell's 130, not a traceback. The
    interrupt is raised by the replay itself, so that it lands inside the command."""
    trace = tmp_path / "t.keys"
    trace.write_text("a\nb\na\n")
    script = textwrap.dedent(
        f"""
        import sys
        import tiered_cache.replay
        from tiered_cache.cli import main

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        tiered_cache.replay.replay = interrupted
        sys.exit(main(["replay", {str(trace)!r}, "--l1-size", "5"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (130, "tiered-cache: interrupted\n")
