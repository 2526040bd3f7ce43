"""The live event store: feedback events, uploads and takedowns in SQLite (WAL).

Serving writes here and reads a user's events since the bundle's data cutoff on every call, so
the very next recommendation reflects a watch without retraining, and several server processes
agree. The nightly retrain reads the same store up to its cutoff. Every write is one committed
transaction before the API acknowledges it (``synchronous=FULL`` by default), so an
acknowledged event survives a crash of the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from core.errors import DataError, StoreError
from core.schema import (
    MAX_ID,
    MAX_RATING,
    MAX_SECONDS,
    MAX_TIMESTAMP,
    validate_upload,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

EVENT_KINDS: frozenset[str] = frozenset({"watch", "rating", "like", "skip"})

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
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    ref INTEGER NOT NULL,
    payload TEXT,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    at REAL NOT NULL,
    UNIQUE (source, ref)
);
"""

# A stored event the request path and the retrain may read. Rows outside it can only come from
# an older store or a bug (the write path refuses them): they are skipped on read and shown by
# `vidrec events check`.
VALID_EVENT = (
    f"(user_id BETWEEN 0 AND {MAX_ID} AND video_id BETWEEN 0 AND {MAX_ID}"
    f" AND timestamp BETWEEN 0 AND {MAX_TIMESTAMP}"
    f" AND event IN ({', '.join(repr(kind) for kind in sorted(EVENT_KINDS))})"
    f" AND (watch_seconds IS NULL OR watch_seconds BETWEEN 0 AND {MAX_SECONDS!r})"
    f" AND (rating IS NULL OR rating BETWEEN 0 AND {MAX_RATING!r}))"
)

# Quarantine sources and states.
EVENT_ROW = "event"
VIDEO_ROW = "video"
CHANGE_ROW = "catalogue_change"
SKIPPED = "skipped"  # a server could not apply it and went on without it; still stored
SET_ASIDE = "set_aside"  # `vidrec events repair` moved it out of the live tables

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
        for name in ("user_id", "video_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise DataError(f"{name} must be an integer, got {value!r}")
            if not 0 <= value <= MAX_ID:
                raise DataError(f"{name} must be in [0, 2**63 - 1], got {value}")
        if self.event not in EVENT_KINDS:
            raise DataError(f"event must be one of {sorted(EVENT_KINDS)}, got {self.event!r}")
        if isinstance(self.timestamp, bool) or not isinstance(self.timestamp, int | np.integer):
            raise DataError(f"timestamp must be whole seconds, got {self.timestamp!r}")
        if not 0 <= self.timestamp <= MAX_TIMESTAMP:
            raise DataError(
                f"timestamp must be seconds since the epoch in [0, {MAX_TIMESTAMP}], got "
                f"{self.timestamp} (milliseconds?)"
            )
        for name, high in (("watch_seconds", MAX_SECONDS), ("rating", MAX_RATING)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise DataError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and 0 <= value <= high):
                raise DataError(f"{name} must be a finite number in [0, {high:g}], got {value!r}")


def _reads_store(method: Callable[..., T]) -> Callable[..., T]:
    """Turns SQLite's errors in a read (I/O, corruption, locked schema) into `StoreError`, which
    the API answers with 503 and a retry hint instead of a 500."""

    @functools.wraps(method)
    def wrapper(self: EventStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise StoreError(f"event store {self.path} cannot be read now ({error})") from error

    return wrapper


class EventStore:
    """SQLite-backed store; safe to use from several threads and processes.

    Args:
        path: Database file (created with its directory).
        synchronous: SQLite ``synchronous`` pragma: ``FULL`` (fsync every commit) or
            ``NORMAL`` (durable across process crashes, not power loss).
        busy_timeout_seconds: How long a write waits for another writer before it is refused
            with `StoreError` (the API answers 503 with ``Retry-After``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: str = "FULL",
        busy_timeout_seconds: float = 10.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise DataError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
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
            with self._connection() as connection:
                connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"event store {self.path}: {error}") from error

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

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``) and committed on exit.

        Raises:
            StoreError: SQLite could not take or commit it (locked past the timeout, disk
                full, I/O): nothing was written and the caller may retry.
        """
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise StoreError(
                f"event store {self.path} cannot take a write now ({error}); retry"
            ) from error
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException as error:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.OperationalError):
                raise StoreError(
                    f"event store {self.path} cannot take a write now ({error}); retry"
                ) from error
            raise

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
        with self._transaction() as connection:
            connection.executemany(
                "INSERT INTO events (user_id, video_id, timestamp, event, watch_seconds, rating,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    @_reads_store
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
                f"WHERE user_id = ? AND id > ? AND {VALID_EVENT} "
                "ORDER BY timestamp DESC, id DESC LIMIT ?",
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

    @_reads_store
    def last_id(self) -> int:
        """Id of the newest stored event (0 when empty)."""
        row = self._connection().execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    @_reads_store
    def interactions(
        self, since: int | None = None, until: int | None = None, until_id: int | None = None
    ) -> pd.DataFrame:
        """Events in ``[since, until)`` (and stored with id <= ``until_id``) as a table.

        Returns:
            Columns ``user_id, video_id, timestamp, event, watch_seconds, rating`` (not yet
            validated; pass it through `core.schema.validate_interactions`).
        """
        query = "SELECT user_id, video_id, timestamp, event, watch_seconds, rating FROM events"
        clauses, params = [VALID_EVENT], []
        if since is not None:
            clauses.append("timestamp >= ?")
            params.append(int(since))
        if until is not None:
            clauses.append("timestamp < ?")
            params.append(int(until))
        if until_id is not None:
            clauses.append("id <= ?")
            params.append(int(until_id))
        query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY id"
        frame = pd.read_sql_query(query, self._connection(), params=params)
        invalid = self._connection().execute(f"SELECT COUNT(*) FROM events WHERE NOT {VALID_EVENT}")
        skipped = int(invalid.fetchone()[0])
        if skipped:
            logger.warning(
                "%s: %d stored event(s) are invalid and left out; see `vidrec events check`",
                self.path,
                skipped,
            )
        for column in ("watch_seconds", "rating"):
            frame[column] = frame[column].astype(np.float32)
        return frame

    @_reads_store
    def count(self) -> int:
        """Events stored."""
        return int(self._connection().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # -- catalogue changes ----------------------------------------------------------------

    def upsert_video(self, metadata: dict[str, Any]) -> int:
        """Records an upload or metadata update (and lifts a takedown of the same id).

        Args:
            metadata: The video's row (``video_id`` and any other of the videos columns).

        Returns:
            The video id.

        Raises:
            DataError: The row is out of the write path's bounds (`core.schema.validate_upload`);
                nothing is stored.
        """
        row = validate_upload(metadata)
        video_id = row["video_id"]
        payload = json.dumps(row, sort_keys=True, allow_nan=False)
        with self._transaction() as connection:
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
        return video_id

    def take_down(self, video_id: int) -> None:
        """Records a takedown; the video is never served again until re-uploaded.

        Raises:
            DataError: ``video_id`` is not in ``[0, 2**63 - 1]``; nothing is stored.
        """
        if isinstance(video_id, bool) or not 0 <= int(video_id) <= MAX_ID:
            raise DataError(f"video_id must be in [0, 2**63 - 1], got {video_id!r}")
        with self._transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO takedowns (video_id, removed_at) VALUES (?, ?)",
                (int(video_id), time.time()),
            )
            connection.execute(
                "INSERT INTO catalogue_changes (video_id, change) VALUES (?, ?)",
                (int(video_id), TAKEDOWN),
            )

    @_reads_store
    def catalogue_version(self) -> int:
        """Sequence number of the newest catalogue change (0 when there is none).

        Cheap (the log's primary key): every server process asks on every request, so an
        upload or takedown made through any process is applied by all before their next answer.
        """
        row = self._connection().execute("SELECT MAX(seq) FROM catalogue_changes").fetchone()
        return int(row[0] or 0)

    @_reads_store
    def catalogue_changes_after(self, seq: int) -> list[CatalogueChange]:
        """Catalogue changes committed after ``seq``, oldest first.

        A change whose metadata is not valid JSON comes back with ``metadata`` None: applying
        it fails and the caller quarantines it, like any other row it cannot apply.
        """
        rows = (
            self._connection()
            .execute(
                "SELECT seq, video_id, change, metadata FROM catalogue_changes WHERE seq > ? "
                "ORDER BY seq",
                (int(seq),),
            )
            .fetchall()
        )
        return [CatalogueChange(int(q), int(v), c, _json_or_none(m)) for q, v, c, m in rows]

    @_reads_store
    def upload_rows(self) -> list[tuple[int, dict[str, Any] | None]]:
        """``(video_id, metadata)`` of every uploaded or updated video as stored, oldest update
        first (metadata None when it is not valid JSON); not validated."""
        rows = (
            self._connection()
            .execute("SELECT video_id, metadata FROM videos ORDER BY updated_at")
            .fetchall()
        )
        return [(int(v), _json_or_none(m)) for v, m in rows]

    def uploaded_videos(self) -> list[dict[str, Any]]:
        """Metadata of every valid uploaded or updated video, oldest update first; invalid
        rows (an older store, a bug) are left out and logged."""
        valid, skipped = [], 0
        for video_id, metadata in self.upload_rows():
            if _upload_problem(video_id, metadata) is None:
                valid.append(validate_upload(metadata))  # type: ignore[arg-type]
            else:
                skipped += 1
        if skipped:
            logger.warning(
                "%s: %d stored upload(s) are invalid and left out; see `vidrec events check`",
                self.path,
                skipped,
            )
        return valid

    @_reads_store
    def taken_down(self) -> set[int]:
        """Ids of videos taken down."""
        rows = self._connection().execute("SELECT video_id FROM takedowns").fetchall()
        return {int(v) for (v,) in rows}

    # -- rows that cannot be served ---------------------------------------------------------

    @_reads_store
    def quarantine(self, source: str, ref: int, payload: Any, reason: str) -> None:
        """Records that a stored row could not be applied and was skipped (idempotent: every
        server process that meets the row records it once).

        Args:
            source: `EVENT_ROW`, `VIDEO_ROW` or `CHANGE_ROW`.
            ref: The row's key (event id, video id or change sequence number).
            payload: The row as read, kept for the operator.
            reason: Why it could not be applied.
        """
        self._connection().execute(
            "INSERT OR IGNORE INTO quarantine (source, ref, payload, reason, status, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                source,
                int(ref),
                json.dumps(payload, default=str),
                reason[:2_000],
                SKIPPED,
                time.time(),
            ),
        )

    @_reads_store
    def quarantined(self, status: str | None = None) -> list[dict[str, Any]]:
        """Quarantine entries, oldest first (all, or those with ``status``)."""
        query = "SELECT source, ref, payload, reason, status, at FROM quarantine"
        params: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status,)
        rows = self._connection().execute(query + " ORDER BY id", params).fetchall()
        keys = ("source", "ref", "payload", "reason", "status", "at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    @_reads_store
    def skipped_count(self) -> int:
        """Rows servers skipped and nobody has repaired yet (`/readyz` reports them)."""
        row = (
            self._connection()
            .execute("SELECT COUNT(*) FROM quarantine WHERE status = ?", (SKIPPED,))
            .fetchone()
        )
        return int(row[0])

    @_reads_store
    def invalid_rows(self) -> list[dict[str, Any]]:
        """Live rows outside the write path's bounds: events, uploads and catalogue changes
        that an older store or a bug let in.

        Returns:
            ``{"source", "ref", "payload", "reason"}`` per row.
        """
        connection = self._connection()
        found = []
        for row in connection.execute(
            "SELECT id, user_id, video_id, timestamp, event, watch_seconds, rating FROM events "
            f"WHERE NOT {VALID_EVENT}"
        ):
            payload = dict(
                zip(
                    ("user_id", "video_id", "timestamp", "event", "watch_seconds", "rating"),
                    row[1:],
                    strict=True,
                )
            )
            found.append(
                {
                    "source": EVENT_ROW,
                    "ref": int(row[0]),
                    "payload": payload,
                    "reason": _event_problem(payload),
                }
            )
        for video_id, metadata in self.upload_rows():
            problem = _upload_problem(video_id, metadata)
            if problem:
                found.append(
                    {"source": VIDEO_ROW, "ref": video_id, "payload": metadata, "reason": problem}
                )
        for change in self.catalogue_changes_after(0):
            problem = (
                _upload_problem(change.video_id, change.metadata)
                if change.change == UPSERT
                else None
                if change.change == TAKEDOWN and 0 <= change.video_id <= MAX_ID
                else f"unknown change {change.change!r} or video_id {change.video_id}"
            )
            if problem:
                found.append(
                    {
                        "source": CHANGE_ROW,
                        "ref": change.seq,
                        "payload": change.metadata,
                        "reason": problem,
                    }
                )
        return found

    def repair(self) -> list[dict[str, Any]]:
        """Moves every invalid live row (`invalid_rows`) into the quarantine table, with its
        content, in one transaction; servers stop meeting them and nothing is lost.

        Skipped entries whose rows are valid (a bug since fixed) are cleared, so the next
        server start applies them again.

        Returns:
            The rows set aside.
        """
        invalid = self.invalid_rows()
        tables = {
            EVENT_ROW: ("events", "id"),
            VIDEO_ROW: ("videos", "video_id"),
            CHANGE_ROW: ("catalogue_changes", "seq"),
        }
        with self._transaction() as connection:
            connection.execute("DELETE FROM quarantine WHERE status = ?", (SKIPPED,))
            for row in invalid:
                table, key = tables[row["source"]]
                connection.execute(f"DELETE FROM {table} WHERE {key} = ?", (row["ref"],))
                connection.execute(
                    "INSERT OR REPLACE INTO quarantine (source, ref, payload, reason, status, at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        row["source"],
                        row["ref"],
                        json.dumps(row["payload"], default=str),
                        row["reason"],
                        SET_ASIDE,
                        time.time(),
                    ),
                )
        return invalid


def _json_or_none(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _upload_problem(video_id: int, metadata: Any) -> str | None:
    if not isinstance(metadata, dict):
        return "metadata is not a JSON object"
    try:
        row = validate_upload(metadata)
    except DataError as error:
        return str(error)
    if row["video_id"] != video_id:
        return f"metadata names video_id {row['video_id']}, the row {video_id}"
    return None


def _event_problem(event: dict[str, Any]) -> str:
    try:
        FeedbackEvent(**event)
    except (DataError, TypeError) as error:
        return str(error)
    return "outside the stored-event bounds"
