"""A helper process that never outlives its parent.

`ChildProcess` runs calls for its parent in one spawn-context child (a fresh interpreter, so
nothing of the parent's threads or TensorFlow state is inherited), one call at a time, over a
pipe. The server converts a bundle's models to LiteRT in such a child (about 1 GB at 1M
videos) while it keeps answering requests.

The child must die with its parent however the parent ends: ``SIGTERM`` with the default
action, ``SIGKILL``, the OOM killer, or a crash. None of those runs Python clean-up code in the
parent, so the child sees to it itself:

- On Linux it asks the kernel for ``SIGKILL`` when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``). The kernel sends it when the *thread* that started the child
  exits, so a `ChildProcess` must be started and used by a thread that outlives it (a ``with``
  block does that).
- A watchdog thread exits the child when its parent pid changes (it was re-parented): the
  fallback where ``prctl`` is missing, and a second line of defence.
- Both are armed first thing in the child's target, `_child_main`: after the spawn bootstrap
  (which imports the parent's main module, ``pipelines.cli.main``: about a second) and before the
  function to call, and TensorFlow with it, is imported with the first call. A parent that died
  even earlier is caught by comparing the parent pid once they are armed.

Leaving the child is always a kill, so nothing of its own clean-up runs either: TensorFlow's
autograph writes a ``__autograph_generated_file*.py`` per converted function and removes them
only at a normal interpreter exit (``atexit``). Three were left in ``/tmp`` per ``vidrec
train``. The child therefore gets a temporary directory of its own (its ``tempfile`` and
``TMPDIR``), and the parent removes it once it has reaped the child (a parent killed
outright leaves it behind, as it leaves its own files).

This module imports nothing heavy itself, so that importing `_child_main` costs nothing.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCHDOG_SECONDS = 0.5
JOIN_SECONDS = 5.0

# Every started, not yet closed child of this process (see `close_all`).
_LIVE: weakref.WeakSet[ChildProcess] = weakref.WeakSet()


class ChildCallError(RuntimeError):
    """A call failed in the child (the message is the child's error message), or the child
    died before it answered.

    Attributes:
        kind: Type name of the child's exception (``"ChildDied"`` when it died).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ChildProcess:
    """One spawn-context child process running calls for this process; dies with it.

    Example::

        with ChildProcess("vidrec-litert-conversion") as child:
            flatbuffer = child.call(convert_saved_model, builder, "score", directory, shape)

    Leaving the ``with`` block (or `close`) kills the child. Functions and arguments cross the
    pipe pickled: a function must be importable by its module and name.

    Args:
        name: Process name (shown by ``ps`` only as the spawn command line; used in logs).
        pdeathsig: Ask the kernel to kill the child when this process dies (Linux). False
            leaves only the watchdog thread, as on other systems (tests use it).
    """

    def __init__(self, name: str, pdeathsig: bool = True) -> None:
        self.name = name
        self.pdeathsig = pdeathsig
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Connection | None = None
        self._scratch: str | None = None
        self._calling = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The child's pid once started."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Starts the child (a no-op when it runs already)."""
        if self._process is not None:
            return
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._scratch = tempfile.mkdtemp(prefix=f"{self.name}-")
        process = context.Process(
            target=_child_main,
            args=(theirs, os.getpid(), self.pdeathsig, self._scratch),
            name=self.name,
            daemon=True,  # a normal interpreter exit terminates it too
        )
        process.start()
        # Only the child may hold its end: a call then sees EOF at once if the child dies.
        theirs.close()
        self._process, self._connection = process, ours
        _LIVE.add(self)
        logger.debug("started %s (pid %s)", self.name, process.pid)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Runs ``function(*args)`` in the child and returns its result.

        Raises:
            ChildCallError: The call raised in the child, or the child died (killed, out of
                memory, `close` from another thread) before answering.
        """
        with self._calling:  # the pipe carries one call at a time
            if self._process is None or self._connection is None:
                raise ChildCallError(f"{self.name} is not running", "ChildDied")
            try:
                self._connection.send((function, args))
                status, value = self._connection.recv()
            except (EOFError, OSError) as error:
                raise ChildCallError(self._death_note(), "ChildDied") from error
        if status == "error":
            kind, message = value
            raise ChildCallError(message, kind)
        return value

    def close(self) -> None:
        """Kills the child and reaps it; safe from any thread, and more than once."""
        process = self._process
        if process is None:
            return
        _LIVE.discard(self)
        if process.is_alive():
            # Nothing in the child is worth waiting for: its result would be thrown away.
            process.kill()
        process.join(JOIN_SECONDS)
        if self._scratch is not None and process.exitcode is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        # A call blocked in another thread holds the connection; it sees EOF and ends.
        if self._calling.acquire(blocking=False):
            try:
                if self._connection is not None:
                    self._connection.close()
                self._connection = None
                self._process = None
            finally:
                self._calling.release()
        logger.debug("closed %s (exit code %s)", self.name, process.exitcode)

    def _death_note(self) -> str:
        process = self._process
        if process is None:
            return f"{self.name} is not running"
        # Reap it, to say how it ended. `close` in another thread may be reaping it at the same
        # moment: this thread's wait then fails, and the exit code shows up a moment later.
        deadline = time.monotonic() + JOIN_SECONDS
        while process.exitcode is None and time.monotonic() < deadline:
            process.join(0.05)
            time.sleep(0.01)
        code = process.exitcode
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return f"{self.name} (pid {process.pid}) {how} before answering"

    def __enter__(self) -> ChildProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def close_all() -> int:
    """Kills every `ChildProcess` of this process that is still running (a server shutting
    down abandons the bundle it was loading); returns how many there were."""
    children = list(_LIVE)
    for child in children:
        child.close()
    return len(children)


# -- in the child ---------------------------------------------------------------------------


def _child_main(connection: Connection, parent_pid: int, pdeathsig: bool, scratch: str) -> None:
    """The child's body: arm the death watch, keep temporary files in ``scratch``, then
    answer calls until the pipe closes."""
    _die_with_parent(parent_pid, pdeathsig)
    tempfile.tempdir = scratch
    os.environ["TMPDIR"] = scratch
    # Ctrl-C reaches the whole process group; the parent decides what happens (it kills us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            function, args = connection.recv()
        except (EOFError, OSError):
            return  # the parent closed its end
        try:
            reply: tuple[str, Any] = ("ok", function(*args))
        except Exception as error:  # reported to the parent, which decides
            reply = ("error", (type(error).__name__, str(error) or type(error).__name__))
        connection.send(reply)


def _die_with_parent(parent_pid: int, pdeathsig: bool) -> None:
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as error:
            logger.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", error)
    # The parent may have died before the signal was armed: no signal will come then.
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True
    ).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(WATCHDOG_SECONDS)
        if os.getppid() != parent_pid:  # re-parented: the parent is gone
            os._exit(1)
