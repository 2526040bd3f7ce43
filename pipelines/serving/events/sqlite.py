"""The embedded backend: one SQLite file in WAL mode, for one machine.

Several server processes on one machine share the file; each thread keeps its own connection.
Writers take the file's write lock at the start of their transaction (``BEGIN IMMEDIATE``), so
writes, and with them event ids and the change log's ``seq``, are committed one at a time in
the order they are numbered: a reader that sees ``seq`` N has seen every smaller one.
Every write is committed with ``synchronous=FULL`` by default before the API acknowledges it,
so an acknowledged event survives a crash of the server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from core.errors import DataError, StoreError
from pipelines.serving.events import sql
from pipelines.serving.events.base import EventStore, Snapshot, Writer
from pipelines.serving.events.urls import SQLITE, sqlite_path

T = TypeVar("T")


def _reads_store(method: Callable[..., T]) -> Callable[..., T]:
    """Turns SQLite's errors in a read (I/O, corruption, locked schema) into `StoreError`, which
    the API answers with 503 and a retry hint instead of a 500."""

    @functools.wraps(method)
    def wrapper(self: SQLiteEventStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise StoreError(f"event store {self.path} cannot be read now ({error})") from error

    return wrapper


class _SQLiteWriter(Writer):
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self.connection.execute(statement, tuple(params))

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        self.connection.executemany(statement, rows)

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(statement, tuple(params)).fetchall()

    def copy_in(self, table: sql.Table, rows: Iterable[Sequence[Any]]) -> int:
        marks = ", ".join("?" for _ in table.columns)
        cursor = self.connection.executemany(
            f"INSERT INTO {table.name} ({', '.join(table.columns)}) VALUES ({marks})", rows
        )
        return max(cursor.rowcount, 0)

    def identities_follow(self, table: sql.Table, high_water: int) -> None:
        if table.identity is None:
            return
        # AUTOINCREMENT already remembers the largest id inserted, explicit ones included.
        self.connection.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT ?, 0 "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
            (table.name, table.name),
        )
        self.connection.execute(
            "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?",
            (int(high_water), table.name),
        )


class _SQLiteSnapshot(Snapshot):
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def rows(self, table: sql.Table, chunk: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        cursor = self.connection.execute(
            f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {table.key}"
        )
        while batch := cursor.fetchmany(chunk):
            yield batch

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(statement, tuple(params)).fetchall()

    def high_water(self, table: sql.Table) -> int:
        if table.identity is None:
            return 0
        row = self.connection.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,)
        ).fetchone()
        return int(row[0]) if row else 0


class SQLiteEventStore(EventStore):
    """SQLite-backed store; safe to use from several threads and processes of one machine.

    Args:
        location: Database file, as a path or a ``sqlite:///`` URL (`urls.sqlite_path`); its
            directory must exist, the file is created.
        synchronous: SQLite ``synchronous`` pragma: ``FULL`` (fsync every commit) or
            ``NORMAL`` (durable across process crashes, not power loss).
        busy_timeout_seconds: How long a write waits for another writer before it is refused
            with `StoreError` (the API answers 503 with ``Retry-After``).
    """

    backend = SQLITE

    def __init__(
        self,
        location: str | os.PathLike[str],
        synchronous: str = "FULL",
        busy_timeout_seconds: float = 10.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise DataError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(sqlite_path(location))
        self.location = str(self.path)
        self.busy_timeout_seconds = float(busy_timeout_seconds)
        if not self.path.parent.is_dir():
            # Creating it would hide a typo in --events or --artifacts behind an empty store.
            raise StoreError(
                f"event store {self.path}: directory {self.path.parent} does not exist; create "
                "it or pass another --events path"
            )
        self.synchronous = synchronous
        self._local = threading.local()
        try:
            self._write(self._create_or_migrate)
        except StoreError as error:
            if isinstance(error.__cause__, sqlite3.DatabaseError):
                raise StoreError(f"event store {self.path}: {error.__cause__}") from error
            raise

    def _create_or_migrate(self, writer: Writer) -> None:
        tables = {
            name for (name,) in writer.fetchall("SELECT name FROM sqlite_master WHERE type='table'")
        }
        self._prepare_schema(writer, tables, sql.SQLITE_TABLES)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, timeout=self.busy_timeout_seconds, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Closes this thread's connection (the store opens another when used again)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @_reads_store
    def _fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._connection().execute(statement, tuple(params)).fetchall()

    def _write(self, work: Callable[[Writer], T], *, ordered: bool = False) -> T:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``) and committed on return.

        ``ordered`` needs nothing more here: the write lock is taken before any id is drawn.

        Raises:
            StoreError: SQLite could not take or commit it (locked past the timeout, disk
                full, I/O): nothing was written and the caller may retry.
        """
        try:
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(
                f"event store {self.path} cannot take a write now ({error}); retry"
            ) from error
        try:
            result = work(_SQLiteWriter(connection))
            connection.execute("COMMIT")
        except BaseException as error:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise StoreError(
                    f"event store {self.path} cannot take a write now ({error}); retry"
                ) from error
            raise
        return result

    @_reads_store
    def _frame(self, statement: str, params: Sequence[Any], columns: Sequence[str]) -> Any:
        frame = pd.read_sql_query(statement, self._connection(), params=list(params))
        return frame[list(columns)]

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Snapshot]:
        # Its own connection: one read transaction sees one state of the file (WAL), while
        # servers may go on writing.
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            connection.execute("BEGIN")
            yield _SQLiteSnapshot(connection)
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreError(f"event store {self.path} cannot be read now ({error})") from error
        finally:
            connection.close()
