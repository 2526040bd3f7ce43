"""Errors vidrec raises on purpose.

Every error says what was wrong and how to fix it. Callers (the CLI, the HTTP app) catch
`VidrecError` and show its message; anything else escaping is a bug.

The process exit codes of the ``vidrec`` jobs live here too, next to the errors that map to
them, so that a scheduler (cron, systemd, Airflow, ...) can act on them:

======  ===================  ==========================================================
code    name                 meaning
======  ===================  ==========================================================
0       `EXIT_OK`            success (a retrain published a new bundle)
1       (Python's own)       unexpected exception: a bug; the traceback is in the log
2       `EXIT_FAILED`        failed on bad input, config or artifacts; serving untouched
3       `EXIT_GATED_OUT`     a retrain finished but its bundle was not better than the
                             serving one; the serving bundle was kept
75      `EXIT_LOCKED`        another run holds the job lock (``EX_TEMPFAIL``): retry later
130     `EXIT_INTERRUPTED`   interrupted (Ctrl-C / SIGINT); serving untouched
======  ===================  ==========================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 2
EXIT_GATED_OUT = 3
EXIT_LOCKED = 75  # EX_TEMPFAIL in sysexits.h: a temporary failure, the caller may retry
EXIT_INTERRUPTED = 130


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


class AuthError(VidrecError):
    """A request lacks a valid API key (401), or its key lacks the scope it needs (403).

    Attributes:
        status: The HTTP status to answer with.
    """

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class StoreError(VidrecError):
    """The event store cannot be used (unreadable, newer than this code, unreachable)."""


class LockHeldError(VidrecError):
    """Another run holds the job lock of an artifacts root; the message says who and since when.

    Attributes:
        holder: What the holder recorded about itself (pid, host, start time, command), or
            an empty dict when it could not be read.
    """

    def __init__(self, message: str, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder = dict(holder or {})


def exit_code_for(error: BaseException) -> int:
    """The process exit code a job should end with after ``error``.

    `LockHeldError` gives `EXIT_LOCKED` (retry later); any other `VidrecError` gives
    `EXIT_FAILED`; `KeyboardInterrupt` gives `EXIT_INTERRUPTED`. Anything else is a bug: it is
    re-raised by the CLI (exit code 1 with a traceback), and this returns 1 for it.
    """
    if isinstance(error, LockHeldError):
        return EXIT_LOCKED
    if isinstance(error, VidrecError):
        return EXIT_FAILED
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return 1
