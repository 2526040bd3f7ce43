"""A throwaway PostgreSQL cluster for the event store's tests and benchmarks.

The server programs (``initdb``, ``pg_ctl``) of Debian's ``postgresql`` package are not on
``PATH``: ``pg_config --bindir`` names their directory, else ``/usr/lib/postgresql/*/bin``.
``initdb`` refuses to run as root, and CI runs as root: then the cluster belongs to the
``postgres`` user (the package creates it), in a directory of its own under the system's
temporary directory (pytest's own temporary directories are private to root). The server
listens on loopback only, on a free port, with trust authentication, and is removed by `stop`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

SERVICE_USER = "postgres"
SUPERUSER = "postgres"


class ClusterError(RuntimeError):
    """PostgreSQL's server programs are missing or the cluster would not start."""


def server_bindir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``.

    Raises:
        ClusterError: Neither ``pg_config --bindir`` nor ``/usr/lib/postgresql/*/bin`` has them.
    """
    candidates = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10
        )
        candidates.append(Path(found.stdout.strip()))
    # Newest version first.
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [
        Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    ]
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise ClusterError(
        "PostgreSQL's server programs (initdb, pg_ctl) were not found via `pg_config --bindir` "
        "nor in /usr/lib/postgresql/*/bin: install Debian's `postgresql` package (`make test` "
        "does it when run as root)"
    )


def free_port() -> int:
    """A loopback TCP port nobody listens on (for a server, or for a store that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One PostgreSQL server in a temporary directory.

    Args:
        fsync: Keep PostgreSQL's durability (``fsync``, ``synchronous_commit``); tests turn it
            off for speed, benchmarks keep it.
        max_connections: The server's ``max_connections``.
    """

    def __init__(self, fsync: bool = False, max_connections: int = 100) -> None:
        self.bindir = server_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="vidrec-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._account: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._account = pwd.getpwnam(SERVICE_USER)
            except KeyError as error:
                raise ClusterError(
                    f"running as root, and initdb refuses root: user {SERVICE_USER!r} is missing "
                    "(Debian's postgresql package creates it)"
                ) from error
            os.chown(self.root, self._account.pw_uid, self._account.pw_gid)
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": str(max_connections),
            "fsync": "on" if fsync else "off",
            "synchronous_commit": "on" if fsync else "off",
            "full_page_writes": "on" if fsync else "off",
        }
        self._options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        self.start()

    def _run(self, program: str, *args: str, timeout: float = 120.0) -> None:
        account = self._account
        done = subprocess.run(
            [str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            env={**os.environ, "HOME": str(self.root), "LC_ALL": "C"},
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ClusterError(
                f"{program} {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip()[-2000:]}\n{log}"
            )

    def url(self, dbname: str = "postgres", search_path: str | None = None) -> str:
        """A ``postgresql://`` URL of this server (loopback TCP), optionally with a schema."""
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"
        if search_path:
            url += "?options=" + urllib.parse.quote(f"-csearch_path={search_path}")
        return url

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options, "-w",
            "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (``fast``: open sessions are ended, as in an outage)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        """Stops the server if it runs and deletes the cluster."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[float]:
        """Stops the server for the block; yields the time it stopped (``time.monotonic``)."""
        self.stop()
        try:
            yield time.monotonic()
        finally:
            self.start()
