"""The one data schema every loader produces and every job consumes.

Interactions (one row per event, sorted by ``user_id`` then ``timestamp``, ties kept in
source order):

====================  =========  ==============================================
column                dtype      meaning
====================  =========  ==============================================
``user_id``           int64      raw user id
``video_id``          int64      raw video id
``timestamp``         int64      seconds since the epoch
``rating``            float32    explicit rating, NaN when unknown
``watch_seconds``     float32    seconds watched, NaN when unknown
``event``             object     event kind (``"watch"``, ``"rating"``, ...)
====================  =========  ==============================================

Videos (one row per video, unique ``video_id``):

====================  =========  ==============================================
``video_id``          int64      raw video id
``title``             object     str, ``""`` when unknown
``categories``        object     tuple of str (genres on MovieLens)
``tags``              object     tuple of str
``year``              float32    release year, NaN when unknown
``duration``          float32    seconds, NaN when unknown
``creator``           object     str, ``""`` when unknown
``upload_time``       float64    seconds since the epoch, NaN when unknown
====================  =========  ==============================================

Users (optional): ``user_id`` int64 plus any attribute columns; attributes are treated as
categorical strings by the models.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError

INTERACTION_COLUMNS: tuple[str, ...] = (
    "user_id",
    "video_id",
    "timestamp",
    "rating",
    "watch_seconds",
    "event",
)
REQUIRED_INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "video_id", "timestamp")
VIDEO_COLUMNS: tuple[str, ...] = (
    "video_id",
    "title",
    "categories",
    "tags",
    "year",
    "duration",
    "creator",
    "upload_time",
)

# Bounds of what the online write path accepts (`validate_upload`, the event store, the
# HTTP models). Anything outside them is a client bug or an attack, and a value that cannot be
# served must never reach the event store: one stored row is replayed by every server start.
MAX_ID = 2**63 - 1
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01 UTC; later is milliseconds or garbage
MAX_RATING = 5.0  # the models read rating / 5 as engagement
MAX_SECONDS = 1_000_000.0  # watch_seconds and duration: 11.6 days
YEAR_RANGE = (1800.0, 2200.0)
MAX_TITLE_CHARS = 1_000
MAX_NAME_CHARS = 200  # creator, one category, one tag
MAX_CATEGORIES = 32
MAX_TAGS = 64


def _require_columns(df: pd.DataFrame, required: Iterable[str], source: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found {list(df.columns)}",
            source=source,
            hint="rename the columns or pass a column mapping",
        )


def _as_int64(df: pd.DataFrame, column: str, source: str) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{int(bad.sum())} value(s) are not integers, first {df[column].iloc[row]!r} "
            f"at row {row}",
            source=source,
            column=column,
            hint="fix or drop those rows",
        )
    as_float = values.to_numpy(dtype=np.float64)
    # Outside int64 the cast below would wrap silently (2**63 becomes -2**63). Integers stay
    # exact in their own dtype; floats compare exactly with the power-of-two limits.
    if values.dtype.kind == "u":
        outside = values.to_numpy() > MAX_ID
    elif values.dtype.kind == "f":
        outside = ~((as_float >= -(2.0**63)) & (as_float < 2.0**63))
    else:
        outside = np.zeros(len(values), dtype=bool)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"value {df[column].iloc[row]!r} at row {row} does not fit in int64",
            source=source,
            column=column,
            hint="ids and timestamps must be integers in [-2**63, 2**63 - 1]",
        )
    if not np.array_equal(as_float, np.floor(as_float)):
        row = int(np.flatnonzero(as_float != np.floor(as_float))[0])
        raise DataError(
            f"value {df[column].iloc[row]!r} at row {row} is not a whole number",
            source=source,
            column=column,
            hint="ids and timestamps must be integers",
        )
    return values.to_numpy(dtype=np.int64)


def _as_tuple_of_str(value: object) -> tuple[str, ...]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    if isinstance(value, str):
        return tuple(part for part in value.split("|") if part) if value else ()
    return tuple(str(v) for v in value)  # type: ignore[union-attr]


def validate_interactions(
    df: pd.DataFrame, source: str = "interactions", *, drop_duplicates: bool = False
) -> pd.DataFrame:
    """Checks and normalises an interactions table to the schema above.

    Args:
        df: Table with at least ``user_id``, ``video_id`` and ``timestamp``.
        source: Name used in error messages (file path or description).
        drop_duplicates: Keep the first of identical ``(user_id, video_id, timestamp)``
            events instead of refusing them.

    Returns:
        A new table with exactly `INTERACTION_COLUMNS`, sorted by user then time (stable).

    Raises:
        DataError: Empty table, missing columns, non-integer ids or timestamps, negative
            timestamps, or duplicate events when ``drop_duplicates`` is False.
    """
    if len(df) == 0:
        raise DataError("no interactions", source=source, hint="check the path and filters")
    _require_columns(df, REQUIRED_INTERACTION_COLUMNS, source)
    out = pd.DataFrame(
        {
            "user_id": _as_int64(df, "user_id", source),
            "video_id": _as_int64(df, "video_id", source),
            "timestamp": _as_int64(df, "timestamp", source),
        }
    )
    if (out["timestamp"] < 0).any():
        row = int(np.flatnonzero(out["timestamp"].to_numpy() < 0)[0])
        raise DataError(
            f"negative timestamp at row {row}",
            source=source,
            column="timestamp",
            hint="timestamps are seconds since the epoch",
        )
    for column in ("rating", "watch_seconds"):
        if column in df.columns:
            values = pd.to_numeric(df[column], errors="coerce")
            bad = values.isna() & df[column].notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"value {df[column].iloc[row]!r} at row {row} is not a number",
                    source=source,
                    column=column,
                )
            out[column] = values.to_numpy(dtype=np.float32)
        else:
            out[column] = np.full(len(out), np.nan, dtype=np.float32)
    out["event"] = (
        df["event"].astype(str).to_numpy(dtype=object)
        if "event" in df.columns
        else np.full(len(out), "watch", dtype=object)
    )
    duplicated = out.duplicated(["user_id", "video_id", "timestamp"], keep="first").to_numpy()
    if duplicated.any():
        if not drop_duplicates:
            row = int(np.flatnonzero(duplicated)[0])
            raise DataError(
                f"{int(duplicated.sum())} duplicate event(s) (same user_id, video_id, timestamp), "
                f"first at row {row}: user {out['user_id'].iloc[row]}, "
                f"video {out['video_id'].iloc[row]}",
                source=source,
                hint="remove them, or load with drop_duplicates=True (CLI: --drop-duplicates)",
            )
        out = out.loc[~duplicated]
    out = out.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    return out


def validate_videos(df: pd.DataFrame, source: str = "videos") -> pd.DataFrame:
    """Checks and normalises a videos table to the schema above.

    Missing optional columns are filled with their "unknown" value.

    Raises:
        DataError: Empty table, no ``video_id`` column, non-integer or duplicate ids.
    """
    if len(df) == 0:
        raise DataError("no videos", source=source, hint="check the path")
    _require_columns(df, ("video_id",), source)
    ids = _as_int64(df, "video_id", source)
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise DataError(
            f"video_id {ids[row]} appears more than once (row {row})",
            source=source,
            column="video_id",
            hint="each video must be listed once",
        )
    n = len(df)

    def column_or(name: str, default: object) -> pd.Series:
        return df[name] if name in df.columns else pd.Series([default] * n, index=df.index)

    def float_column(name: str, dtype: type) -> np.ndarray:
        if name not in df.columns:
            return np.full(n, np.nan, dtype=dtype)
        return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=dtype)

    out = pd.DataFrame(
        {
            "video_id": ids,
            "title": column_or("title", "").fillna("").astype(str).to_numpy(dtype=object),
            "categories": [_as_tuple_of_str(v) for v in column_or("categories", ())],
            "tags": [_as_tuple_of_str(v) for v in column_or("tags", ())],
            "year": float_column("year", np.float32),
            "duration": float_column("duration", np.float32),
            "creator": column_or("creator", "").fillna("").astype(str).to_numpy(dtype=object),
            "upload_time": float_column("upload_time", np.float64),
        }
    )
    return out.reset_index(drop=True)


def validate_upload(video: dict[str, Any], source: str = "upload") -> dict[str, Any]:
    """Checks one uploaded video's metadata against the write-path bounds above.

    Stricter than `validate_videos`, which reads whole data sets as they come: an upload is
    stored and replayed by every server, so anything that could not be embedded and served is
    refused here, before it is stored.

    Args:
        video: ``video_id`` (required) and any of the other `VIDEO_COLUMNS`; ``None`` or a
            missing key means unknown.
        source: Name used in error messages.

    Returns:
        The row with every column of `VIDEO_COLUMNS` (unknown numbers as None, lists as lists).

    Raises:
        DataError: Naming the first field that is missing, of the wrong type or out of range.
    """
    if not isinstance(video, dict):
        raise DataError(f"expected an object, got {type(video).__name__}", source=source)
    unknown = sorted(set(video) - set(VIDEO_COLUMNS))
    if unknown:
        raise DataError(f"unknown field(s) {unknown}; known: {list(VIDEO_COLUMNS)}", source=source)

    def fail(column: str, message: str) -> DataError:
        return DataError(message, source=source, column=column)

    video_id = video.get("video_id")
    if isinstance(video_id, bool) or not isinstance(video_id, int | np.integer):
        raise fail("video_id", f"must be an integer, got {video_id!r}")
    if not 0 <= int(video_id) <= MAX_ID:
        raise fail("video_id", f"must be in [0, 2**63 - 1], got {video_id}")
    row: dict[str, Any] = {"video_id": int(video_id)}
    for column, limit in (("title", MAX_TITLE_CHARS), ("creator", MAX_NAME_CHARS)):
        value = video.get(column)
        value = "" if value is None else value
        if not isinstance(value, str):
            raise fail(column, f"must be a string, got {type(value).__name__}")
        if len(value) > limit:
            raise fail(column, f"has {len(value)} characters; at most {limit}")
        _require_text(value, column, source)
        row[column] = value
    for column, most in (("categories", MAX_CATEGORIES), ("tags", MAX_TAGS)):
        values = video.get(column)
        values = [] if values is None else values
        if not isinstance(values, list | tuple):
            raise fail(column, f"must be a list of strings, got {type(values).__name__}")
        if len(values) > most:
            raise fail(column, f"has {len(values)} entries; at most {most}")
        for value in values:
            if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS:
                raise fail(column, f"entries must be strings of 1 to {MAX_NAME_CHARS} characters")
            _require_text(value, column, source)
        row[column] = list(values)
    ranges = {
        "year": YEAR_RANGE,
        "duration": (0.0, MAX_SECONDS),
        "upload_time": (0.0, float(MAX_TIMESTAMP)),
    }
    for column, (low, high) in ranges.items():
        value = video.get(column)
        if value is None:
            row[column] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise fail(column, f"must be a number, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            raise fail(
                column, f"must be a finite number in [{low:.15g}, {high:.15g}], got {value!r}"
            )
        row[column] = float(value)
    if row["duration"] == 0.0:
        raise fail("duration", "must be > 0 seconds (leave it out when unknown)")
    return row


def _require_text(value: str, column: str, source: str) -> None:
    # JSON may carry lone surrogates ("\\ud800"), which no UTF-8 store or tokenizer accepts.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(
            f"is not valid Unicode text ({error.reason} at character {error.start})",
            source=source,
            column=column,
        ) from None


def validate_users(df: pd.DataFrame, source: str = "users") -> pd.DataFrame:
    """Checks a users table: unique int64 ``user_id``; other columns become strings.

    Raises:
        DataError: No ``user_id`` column, non-integer or duplicate ids.
    """
    _require_columns(df, ("user_id",), source)
    ids = _as_int64(df, "user_id", source)
    if pd.Series(ids).duplicated().any():
        raise DataError(
            "user_id values are not unique",
            source=source,
            column="user_id",
            hint="each user must be listed once",
        )
    out = pd.DataFrame({"user_id": ids})
    for column in df.columns:
        if column != "user_id":
            out[column] = df[column].fillna("").astype(str).to_numpy(dtype=object)
    return out


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Interactions plus the catalogue (and users where known), validated on construction.

    Attributes:
        name: Short name used in reports (``"ml-100k"``, ``"synthetic"``).
        interactions: Table in the interactions schema.
        videos: Table in the videos schema; every video of ``interactions`` is listed.
        users: Optional table in the users schema.
    """

    name: str
    interactions: pd.DataFrame
    videos: pd.DataFrame
    users: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        interactions = validate_interactions(self.interactions, f"{self.name} interactions")
        videos = validate_videos(self.videos, f"{self.name} videos")
        unknown = ~np.isin(interactions["video_id"].to_numpy(), videos["video_id"].to_numpy())
        if unknown.any():
            example = int(interactions["video_id"].to_numpy()[unknown][0])
            raise DataError(
                f"{int(unknown.sum())} interaction(s) name videos missing from the catalogue, "
                f"e.g. video_id {example}",
                source=f"{self.name} interactions",
                column="video_id",
                hint="add those videos to the videos table or drop their interactions",
            )
        object.__setattr__(self, "interactions", interactions)
        object.__setattr__(self, "videos", videos)
        if self.users is not None:
            object.__setattr__(self, "users", validate_users(self.users, f"{self.name} users"))

    @property
    def num_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def num_videos(self) -> int:
        return len(self.videos)

    def summary(self) -> dict[str, object]:
        """Counts and time span, for logs and manifests."""
        ts = self.interactions["timestamp"]
        return {
            "name": self.name,
            "users": self.num_users,
            "videos": self.num_videos,
            "interactions": len(self.interactions),
            "first_timestamp": int(ts.min()),
            "last_timestamp": int(ts.max()),
        }
