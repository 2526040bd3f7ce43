"""Keeps the keep-alive connections of ``vidrec serve --workers N`` spread over its workers.

The workers accept from one shared socket, and the kernel gives a new connection to whichever
worker accepts first; a keep-alive connection then stays where it landed. With wrk's 4
connections on 2 workers the split came out 2/2, 4/0 or 3/1 from one run to the next, and the
throughput with it: 455, 328 and 301 req/s (50k-video bundle, both cores also busy with other
jobs; `ss -tnp` during the run showed the split). At 3/1 one worker queues three clients'
requests while the other waits for its one client. On the quiet 1M-video benchmark all four
went to one worker in three runs out of three (396-402 req/s); balanced, 778 req/s
(``benchmarks/serving.py``, docs/design.md §9). A load balancer in front of a replica holds
a handful of long-lived connections, which is the same situation.

So each worker publishes how many connections it holds in a slot of a small file all workers
map, and a worker that holds more than its fair share, ``ceil(total / workers)``, answers the
next request on one of them with ``Connection: close``. The client reconnects (HTTP/1.1
clients do so without an error) and the kernel places the new connection again, usually with
a worker that is waiting in ``accept`` rather than computing; this repeats until the shares
are even. The slots are a heuristic, written without locks: a stale slot (a worker that died
before its replacement took the slot over) only makes the shares look larger, so balancing
then does less, never more.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import functools
import logging
import mmap
import os
from pathlib import Path

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

SHARES_ENV = "VIDREC_CONNECTION_SHARES"
# More slots than workers: a restarted worker takes over a dead one's slot, but the old process
# may still be exiting when the new one starts.
SLOTS_PER_WORKER = 4
_HEADER = 1  # int64 fields before the slots: the number of workers
_FIELDS = 2  # int64 fields per slot: pid, connections held


def create_shares_file(path: str | Path, workers: int) -> Path:
    """Writes an empty shares file for ``workers`` worker processes.

    Args:
        path: Where the file goes (the server's private temporary directory).
        workers: Worker processes of the server (>= 2; one worker has nothing to balance).
    """
    if workers < 2:
        raise ValueError(f"connection shares need at least 2 workers, got {workers}")
    fields = array.array("q", [0] * (_HEADER + _FIELDS * SLOTS_PER_WORKER * workers))
    fields[0] = workers
    path = Path(path)
    path.write_bytes(fields.tobytes())
    return path


class ConnectionShares:
    """This worker's slot in the shares file, and the rule that reads all of them.

    Args:
        path: A file from `create_shares_file`.
        pid: The process the slot is claimed for (this one by default).

    Raises:
        RuntimeError: Every slot is held by a live process.
    """

    def __init__(self, path: str | Path, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), 0)
            # One claim at a time: two workers starting together must not take one slot.
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                self._fields = memoryview(self._map).cast("q")
                self.workers = int(self._fields[0])
                self._slot = self._claim()
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    def _claim(self) -> int:
        fields = self._fields
        for start in range(_HEADER, len(fields), _FIELDS):
            holder = fields[start]
            if holder == 0 or holder == self.pid or not _alive(holder):
                fields[start], fields[start + 1] = self.pid, 0
                return start + 1
        raise RuntimeError(f"no free connection slot among {self.slots} for worker {self.pid}")

    @property
    def slots(self) -> int:
        return (len(self._fields) - _HEADER) // _FIELDS

    @property
    def held(self) -> int:
        """Connections this worker holds (as published)."""
        return int(self._fields[self._slot])

    def add(self, delta: int) -> None:
        """Publishes a connection taken (+1) or given up (-1)."""
        self._fields[self._slot] += delta

    def over_share(self) -> bool:
        """Whether this worker holds more than ``ceil(total / workers)`` connections."""
        fields = self._fields
        total = sum(fields[start + 1] for start in range(_HEADER, len(fields), _FIELDS))
        return fields[self._slot] > -(-total // self.workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@functools.cache
def _process_shares() -> ConnectionShares | None:
    """This worker's shares, claimed at its first connection; None when the server did not
    ask for balancing (one worker) or no slot was free (then this worker does not balance)."""
    path = os.environ.get(SHARES_ENV)
    if not path:
        return None
    try:
        return ConnectionShares(path)
    except (OSError, RuntimeError) as error:
        logger.warning("worker %d does not balance its connections: %s", os.getpid(), error)
        return None


class BalancedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection when its worker holds more than
    its share (``vidrec serve --workers N`` selects it by import string)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._shares = _process_shares()
        self._leaving = False
        if self._shares is not None:
            self._shares.add(1)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._shares is not None and not self._leaving:
            self._shares.add(-1)

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # A new request (not an upgrade) on a connection that may stay open.
        if cycle is before or not cycle.keep_alive or self._shares is None or self._leaving:
            return
        if self._shares.over_share():
            # Counted as gone at once: the worker's other connections must not all leave too.
            self._leaving = True
            self._shares.add(-1)
            cycle.keep_alive = False
