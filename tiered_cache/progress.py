"""A progress line for long command-line work: drawn in place on a terminal, silent when piped.

    progress = ProgressLine(sys.stderr, unit="records")
    for done in ...:
        progress.update(done, total)            # redrawn at most every `interval` seconds
    progress.finish(done, total, "caught up")   # the last state, then a newline

When the stream is not a terminal (a pipe, a file, a log collector) nothing is written at all:
the command's output stays exactly what a script parses. Time comes from ``clock`` (tests
inject one), never read here directly.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["ProgressLine"]

_BAR_WIDTH = 24


class ProgressLine:
    """One status line, ``[#####.....]  45%  1,234/2,740 records  310/s  caught up``.

    Args:
        stream: where to draw (``sys.stderr``, so stdout stays the command's result).
        unit: what is counted, for the text.
        enabled: draw or not; ``None`` (default): only when ``stream`` is a terminal.
        interval: the least time between two redraws, so a fast loop costs no terminal I/O.
        clock: monotonic seconds, for the rate and the redraw interval.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        unit: str = "items",
        enabled: bool | None = None,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.unit = unit
        self.enabled = _is_terminal(stream) if enabled is None else enabled
        self.interval = interval
        self._clock = clock
        self._started = clock()
        self._drawn_at: float | None = None
        self._width = 0

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        """Redraw with ``done`` of ``total`` (``None``: unknown, no bar), unless one was drawn
        less than ``interval`` ago."""
        if not self.enabled:
            return
        now = self._clock()
        if self._drawn_at is not None and now - self._drawn_at < self.interval:
            return
        self._drawn_at = now
        self._draw(self.render(done, total, note, now))

    def finish(self, done: int, total: int | None = None, note: str = "") -> None:
        """Draw the final state and end the line (nothing when disabled)."""
        if not self.enabled:
            return
        self._draw(self.render(done, total, note, self._clock()))
        self.stream.write("\n")
        self.stream.flush()
        self._width = 0

    def render(self, done: int, total: int | None, note: str, now: float) -> str:
        """The line's text (without the carriage return)."""
        parts = []
        if total:
            filled = min(_BAR_WIDTH, _BAR_WIDTH * done // total)
            parts.append(f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {100 * done // total:3d}%")
            parts.append(f"{done:,}/{total:,} {self.unit}")
        else:
            parts.append(f"{done:,} {self.unit}")
        elapsed = now - self._started
        if elapsed > 0:
            parts.append(f"{done / elapsed:,.0f}/s")
        if note:
            parts.append(note)
        columns = shutil.get_terminal_size((80, 24)).columns
        return "  ".join(parts)[: max(columns - 1, 1)]

    def _draw(self, text: str) -> None:
        # Pad with spaces to wipe what a longer previous line left behind.
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # a closed stream
        return False
