"""One job at a time per artifacts root: an advisory ``flock`` on ``<root>/LOCK``.

The kernel releases an ``flock`` when the holder's file descriptor closes, which includes every
kind of process death (crash, ``SIGKILL``, OOM kill), so a dead run never leaves the lock held and
there is no stale-lock clean-up to get wrong. The file also says who holds it (pid, host, start
time, command) for the error message a second run prints, and for humans.

Rules that keep this correct:

- The lock file is never deleted or replaced, only rewritten in place: ``flock`` locks an inode,
  and a second inode at the same path would let two runs "hold" the lock at once.
- The lock is **not re-entrant**. A second `JobLock` on the same root fails like any other
  holder, even in the same process (``flock`` locks belong to an open file description, not to a
  process), and acquiring the same `JobLock` twice is a programming error.
- The descriptor is not inherited by programs the holder ``exec``\\ s (Python opens files
  non-inheritable), but a ``fork`` without ``exec`` shares it: such a child keeps the lock held
  until it exits too.
- ``flock`` is reliable on local file systems. On NFS it is emulated with byte-range locks (Linux
  >= 2.6.12) and depends on a working lock manager; put the artifacts root on a local disk or
  run the scheduler on one host.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from core.errors import LockHeldError

logger = logging.getLogger(__name__)

LOCK_FILE = "LOCK"


@dataclasses.dataclass(frozen=True)
class LockInfo:
    """What a lock holder records about itself.

    Attributes:
        pid: Process id of the holder.
        host: Host name of the holder.
        started_at: ISO 8601 UTC time the lock was taken.
        started: The same instant as a Unix time (seconds), for comparisons.
        command: Command line of the holder.
    """

    pid: int
    host: str
    started_at: str
    started: float
    command: str

    @classmethod
    def current(cls, command: str | None = None) -> LockInfo:
        """Info describing this process, taking the lock now."""
        now = time.time()
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds"),
            started=now,
            command=command if command is not None else " ".join(sys.argv),
        )

    @classmethod
    def parse(cls, text: str) -> LockInfo | None:
        """Parses a lock file's content; None when it is empty or unreadable (being written)."""
        try:
            payload = json.loads(text)
            return cls(
                pid=int(payload["pid"]),
                host=str(payload["host"]),
                started_at=str(payload["started_at"]),
                started=float(payload["started"]),
                command=str(payload["command"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        """``pid 123 on host h since 2026-01-02T03:04:05+00:00 (12 min ago): vidrec retrain``."""
        minutes = max(0.0, time.time() - self.started) / 60.0
        return (
            f"pid {self.pid} on {self.host} since {self.started_at} ({minutes:.0f} min ago): "
            f"{self.command}"
        )


class JobLock:
    """Exclusive, non-blocking, crash-safe lock of one artifacts root.

    Example::

        with JobLock(root, command="vidrec retrain --cutoff 2026-01-02"):
            ...  # the only job running on this root

    Args:
        root: Artifacts root (created if missing).
        command: What to record as the holder's command (default: ``sys.argv``).
    """

    def __init__(self, root: str | os.PathLike[str], command: str | None = None) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.command = command
        self.info: LockInfo | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> LockInfo:
        """Takes the lock or fails at once.

        Returns:
            What was recorded in the lock file.

        Raises:
            LockHeldError: Another holder has it (the message names it and since when).
            RuntimeError: This object already holds it (the lock is not re-entrant).
        """
        if self._fd is not None:
            raise RuntimeError(
                f"{self.path} is already held by this JobLock; the lock is not re-entrant"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = holder.describe() if holder else "a process that has not recorded itself yet"
            raise LockHeldError(
                f"another vidrec job holds the lock on {self.root}: {who}. Wait for it to "
                f"finish; if it died the kernel has already released the lock, so simply retry",
                dataclasses.asdict(holder) if holder else None,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = LockInfo.current(self.command)
        try:
            _write(fd, json.dumps(dataclasses.asdict(info), sort_keys=True) + "\n")
        except BaseException:
            os.close(fd)  # closing releases the lock
            raise
        self._fd = fd
        self.info = info
        logger.info("took the job lock %s (pid %d)", self.path, info.pid)
        return info

    def release(self) -> None:
        """Releases the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _write(fd, "")  # nobody holds it: say so before anyone else can take it
        except OSError as error:
            logger.warning("could not clear %s: %s", self.path, error)
        finally:
            os.close(fd)  # releases the flock
        logger.info("released the job lock %s", self.path)
        self.info = None

    def holder(self) -> LockInfo | None:
        """Who holds the lock now, or None when nobody does.

        Probing takes the lock for an instant when it is free, so a job starting at that very
        moment may be refused; use this for display, never in a loop.
        """
        if self._fd is not None:
            return self.info
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or LockInfo(0, "unknown", "unknown", 0.0, "unknown")
        finally:
            os.close(fd)
        return None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]


def _read(fd: int) -> LockInfo | None:
    try:
        text = os.pread(fd, 1 << 16, 0).decode("utf-8", errors="replace")
    except OSError:
        return None
    return LockInfo.parse(text)


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8")
    os.ftruncate(fd, 0)
    if data:
        os.pwrite(fd, data, 0)
    os.fsync(fd)
