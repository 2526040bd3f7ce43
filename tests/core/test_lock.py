"""The job lock: one holder, a clear refusal, freed by the kernel when the holder dies."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.errors import EXIT_LOCKED, LockHeldError, exit_code_for
from core.lock import LOCK_FILE, JobLock, LockInfo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from core.lock import JobLock
lock = JobLock({root!r}, command="vidrec retrain --cutoff 2026-01-02")
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_acquire_fails_with_who_and_since_when(tmp_path):
    first = JobLock(tmp_path, command="vidrec retrain --cutoff 2026-01-02")
    info = first.acquire()
    assert info.pid == os.getpid() and first.held
    recorded = json.loads((tmp_path / LOCK_FILE).read_text())
    assert recorded["command"] == "vidrec retrain --cutoff 2026-01-02"
    assert recorded["pid"] == os.getpid()

    second = JobLock(tmp_path, command="vidrec bundles prune")
    with pytest.raises(
        LockHeldError,
        match=(
            rf"another vidrec job holds the lock on {tmp_path}: pid {os.getpid()} on \S+ since "
            rf"{info.started_at[:10]}T[0-9:]+\+00:00 \(0 min ago\): "
            r"vidrec retrain --cutoff 2026-01-02\. Wait for it to finish"
        ),
    ) as raised:
        second.acquire()
    assert raised.value.holder["pid"] == os.getpid()
    assert exit_code_for(raised.value) == EXIT_LOCKED == 75
    assert not second.held
    assert second.holder() == info

    first.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: no stale holder shown
    assert second.holder() is None
    with second:
        assert second.held
    assert not second.held


def test_the_lock_is_not_reentrant(tmp_path):
    lock = JobLock(tmp_path)
    with lock:
        with pytest.raises(RuntimeError, match="already held by this JobLock; the lock is not re"):
            lock.acquire()
        # flock belongs to an open file description: the same process is refused too.
        with pytest.raises(LockHeldError, match=rf"pid {os.getpid()} on"):
            JobLock(tmp_path).acquire()
    lock.release()  # releasing twice is harmless


def test_a_sigkilled_holder_frees_the_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(repo=REPO, root=str(tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeldError, match=rf"pid {holder.pid} on .*: vidrec retrain"):
            JobLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # The dead holder's record is still in the file, but the kernel released its flock.
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    started = time.time()
    with JobLock(tmp_path, command="next run") as lock:
        assert lock.info.command == "next run" and lock.info.started >= started - 1
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_lock_info_parse_tolerates_a_half_written_file():
    assert LockInfo.parse("") is None
    assert LockInfo.parse('{"pid": 12, "host"') is None
    info = LockInfo.current("x")
    assert LockInfo.parse(json.dumps(info.__dict__)) == info
