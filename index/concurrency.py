"""How an index shares threads: a reader/writer lock and per-thread OpenMP team sizes.

Searches hold the read lock and may run together; ``add``, ``remove`` and operating-point
changes hold the write lock. Faiss runs each call on an OpenMP team whose size is a per-thread
setting, so a request thread searching with one thread never changes what a batch job in
another thread uses.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import faiss


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Holds the lock shared for the block."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Holds the lock exclusively for the block."""
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def default_threads() -> int:
    """Cores this process may use (``OMP_NUM_THREADS`` if set)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Sets Faiss' OpenMP threads of the calling thread to ``n`` (0: all cores) for a block.

    OpenMP keeps this setting per thread, so request threads using one thread each do not change
    what a batch job in another thread uses.
    """
    wanted = n if n > 0 else default_threads()
    previous = faiss.omp_get_max_threads()
    if previous == wanted:
        yield
        return
    faiss.omp_set_num_threads(wanted)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)
