"""Generic interactions loader: a CSV, TSV or Parquet file, with an optional column mapping.

`load_interactions_file` reads interactions (and optionally a videos and a users file) whose
columns are renamed to the schema's by a mapping such as ``{"item": "video_id"}``. Errors name
the line of a text file, or the row of a Parquet file, which has no lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError
from core.schema import VIDEO_COLUMNS, Dataset
from pipelines.data.checks import (
    PathLike,
    build_dataset,
    check_interaction_rows,
    check_unique_ids,
)
from pipelines.data.readers import (
    TextFormat,
    check_file,
    is_int_column,
    location,
    read_delimited,
    read_parquet,
    row_text,
)


def load_interactions_file(
    path: PathLike,
    column_mapping: dict[str, str] | None = None,
    videos_path: PathLike | None = None,
    users_path: PathLike | None = None,
    encoding: str = "utf-8",
    drop_duplicates: bool = False,
) -> Dataset:
    """Loads interactions from a generic CSV, TSV or Parquet file (chosen by the suffix).

    The interactions need ``user_id``, ``video_id`` and ``timestamp`` (integer seconds, or
    ISO-8601 times) and may have ``rating``, ``watch_seconds`` and ``event``; other columns
    are ignored. The optional videos file needs ``video_id`` and may have the other video
    columns (``categories`` and ``tags`` as ``A|B`` strings or lists); the optional users file
    needs ``user_id``, and its other columns become attributes.

    Args:
        path: The interactions file (``.csv``, ``.tsv``, optionally ``.gz``; ``.parquet``).
        column_mapping: Source column name -> schema column name, applied to all three files,
            e.g. ``{"item": "video_id", "ts": "timestamp"}``.
        videos_path: Catalogue file; without it, a catalogue with empty metadata is built
            from the video ids seen.
        users_path: Users file.
        encoding: Codec of text files.
        drop_duplicates: Keep the first of repeated (user, video, timestamp) events instead
            of refusing them.

    Returns:
        The dataset, named after the interactions file's stem.

    Raises:
        DataError: Missing file or columns, unreadable file, malformed rows (file and line).
    """
    source = Path(path)
    mapping = dict(column_mapping or {})
    frame, fmt, columns_seen = _read_table_file(
        source,
        mapping,
        encoding,
        what="interactions with user_id, video_id and timestamp columns",
        int_columns=("user_id", "video_id"),
        float_columns=("rating", "watch_seconds"),
        required=("user_id", "video_id", "timestamp"),
    )
    missing = [c for c in ("user_id", "video_id", "timestamp") if c not in frame.columns]
    absent = [k for k, target in mapping.items() if target in missing and k not in columns_seen]
    if absent:
        raise DataError(
            f"column_mapping names column(s) {absent} that the file does not have; "
            f"found {columns_seen}",
            source=str(source),
            line=1 if fmt is not None else None,
            hint="fix the column mapping",
        )
    if missing:
        raise DataError(
            f"missing column(s) {missing}; found {list(frame.columns)}",
            source=str(source),
            line=1 if fmt is not None else None,
            hint="rename them or pass column_mapping={'<your column>': '<schema column>', ...}",
        )
    interactions = pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(np.int64),
            "video_id": frame["video_id"].to_numpy(np.int64),
            "timestamp": _timestamps(frame["timestamp"], source, fmt, encoding),
        }
    )
    for column in ("rating", "watch_seconds"):
        if column in frame.columns:
            interactions[column] = frame[column].to_numpy(np.float32, na_value=np.nan)
    if "event" in frame.columns:
        interactions["event"] = frame["event"].fillna("").astype(str).to_numpy(dtype=object)
    interactions = check_interaction_rows(interactions, source, fmt, encoding, drop_duplicates)

    if videos_path is not None:
        videos_file = Path(videos_path)
        videos, video_columns = _read_keyed_table(
            videos_file,
            mapping,
            encoding,
            key="video_id",
            what="videos with a video_id column",
            float_columns=("year", "duration", "upload_time"),
        )
        columns_seen += video_columns
        videos = videos[[c for c in videos.columns if c in VIDEO_COLUMNS]]
        known = np.isin(interactions["video_id"].to_numpy(), videos["video_id"].to_numpy())
        if not known.all():
            example = int(interactions["video_id"].to_numpy()[~known][0])
            raise DataError(
                f"{int((~known).sum())} interaction(s) name videos missing from {videos_file}, "
                f"e.g. video_id {example}",
                source=str(source),
                column="video_id",
                hint="add those videos to the videos file or drop their interactions",
            )
    else:
        videos = pd.DataFrame({"video_id": np.unique(interactions["video_id"].to_numpy())})

    users = None
    if users_path is not None:
        users, user_columns = _read_keyed_table(
            Path(users_path), mapping, encoding, key="user_id", what="users with a user_id column"
        )
        columns_seen += user_columns
    unused = [key for key in mapping if key not in columns_seen]
    if unused:
        raise DataError(
            f"column_mapping names column(s) {unused} that none of the files has",
            source=str(source),
            hint="fix the column mapping",
        )
    name = source.name.split(".")[0] or "interactions"
    return build_dataset(name, interactions, videos, users, source)


def _read_keyed_table(
    path: Path,
    mapping: dict[str, str],
    encoding: str,
    *,
    key: str,
    what: str,
    float_columns: Sequence[str] = (),
) -> tuple[pd.DataFrame, list[str]]:
    """Reads a videos or users file: one row per ``key``, other text columns as strings.

    Args:
        path: The file.
        mapping: Source column name -> schema column name.
        encoding: Codec of a text file.
        key: The id column (schema name), ``"video_id"`` or ``"user_id"``.
        what: What the file is, for the "not found" message.
        float_columns: Schema columns that must hold numbers (or be empty).

    Returns:
        The renamed table with ``key`` as int64, and the file's own column names.

    Raises:
        DataError: No ``key`` column, a repeated id, or any read error.
    """
    frame, fmt, columns = _read_table_file(
        path,
        mapping,
        encoding,
        what=what,
        int_columns=(key,),
        float_columns=float_columns,
        all_str=True,
    )
    if key not in frame.columns:
        raise DataError(
            f"missing column {key!r}; found {list(frame.columns)}",
            source=str(path),
            hint=f"rename it or pass column_mapping={{'<your column>': {key!r}}}",
        )
    check_unique_ids(frame, key, path, fmt, encoding)
    return frame, columns


def table_kind(path: Path) -> str | None:
    """``"csv"``, ``"tsv"`` (either optionally ``.gz``) or ``"parquet"`` by suffix, else ``None``.

    A gzipped Parquet file is ``None``: Parquet compresses inside the file.
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in (".parquet", ".pq"):
        return "parquet" if path.suffix.lower() != ".gz" else None
    if last == ".csv":
        return "csv"
    if last == ".tsv":
        return "tsv"
    return None


def _read_table_file(
    path: Path,
    mapping: dict[str, str],
    encoding: str,
    *,
    what: str,
    int_columns: Sequence[str],
    float_columns: Sequence[str] = (),
    required: Sequence[str] = (),
    all_str: bool = False,
) -> tuple[pd.DataFrame, TextFormat | None, list[str]]:
    """Reads a CSV/TSV/Parquet file and renames its columns by ``mapping``.

    ``int_columns``, ``float_columns`` and ``required`` are schema names (after mapping);
    ``all_str`` reads the other columns of a text file as strings.

    Returns:
        The renamed table, the text format (``None`` for Parquet, where there are no lines)
        and the file's own column names.
    """
    check_file(path, what)
    kind = table_kind(path)
    if kind is None:
        raise DataError(
            "unsupported file type",
            source=str(path),
            hint="use .csv, .tsv (optionally .gz) or .parquet",
        )
    inverse = {target: source for source, target in mapping.items()}
    fmt: TextFormat | None
    if kind == "parquet":
        fmt = None
        frame = read_parquet(path, pd.read_parquet, hint="is it really a Parquet file?")
        frame.columns = [str(c) for c in frame.columns]
    else:
        fmt = TextFormat("," if kind == "csv" else "\t", None, quoted=True)
        frame = read_delimited(
            path,
            fmt,
            encoding,
            what=what,
            int_columns=[inverse.get(c, c) for c in int_columns],
            required=[inverse.get(c, c) for c in required],
            all_str=all_str,
        )
    source_columns = list(frame.columns)
    frame = frame.rename(columns=mapping)
    if frame.columns.duplicated().any():
        duplicates = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise DataError(
            f"column(s) {duplicates} appear twice after applying the column mapping",
            source=str(path),
            hint="map only one source column to each schema column",
        )
    for column in int_columns:
        if column in frame.columns:
            frame[column] = _int_values(frame[column], path, fmt, encoding, column)
    for column in float_columns:
        if column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
            converted = pd.to_numeric(frame[column], errors="coerce")
            bad = np.flatnonzero((converted.isna() & frame[column].notna()).to_numpy())
            if len(bad):
                row = int(bad[0])
                raise DataError(
                    f"{frame[column].iloc[row]!r} is not a number{row_text(fmt, row)}",
                    source=str(path),
                    column=column,
                    hint="fix or delete that row",
                    **location(path, fmt, encoding, row),
                )
            frame[column] = converted
    return frame, fmt, source_columns


def _int_values(
    series: pd.Series, path: Path, fmt: TextFormat | None, encoding: str, column: str
) -> np.ndarray:
    """``series`` as int64, or a `DataError` naming the first bad line (or row)."""
    if is_int_column(series) and not series.isna().any():
        return series.to_numpy(np.int64)
    converted = pd.to_numeric(series, errors="coerce")
    as_float = converted.to_numpy(np.float64, na_value=np.nan)
    bad = np.isnan(as_float) | (as_float != np.floor(as_float))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = series.iloc[row]
        text = "is missing" if pd.isna(value) else f"{value!r} is not an integer"
        raise DataError(
            f"{text}{row_text(fmt, row)}",
            source=str(path),
            column=column,
            hint="ids and timestamps must be whole numbers; fix or delete that row",
            **location(path, fmt, encoding, row),
        )
    return as_float.astype(np.int64)


def _timestamps(series: pd.Series, path: Path, fmt: TextFormat | None, encoding: str) -> np.ndarray:
    """Seconds since the epoch from integers or (all) ISO-8601 date-time strings."""
    if pd.api.types.is_datetime64_any_dtype(series):
        if series.isna().any():
            return _int_values(series.astype("float64"), path, fmt, encoding, "timestamp")
        values = series.dt.tz_localize("UTC") if series.dt.tz is None else series
        return (values.astype("datetime64[ns, UTC]").astype("int64") // 10**9).to_numpy(np.int64)
    numeric = pd.to_numeric(series, errors="coerce")
    if pd.api.types.is_numeric_dtype(series) or numeric.notna().any():
        return _int_values(series, path, fmt, encoding, "timestamp")
    parsed = pd.to_datetime(series, utc=True, format="ISO8601", errors="coerce")
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(
            f"{series.iloc[row]!r} is neither seconds since the epoch nor an ISO-8601 time"
            f"{row_text(fmt, row)}",
            source=str(path),
            column="timestamp",
            hint="fix or delete that row",
            **location(path, fmt, encoding, row),
        )
    return (parsed.astype("datetime64[ns, UTC]").astype("int64") // 10**9).to_numpy(np.int64)
