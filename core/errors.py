"""Errors vidrec raises on purpose.

Every error says what was wrong and how to fix it. Callers (the CLI, the HTTP app) catch
`VidrecError` and show its message; anything else escaping is a bug.
"""

from __future__ import annotations


class VidrecError(Exception):
    """Base class of the errors vidrec raises for bad input, bad config or bad artifacts."""


class ConfigError(VidrecError, ValueError):
    """A configuration value is invalid; the message names the field (or CLI flag) to change."""


class DataError(VidrecError, ValueError):
    """Input data is unusable.

    The message names the source (file, line or column) and what to do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if source is not None:
            where.append(str(source))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        text = f"{', '.join(where)}: {message}" if where else message
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.source = source
        self.line = line
        self.column = column
        self.hint = hint


class BundleError(VidrecError):
    """A bundle is missing, incomplete, corrupted or inconsistent; it must not be served."""


class IndexBuildError(VidrecError):
    """The candidate index could not be built or tuned to the configured target."""


class NotFittedError(VidrecError):
    """A model or index was used before it was trained or loaded."""
