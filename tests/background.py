"""Expensive test inputs made by real ``vidrec`` processes while other tests run.

A tiny training costs ~30 s on 2 cores, and most of it is TensorFlow tracing in one Python
thread: the second core idles while a test trains. A module declares such a training as a job
with `background_job`, under the name of the fixture its tests use to get the result. When
collection ends, the session (tests/conftest.py) starts the jobs that some selected test needs,
one after another in a thread of their own, each a real process (at a lower priority than the
tests) writing into a directory of its own. It runs the modules that need no job first, then
the others in the order of the last job they need: the jobs overlap with the tests that do not
wait for them. The fixture then waits for its job with `outcome`.

Jobs run in the order they were declared: a job may read the directory of a job declared
before it (``prepare``'s ``done`` argument), and the fixture of the later job must request the
earlier one's, so that the earlier job is selected too.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Jobs yield to the tests: a test that waits for its job is rare, a test slowed down by
# a job competing for its core would be every one that runs meanwhile.
NICENESS = 10
JOB_SECONDS = 900  # the longest a job may take, waiting included; ~30 s each on an idle machine

# prepare(directory, done) writes a job's inputs into its (empty) directory and returns the
# command to run; done(name) is the directory of an earlier job, once that job has succeeded.
Prepare = Callable[[Path, Callable[[str], Path]], list[str]]

# Declared jobs by fixture name, in the order they run.
JOBS: dict[str, Prepare] = {}

RUNNER = pytest.StashKey["Runner"]()

# Runs its arguments at a lower priority, and on Linux dies with the thread that started it:
# a session killed by a signal it cannot clean up after (SIGTERM, SIGKILL) leaves no training.
LAUNCHER = f"""
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit("the test session ended before the job started")
os.nice({NICENESS})
os.execv(sys.argv[2], sys.argv[2:])
"""


def background_job(name: str) -> Callable[[Prepare], Prepare]:
    """Declares ``prepare`` as the job the fixture ``name`` waits for."""

    def declare(prepare: Prepare) -> Prepare:
        JOBS[name] = prepare
        return prepare

    return declare


def vidrec(*args: str | Path) -> list[str]:
    """The command line of ``vidrec ARGS`` run from this checkout."""
    return [sys.executable, "-m", "pipelines.cli", *map(str, args)]


@dataclasses.dataclass
class Run:
    """One job of this session.

    Attributes:
        name: Its fixture.
        directory: Where it writes.
        returncode: The command's exit code; None when it did not run (see ``error``).
        error: Why it did not run.
    """

    name: str
    directory: Path
    returncode: int | None = None
    error: str = ""
    process: subprocess.Popen[bytes] | None = None
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def log(self) -> Path:
        return self.directory.parent / f"{self.name}.log"

    def output(self) -> str:
        """The end of what the command wrote to stdout and stderr."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


class Runner:
    """Runs the named jobs one after another in a thread, each in ``<temporary>/<name>``."""

    def __init__(self, names: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vidrec-jobs-"))
        self.runs = {name: Run(name, self.root / name) for name in JOBS if name in names}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run_all, name="test-jobs", daemon=True)
        self._thread.start()

    def _done(self, name: str) -> Path:
        run = self.runs[name]
        run.finished.wait()
        if run.returncode != 0:
            raise RuntimeError(f"job {name} failed (exit code {run.returncode}) {run.error}")
        return run.directory

    def _run_all(self) -> None:
        for run in self.runs.values():
            try:
                if self._stopping.is_set():
                    run.error = "the session ended first"
                    continue
                run.directory.mkdir()
                command = JOBS[run.name](run.directory, self._done)
                with run.log.open("w") as log:
                    run.process = subprocess.Popen(
                        [sys.executable, "-c", LAUNCHER, str(os.getpid()), *command],
                        cwd=REPO_ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                if self._stopping.is_set():  # `close` ran meanwhile and did not see it
                    run.process.kill()
                run.returncode = run.process.wait()
            except Exception as error:  # reported by `outcome`
                run.error = f"{type(error).__name__}: {error}"
            finally:
                run.finished.set()

    def close(self) -> None:
        """Stops what still runs and removes every job's directory."""
        self._stopping.set()
        for run in self.runs.values():
            if run.process is not None and run.process.poll() is None:
                run.process.kill()
        self._thread.join(60)
        shutil.rmtree(self.root, ignore_errors=True)


def outcome(request: pytest.FixtureRequest, name: str) -> Run:
    """Waits for the job of fixture ``name``; fails the test when the job could not run or
    took too long (a command that ran and failed is for the fixture to judge)."""
    runner = request.config.stash.get(RUNNER, None)
    if runner is None or name not in runner.runs:
        pytest.fail(f"background job {name} was not started: request its fixture by name")
    run = runner.runs[name]
    if not run.finished.wait(JOB_SECONDS):
        pytest.fail(f"background job {name} took over {JOB_SECONDS} s:\n{run.output()}")
    if run.returncode is None:
        pytest.fail(f"background job {name} did not run: {run.error}\n{run.output()}")
    return run


def start(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Starts the jobs the selected ``items`` need, and reorders ``items``: the modules that
    need no job first, then by the last job they need (a module's order is kept)."""
    needed = [n for n in JOBS if any(n in getattr(i, "fixturenames", ()) for i in items)]
    if not needed or config.option.collectonly:
        return
    config.stash[RUNNER] = Runner(needed)
    last_job: dict[object, int] = {}
    for item in items:
        module = getattr(item, "module", None)
        for position, name in enumerate(needed):
            if name in getattr(item, "fixturenames", ()):
                last_job[module] = max(last_job.get(module, -1), position)
    items.sort(key=lambda item: last_job.get(getattr(item, "module", None), -1))  # stable


def stop(config: pytest.Config) -> None:
    """Ends the session's jobs (tests/conftest.py calls it when pytest exits)."""
    runner = config.stash.get(RUNNER, None)
    if runner is not None:
        runner.close()
