"""`EventStore`: the interface every backend serves, and what they share.

Every method is written here once, over four primitives a backend provides: a read
(`EventStore._fetch`), one write transaction (`EventStore._write`), a bulk read into a table
(`EventStore._frame`) and a consistent snapshot for copying (`EventStore._snapshot`). So the
write path's checks, the quarantine, ``check`` and ``repair`` behave the same on SQLite and on
PostgreSQL, and their tests run against both.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from core.errors import DataError, StoreError
from core.schema import MAX_ID, validate_upload
from pipelines.serving.events import sql
from pipelines.serving.events.records import (
    CHANGE_ROW,
    EVENT_ROW,
    SET_ASIDE,
    SKIPPED,
    TAKEDOWN,
    UPSERT,
    VALID_EVENT,
    VIDEO_ROW,
    CatalogueChange,
    FeedbackEvent,
    change_problem,
    event_problem,
    json_or_none,
    upload_problem,
)
from pipelines.serving.events.urls import POSTGRESQL, backend_of

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Where `repair` finds each kind of row.
_LIVE_TABLES = {
    EVENT_ROW: ("events", "id"),
    VIDEO_ROW: ("videos", "video_id"),
    CHANGE_ROW: ("catalogue_changes", "seq"),
}


class Writer(abc.ABC):
    """One open write transaction of a backend (statements use ``?`` placeholders)."""

    @abc.abstractmethod
    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        """Runs one statement."""

    @abc.abstractmethod
    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """Runs one statement per row."""

    @abc.abstractmethod
    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Runs a query inside the transaction."""

    @abc.abstractmethod
    def copy_in(self, table: sql.Table, rows: Iterable[Sequence[Any]]) -> int:
        """Bulk-inserts rows of every column of ``table`` (ids included); returns how many."""

    @abc.abstractmethod
    def identities_follow(self, table: sql.Table, high_water: int) -> None:
        """After rows were copied in with their ids: the next id drawn is above both the
        largest id now stored and ``high_water``, the largest the source ever handed out (an
        id set aside by repair is never handed out again, as a bundle may count it)."""


class Snapshot(abc.ABC):
    """A consistent read of every table (`vidrec events migrate` copies from one)."""

    @abc.abstractmethod
    def rows(self, table: sql.Table, chunk: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        """Every row of ``table`` (all its columns), in key order, ``chunk`` at a time."""

    @abc.abstractmethod
    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A query in the same snapshot."""

    @abc.abstractmethod
    def high_water(self, table: sql.Table) -> int:
        """The largest id ``table``'s identity ever handed out (0: none, or no identity)."""


class EventStore(abc.ABC):
    """The live event store: feedback events, uploads, takedowns, the ordered catalogue change
    log and the quarantine of rows that cannot be served (docs/design.md §7).

    ``EventStore(location, **options)`` opens the backend ``location`` names (`urls`): a
    SQLite file (a plain path or ``sqlite:///...``, `SQLiteEventStore`) or PostgreSQL
    (``postgresql://...``, `PostgresEventStore`). Both are safe to use from several threads
    and processes, acknowledge a write only once its transaction has committed, keep the change
    log in commit order, create and migrate their schema themselves, and refuse a store written
    by a newer vidrec.

    Raises:
        StoreError: The store cannot be opened, is newer than this code, or (from any method)
            cannot be read or written now; the API answers 503 with ``Retry-After``.
    """

    backend: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> EventStore:
        if cls is EventStore:
            location = args[0] if args else kwargs.get("location")
            if location is None:
                raise TypeError("EventStore() needs the store's location (a path or a URL)")
            cls = _backend_class(location)
        return super().__new__(cls)

    #: How the store is shown in logs and messages (never with a password).
    location: str

    # -- primitives -------------------------------------------------------------------------

    @abc.abstractmethod
    def _fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query, read outside any write."""

    @abc.abstractmethod
    def _write(self, work: Callable[[Writer], T], *, ordered: bool = False) -> T:
        """Runs ``work`` in one transaction and commits it before returning.

        Args:
            work: Issues the statements; may run twice when the backend found its connection
                dead before anything was written.
            ordered: The transaction appends to the catalogue change log: the backend makes
                sure that log is committed in ``seq`` order.
        """

    @abc.abstractmethod
    def _frame(self, statement: str, params: Sequence[Any], columns: Sequence[str]) -> Any:
        """A query's rows as a `pandas.DataFrame` with ``columns``, read in bulk."""

    @abc.abstractmethod
    def _snapshot(self) -> contextlib.AbstractContextManager[Snapshot]:
        """A consistent read-only view of every table."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases this store's connections."""

    def health(self) -> dict[str, Any]:
        """What ``/readyz`` shows of the store: ``backend``, ``location``, ``state`` (``ok``
        or ``unavailable``) and, when unavailable, ``error`` and ``unavailable_seconds``."""
        return {"backend": self.backend, "location": self.location, "state": "ok"}

    # -- schema -----------------------------------------------------------------------------

    def _prepare_schema(self, writer: Writer, tables: set[str], create: str) -> int:
        """Creates or migrates the schema to `sql.SCHEMA_VERSION` inside ``writer``'s
        transaction; returns the version found (0: a new store).

        Raises:
            StoreError: The store records a newer version than this code knows.
        """
        if "store_meta" in tables:
            row = writer.fetchall(sql.READ_VERSION)
            found = int(row[0][0]) if row else 1
        else:
            found = 1 if "events" in tables else 0
        if found > sql.SCHEMA_VERSION:
            raise StoreError(
                f"event store {self.location} has schema version {found}, newer than this "
                f"vidrec knows ({sql.SCHEMA_VERSION}): upgrade vidrec on this machine to the "
                "version that wrote it, or point --events at another store"
            )
        if found == sql.SCHEMA_VERSION:
            return found
        for statement in _statements(create):
            writer.execute(statement)
        writer.execute(sql.STORE_META)
        for version in range(max(found, 1), sql.SCHEMA_VERSION):
            for statement in sql.MIGRATIONS[version]:
                writer.execute(statement)
        writer.execute(sql.WRITE_VERSION, (str(sql.SCHEMA_VERSION),))
        if found:
            logger.info(
                "event store %s: migrated from schema version %d to %d",
                self.location,
                found,
                sql.SCHEMA_VERSION,
            )
        return found

    def schema_version(self) -> int:
        """The schema version the store records."""
        return int(self._fetch(sql.READ_VERSION)[0][0])

    # -- events -----------------------------------------------------------------------------

    def append(self, events: Sequence[FeedbackEvent]) -> int:
        """Stores events in one transaction; returns how many were written (once committed)."""
        if not events:
            return 0
        now = time.time()
        rows = [event.row(now) for event in events]
        self._write(lambda writer: writer.executemany(sql.INSERT_EVENT, rows))
        return len(rows)

    def user_events(
        self, user_id: int, after_id: int, limit: int
    ) -> list[tuple[int, int, float, float]]:
        """A user's most recent events stored after event id ``after_id``, oldest first.

        Returns:
            ``(video_id, timestamp, watch_seconds, rating)`` per event, NaN where unknown.
        """
        rows = self._fetch(sql.USER_EVENTS, (int(user_id), int(after_id), int(limit)))
        rows.reverse()
        nan = float("nan")
        return [
            (int(v), int(t), nan if w is None else float(w), nan if r is None else float(r))
            for v, t, w, r in rows
        ]

    def last_id(self) -> int:
        """Id of the newest stored event (0 when empty); no event with a smaller id can be
        committed after this returns, so it is a safe watermark for the retrain."""
        return int(self._fetch(sql.LAST_ID)[0][0] or 0)

    def interactions(
        self, since: int | None = None, until: int | None = None, until_id: int | None = None
    ) -> pd.DataFrame:
        """Events in ``[since, until)`` (and stored with id <= ``until_id``) as a table, in
        stored order, read in bulk.

        Returns:
            Columns ``user_id, video_id, timestamp, event, watch_seconds, rating`` (not yet
            validated; pass it through `core.schema.validate_interactions`).
        """
        clauses, params = [VALID_EVENT], []
        for clause, value in (
            ("timestamp >= ?", since),
            ("timestamp < ?", until),
            ("id <= ?", until_id),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(int(value))
        statement = (
            f"SELECT {', '.join(sql.EVENT_COLUMNS)} FROM events WHERE "
            + " AND ".join(clauses)
            + " ORDER BY id"
        )
        frame = self._frame(statement, params, sql.EVENT_COLUMNS)
        skipped = int(self._fetch(sql.COUNT_INVALID_EVENTS)[0][0])
        if skipped:
            logger.warning(
                "%s: %d stored event(s) are invalid and left out; see `vidrec events check`",
                self.location,
                skipped,
            )
        return _event_frame(frame)

    def count(self) -> int:
        """Events stored."""
        return int(self._fetch(sql.COUNT_EVENTS)[0][0])

    # -- catalogue changes ------------------------------------------------------------------

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
        video_id = int(row["video_id"])
        payload = json.dumps(row, sort_keys=True, allow_nan=False)

        def work(writer: Writer) -> None:
            writer.execute(sql.UPSERT_VIDEO, (video_id, payload, time.time()))
            writer.execute(sql.LIFT_TAKEDOWN, (video_id,))
            writer.execute(sql.LOG_CHANGE, (video_id, UPSERT, payload))

        self._write(work, ordered=True)
        return video_id

    def take_down(self, video_id: int) -> None:
        """Records a takedown; the video is never served again until re-uploaded.

        Raises:
            DataError: ``video_id`` is not in ``[0, 2**63 - 1]``; nothing is stored.
        """
        if isinstance(video_id, bool) or not 0 <= int(video_id) <= MAX_ID:
            raise DataError(f"video_id must be in [0, 2**63 - 1], got {video_id!r}")
        video_id = int(video_id)

        def work(writer: Writer) -> None:
            writer.execute(sql.TAKE_DOWN, (video_id, time.time()))
            writer.execute(sql.LOG_CHANGE, (video_id, TAKEDOWN, None))

        self._write(work, ordered=True)

    def catalogue_version(self) -> int:
        """Sequence number of the newest catalogue change (0 when there is none).

        Cheap (the log's primary key): every server process asks on every request, so an
        upload or takedown made through any process is applied by all before their next answer.
        """
        return int(self._fetch(sql.CATALOGUE_VERSION)[0][0] or 0)

    def catalogue_changes_after(self, seq: int) -> list[CatalogueChange]:
        """Catalogue changes committed after ``seq``, oldest first.

        A change whose metadata is not valid JSON comes back with ``metadata`` None: applying
        it fails and the caller quarantines it, like any other row it cannot apply.
        """
        rows = self._fetch(sql.CHANGES_AFTER, (int(seq),))
        return [CatalogueChange(int(q), int(v), c, json_or_none(m)) for q, v, c, m in rows]

    def upload_rows(self) -> list[tuple[int, dict[str, Any] | None]]:
        """``(video_id, metadata)`` of every uploaded or updated video as stored, oldest update
        first (metadata None when it is not valid JSON); not validated."""
        return [(int(v), json_or_none(m)) for v, m in self._fetch(sql.UPLOAD_ROWS)]

    def uploaded_videos(self) -> list[dict[str, Any]]:
        """Metadata of every valid uploaded or updated video, oldest update first; invalid
        rows (an older store, a bug) are left out and logged."""
        valid, skipped = [], 0
        for video_id, metadata in self.upload_rows():
            if upload_problem(video_id, metadata) is None:
                valid.append(validate_upload(metadata))  # type: ignore[arg-type]
            else:
                skipped += 1
        if skipped:
            logger.warning(
                "%s: %d stored upload(s) are invalid and left out; see `vidrec events check`",
                self.location,
                skipped,
            )
        return valid

    def taken_down(self) -> set[int]:
        """Ids of videos taken down."""
        return {int(v) for (v,) in self._fetch(sql.TAKEN_DOWN)}

    # -- rows that cannot be served -----------------------------------------------------------

    def quarantine(self, source: str, ref: int, payload: Any, reason: str) -> None:
        """Records that a stored row could not be applied and was skipped (idempotent: every
        server process that meets the row records it once).

        Args:
            source: `EVENT_ROW`, `VIDEO_ROW` or `CHANGE_ROW`.
            ref: The row's key (event id, video id or change sequence number).
            payload: The row as read, kept for the operator.
            reason: Why it could not be applied.
        """
        params = (
            source,
            int(ref),
            json.dumps(payload, default=str),
            reason[:2_000],
            SKIPPED,
            time.time(),
        )
        self._write(lambda writer: writer.execute(sql.QUARANTINE, params))

    def quarantined(self, status: str | None = None) -> list[dict[str, Any]]:
        """Quarantine entries, oldest first (all, or those with ``status``)."""
        statement, params = sql.QUARANTINED, ()
        if status is not None:
            statement, params = statement + " WHERE status = ?", (status,)
        rows = self._fetch(statement + " ORDER BY id", params)
        keys = ("source", "ref", "payload", "reason", "status", "at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def skipped_count(self) -> int:
        """Rows servers skipped and nobody has repaired yet (`/readyz` reports them)."""
        return int(self._fetch(sql.COUNT_SKIPPED, (SKIPPED,))[0][0])

    def invalid_rows(self) -> list[dict[str, Any]]:
        """Live rows outside the write path's bounds: events, uploads and catalogue changes
        that an older store or a bug let in.

        Returns:
            ``{"source", "ref", "payload", "reason"}`` per row.
        """
        found = []
        for row in self._fetch(sql.INVALID_EVENTS):
            payload = dict(zip(sql.EVENT_COLUMNS, row[1:], strict=True))
            found.append(
                {
                    "source": EVENT_ROW,
                    "ref": int(row[0]),
                    "payload": payload,
                    "reason": event_problem(payload),
                }
            )
        for video_id, metadata in self.upload_rows():
            problem = upload_problem(video_id, metadata)
            if problem:
                found.append(
                    {"source": VIDEO_ROW, "ref": video_id, "payload": metadata, "reason": problem}
                )
        for change in self.catalogue_changes_after(0):
            problem = change_problem(change)
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

        def work(writer: Writer) -> None:
            writer.execute(sql.CLEAR_SKIPPED, (SKIPPED,))
            for row in invalid:
                table, key = _LIVE_TABLES[row["source"]]
                writer.execute(f"DELETE FROM {table} WHERE {key} = ?", (row["ref"],))
                writer.execute(
                    sql.SET_ASIDE_ROW,
                    (
                        row["source"],
                        row["ref"],
                        json.dumps(row["payload"], default=str),
                        row["reason"],
                        SET_ASIDE,
                        time.time(),
                    ),
                )

        # Ordered: it deletes from the change log, which its writers take in turn.
        self._write(work, ordered=True)
        return invalid


def _backend_class(location: str | os.PathLike[str]) -> type[EventStore]:
    # Imported here: the backends import this module, and PostgreSQL's driver is loaded only
    # by the deployments that use it.
    if backend_of(location) == POSTGRESQL:
        from pipelines.serving.events.postgres import PostgresEventStore

        return PostgresEventStore
    from pipelines.serving.events.sqlite import SQLiteEventStore

    return SQLiteEventStore


def _statements(script: str) -> list[str]:
    """The statements of a DDL script (no statement of ours holds a ``;`` of its own)."""
    return [part.strip() for part in script.split(";") if part.strip()]


def _event_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The same column types whichever backend read the rows."""
    frame = frame.astype({"user_id": np.int64, "video_id": np.int64, "timestamp": np.int64})
    frame["event"] = frame["event"].astype(str)
    for column in ("watch_seconds", "rating"):
        frame[column] = pd.to_numeric(frame[column]).astype(np.float32)
    return frame
