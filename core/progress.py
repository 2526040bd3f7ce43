"""Progress of long work with its rate and the time left.

On a terminal it is one line redrawn in place; anywhere else (cron, systemd, a CI log) a bar
would fill the log with carriage returns, so it becomes a log line every ``log_seconds`` and one
at the end. Jobs take ``progress: bool`` (the CLI's ``--quiet`` sets it to False) and pass it
down; disabled, a `Progress` costs one comparison per update.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

logger = logging.getLogger(__name__)

REDRAW_SECONDS = 0.2  # a terminal line redrawn faster than this only costs time
LOG_SECONDS = 15.0


def format_seconds(seconds: float) -> str:
    """``73`` -> ``"1:13"``, ``3723`` -> ``"1:02:03"``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts units of work and reports the rate and the time left.

    Args:
        name: What is being done (``"retrieval epoch 3"``).
        total: Units expected; None when unknown (no time left is shown then).
        unit: Name of a unit (``"step"``, ``"batch"``, ``"user"``).
        enabled: False reports nothing.
        stream: Where a terminal line goes (default stderr); logging is used when it is not a
            terminal.
        log_seconds: Seconds between log lines off a terminal.
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        name: str,
        total: int | None,
        unit: str = "step",
        enabled: bool = True,
        stream: TextIO | None = None,
        log_seconds: float = LOG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.total = total if total is None or total >= 0 else None
        self.unit = unit
        self.enabled = enabled
        self.done = 0
        self._stream = sys.stderr if stream is None else stream
        self._terminal = enabled and _is_terminal(self._stream)
        self._every = REDRAW_SECONDS if self._terminal else log_seconds
        self._clock = clock
        self._started = clock()
        self._shown = self._started

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, units: int = 1) -> None:
        """Records ``units`` more done; reports when it is time to."""
        self.done += units
        if not self.enabled:
            return
        now = self._clock()
        if now - self._shown >= self._every:
            self._shown = now
            self._report(now, final=False)

    def close(self) -> None:
        """Reports the end (the total time and mean rate)."""
        if self.enabled:
            self._report(self._clock(), final=True)
            self.enabled = False

    def status(self, now: float | None = None) -> str:
        """``"name 40/100 step, 8.0 step/s, 0:07 left"`` (``"... in 0:12"`` once closed)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        text = f"{self.name} {count} {self.unit}, {rate:.1f} {self.unit}/s"
        if self.total is not None and rate > 0 and self.done < self.total:
            text += f", {format_seconds((self.total - self.done) / rate)} left"
        return text

    def _report(self, now: float, final: bool) -> None:
        text = self.status(now)
        if final:
            text += f", done in {format_seconds(now - self._started)}"
        if self._terminal:
            self._stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self._stream.flush()
        else:
            logger.info("%s", text)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
