"""Checks every loader runs on its parsed tables, and the one place a `Dataset` is built.

The checks need the source's line numbers (or Parquet row numbers), which `core.schema.Dataset`
does not have; that is why they run here, before the `Dataset` validates the rest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError
from core.schema import Dataset
from pipelines.data.readers import TextFormat, line_numbers, location, row_text

logger = logging.getLogger(__name__)

#: What every loader accepts as a path.
PathLike = str | os.PathLike[str]


def check_interaction_rows(
    frame: pd.DataFrame,
    path: Path,
    fmt: TextFormat | None,
    encoding: str,
    drop_duplicates: bool,
) -> pd.DataFrame:
    """Refuses an empty table, negative timestamps and duplicate events, naming the line.

    Args:
        frame: Interactions with int64 ``user_id``, ``video_id`` and ``timestamp`` columns.
        path: The file they came from.
        fmt: Its text format, or ``None`` for Parquet (messages then name rows).
        encoding: Codec of a text file, to find line numbers.
        drop_duplicates: Keep the first of repeated (user, video, timestamp) events instead
            of refusing them.

    Returns:
        ``frame``, or a copy without the repeats (index reset) when ``drop_duplicates``.

    Raises:
        DataError: No rows, a negative timestamp, or a repeated event.
    """
    if len(frame) == 0:
        raise DataError(
            "no interactions (the file has no data rows)",
            source=str(path),
            hint="check the path and that the file is not truncated",
        )
    timestamps = frame["timestamp"].to_numpy()
    negative = np.flatnonzero(timestamps < 0)
    if len(negative):
        row = int(negative[0])
        raise DataError(
            f"negative timestamp {int(timestamps[row])}{row_text(fmt, row)}",
            source=str(path),
            column="timestamp",
            hint="timestamps are seconds since the epoch",
            **location(path, fmt, encoding, row),
        )
    key = ["user_id", "video_id", "timestamp"]
    duplicated = frame.duplicated(key, keep="first").to_numpy()
    if duplicated.any():
        count = int(duplicated.sum())
        if drop_duplicates:
            logger.info("%s: dropping %d duplicate event(s)", path, count)
            return frame.loc[~duplicated].reset_index(drop=True)
        row = int(np.flatnonzero(duplicated)[0])
        values = frame.iloc[row]
        same = (
            (frame["user_id"].to_numpy() == values["user_id"])
            & (frame["video_id"].to_numpy() == values["video_id"])
            & (frame["timestamp"].to_numpy() == values["timestamp"])
        )
        first = int(np.flatnonzero(same)[0])
        if fmt is not None:
            first_line, line = line_numbers(path, fmt, encoding, [first, row])
            repeats = f"repeats the event of line {first_line}"
            where: dict[str, Any] = {"line": line}
        else:
            repeats = f"row {row + 1} repeats the event of row {first + 1}"
            where = {}
        raise DataError(
            f"duplicate event: {repeats} (user_id {int(values['user_id'])}, "
            f"video_id {int(values['video_id'])}, timestamp {int(values['timestamp'])}); "
            f"{count} duplicate(s) in all",
            source=str(path),
            hint="remove them, or load with drop_duplicates=True (CLI: --drop-duplicates)",
            **where,
        )
    return frame


def check_unique_ids(
    frame: pd.DataFrame, column: str, path: Path, fmt: TextFormat | None, encoding: str
) -> None:
    """Raises `DataError` on the first repeat of an id in ``frame[column]`` (int64).

    Args:
        frame: A catalogue or users table.
        column: Its id column.
        path: The file it came from.
        fmt: Its text format, or ``None`` for Parquet.
        encoding: Codec of a text file, to find the line number.
    """
    duplicated = frame[column].duplicated(keep="first").to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise DataError(
            f"{column} {int(frame[column].iloc[row])} is listed more than once{row_text(fmt, row)}",
            source=str(path),
            column=column,
            hint="each id must be listed once; remove the repeated line",
            **location(path, fmt, encoding, row),
        )


def build_dataset(
    name: str,
    interactions: pd.DataFrame,
    videos: pd.DataFrame,
    users: pd.DataFrame | None,
    source: Path,
) -> Dataset:
    """Constructs the `Dataset`, re-raising its validation errors with the data's path.

    Args:
        name: The dataset's name.
        interactions: Events in the schema of `core.schema` (int64 ids and timestamps).
        videos: The catalogue, ``video_id`` int64 and the optional metadata columns.
        users: Users with ``user_id`` int64 and string attributes, or ``None``.
        source: The file or directory the data came from, named in errors.

    Returns:
        The validated dataset.

    Raises:
        DataError: The `Dataset` refused the tables; the message gains ``source``.
    """
    try:
        dataset = Dataset(name=name, interactions=interactions, videos=videos, users=users)
    except DataError as err:
        raise DataError(str(err), source=str(source)) from None
    logger.info("loaded %s", dataset.summary())
    return dataset
