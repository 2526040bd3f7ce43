"""What the event store holds, checked the same way by every backend.

The write path refuses anything a server could not serve (`FeedbackEvent`,
`core.schema.validate_upload`); `VALID_EVENT` is the same bound in SQL, so that a row an older
store or a bug let in is never read; the ``*_problem`` helpers say why a stored row is invalid
(`vidrec events check`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from core.errors import DataError
from core.schema import MAX_ID, MAX_RATING, MAX_SECONDS, MAX_TIMESTAMP, validate_upload

EVENT_KINDS: frozenset[str] = frozenset({"watch", "rating", "like", "skip"})

# A stored event the request path and the retrain may read. Rows outside it can only come from
# an older store or a bug (the write path refuses them): they are skipped on read and shown by
# `vidrec events check`. Plain SQL that SQLite and PostgreSQL read alike.
VALID_EVENT = (
    f"(user_id BETWEEN 0 AND {MAX_ID} AND video_id BETWEEN 0 AND {MAX_ID}"
    f" AND timestamp BETWEEN 0 AND {MAX_TIMESTAMP}"
    # SQLite keeps a REAL such as 1.5 in an INTEGER column; the retrain's loader refuses it.
    " AND user_id = CAST(user_id AS BIGINT) AND video_id = CAST(video_id AS BIGINT)"
    " AND timestamp = CAST(timestamp AS BIGINT)"
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

    def row(self, received_at: float) -> tuple[Any, ...]:
        """The ``events`` columns after ``id``, as plain Python values (numpy ints and floats
        would reach the database drivers as types they do not all take)."""
        return (
            int(self.user_id),
            int(self.video_id),
            int(self.timestamp),
            self.event,
            None if self.watch_seconds is None else float(self.watch_seconds),
            None if self.rating is None else float(self.rating),
            received_at,
        )


def json_or_none(text: str | None) -> Any:
    """Parsed JSON, or None for NULL or text that is not JSON (an invalid stored row)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def upload_problem(video_id: int, metadata: Any) -> str | None:
    """Why a stored upload cannot be applied, or None when it can."""
    if not isinstance(metadata, dict):
        return "metadata is not a JSON object"
    try:
        row = validate_upload(metadata)
    except DataError as error:
        return str(error)
    if row["video_id"] != video_id:
        return f"metadata names video_id {row['video_id']}, the row {video_id}"
    return None


def change_problem(change: CatalogueChange) -> str | None:
    """Why a stored catalogue change cannot be applied, or None when it can."""
    if change.change == UPSERT:
        return upload_problem(change.video_id, change.metadata)
    if change.change == TAKEDOWN and 0 <= change.video_id <= MAX_ID:
        return None
    return f"unknown change {change.change!r} or video_id {change.video_id}"


def event_problem(event: dict[str, Any]) -> str:
    """Why a stored event is outside the bounds (`VALID_EVENT` said it is)."""
    try:
        FeedbackEvent(**event)
    except (DataError, TypeError) as error:
        return str(error)
    return "outside the stored-event bounds"
