"""Event stores of either backend for the tests (`store_backend` in tests/pipelines/conftest.py).

`StoreBackend.raw` writes rows the way an older store or a bug would have left them: straight
through the database's own driver, bypassing every check of the write path.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg

from pipelines.serving.events import EventStore
from tests.pg_cluster import Cluster

SQLITE, POSTGRESQL = "sqlite", "postgresql"


class StoreBackend:
    """One backend's store for one test.

    Args:
        name: `SQLITE` or `POSTGRESQL`.
        url: The store: a SQLite file path, or a PostgreSQL URL of a schema of its own.
        cluster: The PostgreSQL server (None for SQLite).
    """

    def __init__(self, name: str, url: str, cluster: Cluster | None = None) -> None:
        self.name = name
        self.url = url
        self.cluster = cluster
        self._opened: list[EventStore] = []

    def open(self, **options: Any) -> EventStore:
        """A store over the backend (closed when the test ends)."""
        store = EventStore(self.url, **options)
        self._opened.append(store)
        return store

    @contextlib.contextmanager
    def raw(self) -> Iterator[Any]:
        """A driver connection (``?`` placeholders on both) in one transaction, committed on
        exit."""
        if self.name == SQLITE:
            connection = sqlite3.connect(self.url)
            try:
                with connection:
                    yield connection
            finally:
                connection.close()
            return
        with psycopg.connect(self.url) as connection:
            yield _QmarkConnection(connection)

    def close(self) -> None:
        for store in self._opened:
            with contextlib.suppress(Exception):
                store.close()


class _QmarkConnection:
    """A psycopg connection that takes ``?`` placeholders, as sqlite3 does."""

    def __init__(self, connection: psycopg.Connection) -> None:
        self.connection = connection

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> Any:
        return self.connection.execute(statement.replace("?", "%s"), params)
