"""The live event store: feedback events, uploads and takedowns in SQLite (WAL).

Serving writes here and reads a user's events since the bundle's data cutoff on every call, so
the very next recommendation reflects a watch without retraining, and several server processes
agree. The nightly retrain reads the same store up to its cutoff. Every write is one committed
transaction before the API acknowledges it (``synchronous=FULL`` by default), so an
acknowledged event survives a crash of the server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    video_id INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    event TEXT NOT NULL,
    watch_seconds REAL,
    rating REAL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (timestamp);
CREATE TABLE IF NOT EXISTS videos (
    video_id INTEGER PRIMARY KEY,
    metadata TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS takedowns (
    video_id INTEGER PRIMARY KEY,
    removed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS catalogue_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    video_id INTEGER NOT NULL,
    change TEXT NOT NULL,
    metadata TEXT
);
"""

UPSERT = "upsert"
TAKEDOWN = "takedown"


@dataclasses.dataclass(frozen=True)
class CatalogueChange:
    """One upload, metadata update or takedown, in the order the store committed them.

    Attributes:
        seq: Position in the change log (increasing).
        video_id: Raw video id.
        change: `UPSERT` or `TAKEDOWN`.
        metadata: The video's row for an upsert, None for a takedown.
    """

    seq: int
    video_id: int
    change: str
    metadata: dict[str, Any] | None


EVENT_KINDS: frozenset[str] = frozenset({"watch", "rating", "like", "skip"})


@dataclasses.dataclass(frozen=True)
class FeedbackEvent:
    """One feedback event.

    Attributes:
        user_id: Raw user id.
        video_id: Raw video id.
        timestamp: Seconds since the epoch.
        event: One of `EVENT_KINDS`.
        watch_seconds: Seconds watched, if known.
        rating: Explicit rating, if any.
    """

    user_id: int
    video_id: int
    timestamp: int
    event: str = "watch"
    watch_seconds: float | None = None
    rating: float | None = None

    def __post_init__(self) -> None:
        if self.event not in EVENT_KINDS:
            raise DataError(f"event must be one of {sorted(EVENT_KINDS)}, got {self.event!r}")
        if self.timestamp < 0:
            raise DataError(f"timestamp must be seconds since the epoch, got {self.timestamp}")
        if self.watch_seconds is not None and not self.watch_seconds >= 0:
            raise DataError(f"watch_seconds must be >= 0, got {self.watch_seconds}")


class EventStore:
    """SQLite-backed store; safe to use from several threads and processes.

    Args:
        path: Database file (created with its directory).
        synchronous: SQLite ``synchronous`` pragma: ``FULL`` (fsync every commit) or
            ``NORMAL`` (durable across process crashes, not power loss).
    """

    def __init__(self, path: str | os.PathLike[str], synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise DataError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self._local = threading.local()
        with self._connection() as connection:
            connection.executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Closes this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # -- events ---------------------------------------------------------------------------

    def append(self, events: Sequence[FeedbackEvent]) -> int:
        """Stores events in one transaction; returns how many were written."""
        now = time.time()
        rows = [
            (e.user_id, e.video_id, e.timestamp, e.event, e.watch_seconds, e.rating, now)
            for e in events
        ]
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT INTO events (user_id, video_id, timestamp, event, watch_seconds, rating,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return len(rows)

    def user_events(
        self, user_id: int, after_id: int, limit: int
    ) -> list[tuple[int, int, float, float]]:
        """A user's most recent events stored after event id ``after_id``, oldest first.

        Returns:
            ``(video_id, timestamp, watch_seconds, rating)`` per event, NaN where unknown.
        """
        rows = (
            self._connection()
            .execute(
                "SELECT video_id, timestamp, watch_seconds, rating FROM events "
                "WHERE user_id = ? AND id > ? ORDER BY timestamp DESC, id DESC LIMIT ?",
                (int(user_id), int(after_id), int(limit)),
            )
            .fetchall()
        )
        rows.reverse()
        nan = float("nan")
        return [
            (int(v), int(t), nan if w is None else float(w), nan if r is None else float(r))
            for v, t, w, r in rows
        ]

    def last_id(self) -> int:
        """Id of the newest stored event (0 when empty)."""
        row = self._connection().execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def interactions(
        self, since: int | None = None, until: int | None = None, until_id: int | None = None
    ) -> pd.DataFrame:
        """Events in ``[since, until)`` (and stored with id <= ``until_id``) as a table.

        Returns:
            Columns ``user_id, video_id, timestamp, event, watch_seconds, rating`` (not yet
            validated; pass it through `core.schema.validate_interactions`).
        """
        query = "SELECT user_id, video_id, timestamp, event, watch_seconds, rating FROM events"
        clauses, params = [], []
        if since is not None:
            clauses.append("timestamp >= ?")
            params.append(int(since))
        if until is not None:
            clauses.append("timestamp < ?")
            params.append(int(until))
        if until_id is not None:
            clauses.append("id <= ?")
            params.append(int(until_id))
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY id"
        frame = pd.read_sql_query(query, self._connection(), params=params)
        for column in ("watch_seconds", "rating"):
            frame[column] = frame[column].astype(np.float32)
        return frame

    def count(self) -> int:
        """Events stored."""
        return int(self._connection().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # -- catalogue changes ----------------------------------------------------------------

    def upsert_video(self, video_id: int, metadata: dict[str, Any]) -> None:
        """Records an upload or metadata update (and lifts a takedown of the same id)."""
        payload = json.dumps(metadata, sort_keys=True)
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(
                "INSERT INTO videos (video_id, metadata, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(video_id) DO UPDATE SET metadata = excluded.metadata, "
                "updated_at = excluded.updated_at",
                (int(video_id), payload, time.time()),
            )
            connection.execute("DELETE FROM takedowns WHERE video_id = ?", (int(video_id),))
            connection.execute(
                "INSERT INTO catalogue_changes (video_id, change, metadata) VALUES (?, ?, ?)",
                (int(video_id), UPSERT, payload),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def take_down(self, video_id: int) -> None:
        """Records a takedown; the video is never served again until re-uploaded."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(
                "INSERT OR REPLACE INTO takedowns (video_id, removed_at) VALUES (?, ?)",
                (int(video_id), time.time()),
            )
            connection.execute(
                "INSERT INTO catalogue_changes (video_id, change) VALUES (?, ?)",
                (int(video_id), TAKEDOWN),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def catalogue_version(self) -> int:
        """Sequence number of the newest catalogue change (0 when there is none).

        Cheap (the log's primary key): every server process asks on every request, so an
        upload or takedown made through any process is applied by all before their next answer.
        """
        row = self._connection().execute("SELECT MAX(seq) FROM catalogue_changes").fetchone()
        return int(row[0] or 0)

    def catalogue_changes_after(self, seq: int) -> list[CatalogueChange]:
        """Catalogue changes committed after ``seq``, oldest first."""
        rows = (
            self._connection()
            .execute(
                "SELECT seq, video_id, change, metadata FROM catalogue_changes WHERE seq > ? "
                "ORDER BY seq",
                (int(seq),),
            )
            .fetchall()
        )
        return [
            CatalogueChange(int(q), int(v), c, json.loads(m) if m is not None else None)
            for q, v, c, m in rows
        ]

    def uploaded_videos(self) -> list[dict[str, Any]]:
        """Metadata of every uploaded or updated video, oldest update first."""
        rows = (
            self._connection().execute("SELECT metadata FROM videos ORDER BY updated_at").fetchall()
        )
        return [json.loads(m) for (m,) in rows]

    def taken_down(self) -> set[int]:
        """Ids of videos taken down."""
        rows = self._connection().execute("SELECT video_id FROM takedowns").fetchall()
        return {int(v) for (v,) in rows}
