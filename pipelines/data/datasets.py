"""Loaders: MovieLens 100k / 1M / latest, generic CSV or Parquet, and the Parquet layout.

Every loader returns a validated `core.schema.Dataset` with int64 ids. Files are parsed with
pandas; when pandas or a check refuses something, the file is scanned again line by line so
that the `core.errors.DataError` names the file, the 1-based line and what to do about it.
No pandas, pyarrow or codec exception escapes on bad input.

`load_dataset` picks the loader from what a path holds:

==========================================  ==================================
what the path holds                         loader
==========================================  ==================================
``interactions.parquet`` (+ videos, users)  `read_dataset` (`write_dataset`'s layout)
``u.data`` (+ ``u.item``, ``u.user``)       `load_movielens_100k`
``ratings.dat`` (+ movies, users)           `load_movielens_1m`
``ratings.csv`` + ``movies.csv``            `load_movielens_latest`
a ``.csv``/``.tsv``/``.parquet`` file       `load_interactions_file`
==========================================  ==================================
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import inspect
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError
from core.io import atomic_write_bytes
from core.schema import VIDEO_COLUMNS, Dataset

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Genre names of ml-100k in flag order, used when ``u.genre`` is absent.
ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
#: Genre values that mean "no genre" (ml-100k flag ``unknown``, ml-latest's placeholder).
NO_GENRE = frozenset({"unknown", "(no genres listed)"})

#: File names of the Parquet layout written by `write_dataset`.
INTERACTIONS_PARQUET = "interactions.parquet"
VIDEOS_PARQUET = "videos.parquet"
USERS_PARQUET = "users.parquet"
_LAYOUT_METADATA_KEY = b"vidrec.dataset"
_WRITE_ID_KEY = b"vidrec.write_id"

_ENCODING_HINT = "pass the file's encoding with encoding=... (CLI: --encoding), e.g. 'latin-1'"
_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)\s*$")


# --------------------------------------------------------------------------------------------
# Reading delimited text with line-accurate errors
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TextFormat:
    """How a delimited text file is laid out.

    Attributes:
        sep: Field separator (one character, or ``"::"`` for MovieLens 1M).
        names: Field names of a headerless file; ``None`` when the first line is a header.
        quoted: Whether fields may be quoted CSV-style (otherwise quotes are plain characters).
    """

    sep: str
    names: tuple[str, ...] | None = None
    quoted: bool = False


def _check_encoding(encoding: str) -> str:
    """Returns the codec's canonical name or raises `DataError` for an unknown one."""
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise DataError(
            f"unknown encoding {encoding!r}: Python has no codec of that name",
            hint="use a Python codec name such as 'utf-8', 'latin-1' or 'cp1252' (CLI: --encoding)",
        ) from None


def _check_file(path: Path, what: str, hint: str | None = None) -> None:
    if not path.exists():
        raise DataError(
            f"file not found ({what})",
            source=str(path),
            hint=hint or "check the path",
        )
    if not path.is_file():
        raise DataError(f"is not a file ({what})", source=str(path), hint=hint or "check the path")


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _raise_decode_error(path: Path, encoding: str) -> None:
    """Finds the first line of ``path`` not decodable as ``encoding`` and raises on it.

    Returns normally only when the whole file decodes (the caller then reports its own error).
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    newlines = 0
    with _open_binary(path) as handle:
        for raw in handle:
            try:
                newlines += decoder.decode(raw).count("\n")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"cannot decode byte(s) {raw[err.start : err.end]!r} as {encoding}",
                    source=str(path),
                    line=newlines + 1,
                    hint=_ENCODING_HINT,
                ) from None
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(
                f"the file ends in the middle of a {encoding} character",
                source=str(path),
                line=newlines + 1,
                hint=_ENCODING_HINT,
            ) from None


def _records(path: Path, fmt: _TextFormat, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(first line number, fields)`` of every non-blank record, header included."""
    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")
        if fmt.quoted:
            reader = csv.reader(text, delimiter=fmt.sep)
            previous_end = 0
            for fields in reader:
                start = previous_end + 1
                previous_end = reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                yield start, fields
        else:
            for number, line in enumerate(text, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                yield number, line.split(fmt.sep)


def _data_records(path: Path, fmt: _TextFormat, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """Like `_records` without the header line."""
    records = _records(path, fmt, encoding)
    if fmt.names is None:
        next(records, None)
    return records


def _parse_int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        try:
            as_float = float(value)
        except ValueError:
            return None
        return int(as_float) if as_float.is_integer() else None


def _parse_float(value: str) -> float | None:
    try:
        return float(value.strip())
    except ValueError:
        return None


def _scan_for_bad_line(
    path: Path,
    fmt: _TextFormat,
    encoding: str,
    int_columns: Sequence[str],
    float_columns: Sequence[str],
    required: Sequence[str],
) -> None:
    """Re-reads ``path`` in Python and raises `DataError` on the first malformed line.

    Checks the number of fields, that ``int_columns`` hold integers, ``float_columns``
    numbers (or nothing) and ``required`` columns something. Returns when every line is fine.
    """
    records = _records(path, fmt, encoding)
    if fmt.names is None:
        header = next(records, None)
        if header is None:
            return
        names = [name.strip() for name in header[1]]
    else:
        names = list(fmt.names)
    position = {name: i for i, name in enumerate(names)}
    checks: list[tuple[int, str, str]] = []
    for column in required:
        if column in position:
            checks.append((position[column], column, "required"))
    for column in int_columns:
        if column in position:
            checks.append((position[column], column, "int"))
    for column in float_columns:
        if column in position:
            checks.append((position[column], column, "float"))
    sep = "::" if fmt.sep == "::" else repr(fmt.sep)
    for number, fields in records:
        if len(fields) != len(names):
            raise DataError(
                f"expected {len(names)} fields separated by {sep}, found {len(fields)}",
                source=str(path),
                line=number,
                hint="fix or delete that line; is the separator or the file format right?",
            )
        for index, column, kind in checks:
            value = fields[index]
            if kind == "required" and not value.strip():
                raise DataError(
                    "value is missing",
                    source=str(path),
                    line=number,
                    column=column,
                    hint="fill it in or delete that line",
                )
            if kind == "int" and _parse_int(value) is None:
                raise DataError(
                    f"{value!r} is not an integer",
                    source=str(path),
                    line=number,
                    column=column,
                    hint="ids and timestamps must be whole numbers; fix or delete that line",
                )
            if kind == "float" and value.strip() and _parse_float(value) is None:
                raise DataError(
                    f"{value!r} is not a number",
                    source=str(path),
                    line=number,
                    column=column,
                    hint="fix or delete that line",
                )


def _line_numbers(path: Path, fmt: _TextFormat, encoding: str, rows: Sequence[int]) -> list[int]:
    """1-based line numbers of data rows ``rows`` (0-based, as pandas counts them)."""
    wanted = {int(r) for r in rows}
    found: dict[int, int] = {}
    if wanted:
        last = max(wanted)
        for row, (number, _) in enumerate(_data_records(path, fmt, encoding)):
            if row in wanted:
                found[row] = number
            if row >= last:
                break
    return [found.get(int(r), -1) for r in rows]


def _pandas_error_text(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _read_delimited(
    path: Path,
    fmt: _TextFormat,
    encoding: str,
    *,
    what: str,
    int_columns: Sequence[str] = (),
    float_columns: Sequence[str] = (),
    required: Sequence[str] = (),
    all_str: bool = False,
) -> pd.DataFrame:
    """Parses a delimited file with pandas, turning every failure into a `DataError`.

    Args:
        path: The file.
        fmt: Separator, field names of a headerless file, quoting.
        encoding: Codec of the file.
        what: What the file is, for the "not found" message.
        int_columns: Columns that must hold integers; returned as int64.
        float_columns: Columns that must hold numbers (or be empty); returned as float64.
        required: Columns that must not be empty.
        all_str: Read every other column as strings (metadata files).

    Returns:
        The table, with ``fmt.names`` as columns for a headerless file.

    Raises:
        DataError: Missing or empty file, undecodable bytes, malformed lines.
    """
    _check_file(path, what)
    encoding = _check_encoding(encoding)
    header = None if fmt.names is not None else 0
    options: dict[str, Any] = {
        "header": header,
        "encoding": encoding,
        "quoting": csv.QUOTE_MINIMAL if fmt.quoted else csv.QUOTE_NONE,
        "keep_default_na": False,
        "na_values": [""],
        "skip_blank_lines": True,
        "engine": "c",
    }
    if all_str:
        options["dtype"] = str

    def scan() -> None:
        _scan_for_bad_line(path, fmt, encoding, int_columns, float_columns, required)

    try:
        if len(fmt.sep) == 1:
            frame = pd.read_csv(path, sep=fmt.sep, **options)
        else:
            # pandas needs its slow python engine for multi-character separators; MovieLens
            # 1M never uses the unit separator, so swap it in and keep the C parser.
            with _open_binary(path) as handle:
                text = handle.read().decode(encoding)
            text = text.replace(fmt.sep, "\x1f")
            options.pop("encoding")
            frame = pd.read_csv(io.StringIO(text), sep="\x1f", **options)
    except UnicodeDecodeError:
        _raise_decode_error(path, encoding)
        raise DataError(
            f"cannot decode the file as {encoding}", source=str(path), hint=_ENCODING_HINT
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", source=str(path), hint=f"expected {what}") from None
    except (pd.errors.ParserError, ValueError, csv.Error) as err:
        scan()
        raise DataError(
            f"cannot parse the file: {_pandas_error_text(err)}",
            source=str(path),
            hint="check the separator, quoting and encoding",
        ) from None

    if fmt.names is not None:
        if frame.shape[1] != len(fmt.names):
            scan()
            raise DataError(
                f"expected {len(fmt.names)} fields per line, found {frame.shape[1]}",
                source=str(path),
                hint=f"is this really {what}?",
            )
        frame.columns = list(fmt.names)
    else:
        frame.columns = [str(c).strip() for c in frame.columns]

    problem = False
    for column in required:
        if column in frame.columns and frame[column].isna().any():
            problem = True
    for column in int_columns:
        if column in frame.columns and not _is_int_column(frame[column]):
            converted = pd.to_numeric(frame[column], errors="coerce")
            if converted.isna().any() or not np.array_equal(
                converted.to_numpy(np.float64), np.floor(converted.to_numpy(np.float64))
            ):
                problem = True
            else:
                frame[column] = converted.astype(np.int64)
    for column in float_columns:
        if column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
            converted = pd.to_numeric(frame[column], errors="coerce")
            if (converted.isna() & frame[column].notna()).any():
                problem = True
            else:
                frame[column] = converted.astype(np.float64)
    if problem:
        scan()
        raise DataError(
            "some values are missing or malformed",
            source=str(path),
            hint="check the separator, quoting and encoding",
        )
    for column in int_columns:
        if column in frame.columns:
            frame[column] = frame[column].astype(np.int64)
    return frame


def _is_int_column(series: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series)


# --------------------------------------------------------------------------------------------
# Row checks that need line numbers
# --------------------------------------------------------------------------------------------


def _where(path: Path, fmt: _TextFormat | None, encoding: str, row: int) -> dict[str, Any]:
    """``line=`` for a text file, or nothing (the message then names the row) for Parquet."""
    if fmt is None:
        return {}
    return {"line": _line_numbers(path, fmt, encoding, [row])[0]}


def _row_text(fmt: _TextFormat | None, row: int) -> str:
    return "" if fmt is not None else f" (row {row + 1})"


def _check_interaction_rows(
    frame: pd.DataFrame,
    path: Path,
    fmt: _TextFormat | None,
    encoding: str,
    drop_duplicates: bool,
) -> pd.DataFrame:
    """Refuses negative timestamps and duplicate events, naming the line; may drop duplicates."""
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
            f"negative timestamp {int(timestamps[row])}{_row_text(fmt, row)}",
            source=str(path),
            column="timestamp",
            hint="timestamps are seconds since the epoch",
            **_where(path, fmt, encoding, row),
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
            first_line, line = _line_numbers(path, fmt, encoding, [first, row])
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


def _check_unique_ids(
    frame: pd.DataFrame, column: str, path: Path, fmt: _TextFormat | None, encoding: str
) -> None:
    duplicated = frame[column].duplicated(keep="first").to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise DataError(
            f"{column} {int(frame[column].iloc[row])} is listed more than once"
            f"{_row_text(fmt, row)}",
            source=str(path),
            column=column,
            hint="each id must be listed once; remove the repeated line",
            **_where(path, fmt, encoding, row),
        )


def _build_dataset(
    name: str,
    interactions: pd.DataFrame,
    videos: pd.DataFrame,
    users: pd.DataFrame | None,
    source: Path,
) -> Dataset:
    """Constructs the `Dataset`, re-raising its validation errors with the data's path."""
    try:
        dataset = Dataset(name=name, interactions=interactions, videos=videos, users=users)
    except DataError as err:
        raise DataError(str(err), source=str(source)) from None
    logger.info("loaded %s", dataset.summary())
    return dataset


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------


def _split_title_year(titles: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Titles without their ``" (1995)"`` suffix, and that year as float32 (NaN if none)."""
    titles = titles.fillna("").astype(str)
    years = titles.str.extract(_YEAR_SUFFIX, expand=False)
    cleaned = titles.str.replace(_YEAR_SUFFIX, "", regex=True).str.strip()
    return (
        cleaned.to_numpy(dtype=object),
        pd.to_numeric(years, errors="coerce").to_numpy(dtype=np.float32),
    )


def _genres(value: object) -> tuple[str, ...]:
    if not isinstance(value, str):
        return ()
    return tuple(g for g in value.split("|") if g and g not in NO_GENRE)


def _ratings_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(np.int64),
            "video_id": frame["video_id"].to_numpy(np.int64),
            "timestamp": frame["timestamp"].to_numpy(np.int64),
            "rating": frame["rating"].to_numpy(np.float32),
            "event": np.full(len(frame), "rating", dtype=object),
        }
    )


def load_movielens_100k(
    path: PathLike, *, encoding: str = "latin-1", drop_duplicates: bool = False
) -> Dataset:
    """Loads MovieLens 100k from its directory (``u.data``, ``u.item``, ``u.genre``, ``u.user``).

    Videos get the genre names as categories (the ``unknown`` flag means none), the year from
    the title's ``(1995)`` suffix or else the release date, and the title without that suffix.
    Interactions are ratings (``event`` ``"rating"``, ``watch_seconds`` NaN).

    Args:
        path: The ``ml-100k`` directory.
        encoding: Codec of the text files (the originals are Latin-1).
        drop_duplicates: Keep the first of repeated (user, video, timestamp) events instead
            of refusing them.

    Returns:
        The dataset, named ``"ml-100k"``, with users (age, gender, occupation, zip) when
        ``u.user`` is present.

    Raises:
        DataError: A missing ``u.data`` or ``u.item``, or malformed content (file and line).
    """
    root = Path(path)
    ratings_path = root / "u.data"
    ratings_fmt = _TextFormat("\t", ("user_id", "video_id", "rating", "timestamp"))
    ratings = _read_delimited(
        ratings_path,
        ratings_fmt,
        encoding,
        what="MovieLens 100k ratings: user<TAB>item<TAB>rating<TAB>timestamp",
        int_columns=("user_id", "video_id", "timestamp"),
        float_columns=("rating",),
        required=("rating",),
    )
    ratings = _check_interaction_rows(ratings, ratings_path, ratings_fmt, encoding, drop_duplicates)

    genre_path = root / "u.genre"
    if genre_path.is_file():
        genre_table = _read_delimited(
            genre_path,
            _TextFormat("|", ("genre", "index")),
            encoding,
            what="MovieLens 100k genre names: name|index",
            int_columns=("index",),
            all_str=True,
        )
        genre_names = tuple(
            genre_table.sort_values("index")["genre"].fillna("").astype(str).tolist()
        )
    else:
        logger.warning("%s not found; using the standard 19 ml-100k genre names", genre_path)
        genre_names = ML100K_GENRES

    item_path = root / "u.item"
    flag_names = tuple(f"genre_{i}" for i in range(len(genre_names)))
    item_fmt = _TextFormat(
        "|", ("video_id", "title", "release_date", "video_release_date", "url", *flag_names)
    )
    items = _read_delimited(
        item_path,
        item_fmt,
        encoding,
        what="MovieLens 100k movies: id|title|release date|video release date|url|"
        f"{len(genre_names)} genre flags",
        int_columns=("video_id", *flag_names),
        all_str=True,
    )
    _check_unique_ids(items, "video_id", item_path, item_fmt, encoding)
    flags = items[list(flag_names)].to_numpy(dtype=np.int64) != 0
    named = np.array([g not in NO_GENRE for g in genre_names])
    flags &= named[None, :]
    names = np.array(genre_names, dtype=object)
    categories = [tuple(names[row]) for row in flags]
    titles, years = _split_title_year(items["title"])
    release_years = pd.to_numeric(
        items["release_date"].fillna("").astype(str).str.extract(r"(\d{4})\s*$", expand=False),
        errors="coerce",
    ).to_numpy(dtype=np.float32)
    years = np.where(np.isnan(years), release_years, years)
    videos = pd.DataFrame(
        {
            "video_id": items["video_id"].to_numpy(np.int64),
            "title": titles,
            "categories": categories,
            "year": years,
        }
    )

    users = None
    user_path = root / "u.user"
    if user_path.is_file():
        user_fmt = _TextFormat("|", ("user_id", "age", "gender", "occupation", "zip"))
        users = _read_delimited(
            user_path,
            user_fmt,
            encoding,
            what="MovieLens 100k users: id|age|gender|occupation|zip",
            int_columns=("user_id",),
            all_str=True,
        )
        _check_unique_ids(users, "user_id", user_path, user_fmt, encoding)
    else:
        logger.warning("%s not found; loading without user attributes", user_path)
    return _build_dataset("ml-100k", _ratings_frame(ratings), videos, users, root)


def load_movielens_1m(
    path: PathLike, *, encoding: str = "latin-1", drop_duplicates: bool = False
) -> Dataset:
    """Loads MovieLens 1M from its directory (``ratings.dat``, ``movies.dat``, ``users.dat``).

    All three files are ``::``-separated Latin-1 text; genres are ``A|B``.

    Args:
        path: The ``ml-1m`` directory.
        encoding: Codec of the files.
        drop_duplicates: Keep the first of repeated events instead of refusing them.

    Returns:
        The dataset, named ``"ml-1m"``, with users (gender, age, occupation, zip) when
        ``users.dat`` is present.

    Raises:
        DataError: A missing ``ratings.dat`` or ``movies.dat``, or malformed content.
    """
    root = Path(path)
    ratings_path = root / "ratings.dat"
    ratings_fmt = _TextFormat("::", ("user_id", "video_id", "rating", "timestamp"))
    ratings = _read_delimited(
        ratings_path,
        ratings_fmt,
        encoding,
        what="MovieLens 1M ratings: UserID::MovieID::Rating::Timestamp",
        int_columns=("user_id", "video_id", "timestamp"),
        float_columns=("rating",),
        required=("rating",),
    )
    ratings = _check_interaction_rows(ratings, ratings_path, ratings_fmt, encoding, drop_duplicates)

    movies_path = root / "movies.dat"
    movies_fmt = _TextFormat("::", ("video_id", "title", "genres"))
    movies = _read_delimited(
        movies_path,
        movies_fmt,
        encoding,
        what="MovieLens 1M movies: MovieID::Title::Genres",
        int_columns=("video_id",),
        all_str=True,
    )
    _check_unique_ids(movies, "video_id", movies_path, movies_fmt, encoding)
    titles, years = _split_title_year(movies["title"])
    videos = pd.DataFrame(
        {
            "video_id": movies["video_id"].to_numpy(np.int64),
            "title": titles,
            "categories": [_genres(g) for g in movies["genres"]],
            "year": years,
        }
    )

    users = None
    users_path = root / "users.dat"
    if users_path.is_file():
        users_fmt = _TextFormat("::", ("user_id", "gender", "age", "occupation", "zip"))
        users = _read_delimited(
            users_path,
            users_fmt,
            encoding,
            what="MovieLens 1M users: UserID::Gender::Age::Occupation::Zip-code",
            int_columns=("user_id",),
            all_str=True,
        )
        _check_unique_ids(users, "user_id", users_path, users_fmt, encoding)
    else:
        logger.warning("%s not found; loading without user attributes", users_path)
    return _build_dataset("ml-1m", _ratings_frame(ratings), videos, users, root)


def load_movielens_latest(
    path: PathLike, *, encoding: str = "utf-8", drop_duplicates: bool = False
) -> Dataset:
    """Loads MovieLens "latest" (or latest-small, 20M, 25M, 32M) from its directory.

    Reads ``ratings.csv`` (userId,movieId,rating,timestamp), ``movies.csv``
    (movieId,title,genres; ``(no genres listed)`` means none) and, when present, ``tags.csv``
    (userId,movieId,tag,timestamp), whose tags become each video's ``tags``: stripped,
    lower-cased, deduplicated, in order of first use.

    Args:
        path: The directory.
        encoding: Codec of the files (UTF-8 in the originals).
        drop_duplicates: Keep the first of repeated events instead of refusing them.

    Returns:
        The dataset, named after the directory (e.g. ``"ml-latest-small"``); no users table.

    Raises:
        DataError: A missing ``ratings.csv`` or ``movies.csv``, or malformed content.
    """
    root = Path(path)
    ratings_path = root / "ratings.csv"
    ratings_fmt = _TextFormat(",", None, quoted=True)
    raw = _read_delimited(
        ratings_path,
        ratings_fmt,
        encoding,
        what="MovieLens ratings.csv: userId,movieId,rating,timestamp",
        int_columns=("userId", "movieId", "timestamp"),
        float_columns=("rating",),
        required=("rating",),
    )
    _require_source_columns(raw, ("userId", "movieId", "rating", "timestamp"), ratings_path)
    ratings = raw.rename(columns={"userId": "user_id", "movieId": "video_id"})
    ratings = _check_interaction_rows(ratings, ratings_path, ratings_fmt, encoding, drop_duplicates)

    movies_path = root / "movies.csv"
    movies_fmt = _TextFormat(",", None, quoted=True)
    movies = _read_delimited(
        movies_path,
        movies_fmt,
        encoding,
        what="MovieLens movies.csv: movieId,title,genres",
        int_columns=("movieId",),
        all_str=True,
    )
    _require_source_columns(movies, ("movieId", "title", "genres"), movies_path)
    movies = movies.rename(columns={"movieId": "video_id"})
    _check_unique_ids(movies, "video_id", movies_path, movies_fmt, encoding)
    titles, years = _split_title_year(movies["title"])
    video_ids = movies["video_id"].to_numpy(np.int64)
    tags: list[tuple[str, ...]] = [()] * len(movies)
    tags_path = root / "tags.csv"
    if tags_path.is_file():
        tag_table = _read_delimited(
            tags_path,
            _TextFormat(",", None, quoted=True),
            encoding,
            what="MovieLens tags.csv: userId,movieId,tag,timestamp",
            int_columns=("movieId",),
            all_str=True,
        )
        _require_source_columns(tag_table, ("movieId", "tag"), tags_path)
        tags = _tags_per_video(tag_table["movieId"], tag_table["tag"], video_ids, tags_path)
    videos = pd.DataFrame(
        {
            "video_id": video_ids,
            "title": titles,
            "categories": [_genres(g) for g in movies["genres"]],
            "tags": tags,
            "year": years,
        }
    )
    return _build_dataset(root.name or "ml-latest", _ratings_frame(ratings), videos, None, root)


def _tags_per_video(
    movie_ids: pd.Series, tag_values: pd.Series, video_ids: np.ndarray, source: Path
) -> list[tuple[str, ...]]:
    table = pd.DataFrame(
        {
            "video_id": movie_ids.to_numpy(np.int64),
            "tag": tag_values.fillna("").astype(str).str.strip().str.lower(),
        }
    )
    table = table.loc[table["tag"] != ""].drop_duplicates(["video_id", "tag"], keep="first")
    unknown = ~table["video_id"].isin(video_ids)
    if unknown.any():
        logger.warning(
            "%s: ignoring %d tag(s) of movies not in movies.csv", source, int(unknown.sum())
        )
        table = table.loc[~unknown]
    grouped = table.groupby("video_id", sort=False)["tag"].agg(tuple)
    lookup = grouped.to_dict()
    return [lookup.get(int(v), ()) for v in video_ids]


def _require_source_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing} in the header; found {list(frame.columns)}",
            source=str(path),
            line=1,
            hint=f"the header must name {list(columns)}",
        )


# --------------------------------------------------------------------------------------------
# Generic CSV / Parquet
# --------------------------------------------------------------------------------------------


def _table_kind(path: Path) -> str | None:
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
) -> tuple[pd.DataFrame, _TextFormat | None, list[str]]:
    """Reads a CSV/TSV/Parquet file and renames its columns by ``mapping``.

    ``int_columns``, ``float_columns`` and ``required`` are schema names (after mapping);
    ``all_str`` reads the other columns of a text file as strings.

    Returns:
        The renamed table, the text format (``None`` for Parquet, where there are no lines)
        and the file's own column names.
    """
    _check_file(path, what)
    kind = _table_kind(path)
    if kind is None:
        raise DataError(
            "unsupported file type",
            source=str(path),
            hint="use .csv, .tsv (optionally .gz) or .parquet",
        )
    inverse = {target: source for source, target in mapping.items()}
    fmt: _TextFormat | None
    if kind == "parquet":
        fmt = None
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types on a bad file
            raise DataError(
                f"cannot read as Parquet: {_pandas_error_text(err)}",
                source=str(path),
                hint="is it really a Parquet file?",
            ) from None
        frame.columns = [str(c) for c in frame.columns]
    else:
        fmt = _TextFormat("," if kind == "csv" else "\t", None, quoted=True)
        frame = _read_delimited(
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
                    f"{frame[column].iloc[row]!r} is not a number{_row_text(fmt, row)}",
                    source=str(path),
                    column=column,
                    hint="fix or delete that row",
                    **_where(path, fmt, encoding, row),
                )
            frame[column] = converted
    return frame, fmt, source_columns


def _int_values(
    series: pd.Series, path: Path, fmt: _TextFormat | None, encoding: str, column: str
) -> np.ndarray:
    """``series`` as int64, or a `DataError` naming the first bad line (or row)."""
    if _is_int_column(series) and not series.isna().any():
        return series.to_numpy(np.int64)
    converted = pd.to_numeric(series, errors="coerce")
    as_float = converted.to_numpy(np.float64, na_value=np.nan)
    bad = np.isnan(as_float) | (as_float != np.floor(as_float))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = series.iloc[row]
        text = "is missing" if pd.isna(value) else f"{value!r} is not an integer"
        raise DataError(
            f"{text}{_row_text(fmt, row)}",
            source=str(path),
            column=column,
            hint="ids and timestamps must be whole numbers; fix or delete that row",
            **_where(path, fmt, encoding, row),
        )
    return as_float.astype(np.int64)


def _timestamps(
    series: pd.Series, path: Path, fmt: _TextFormat | None, encoding: str
) -> np.ndarray:
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
            f"{_row_text(fmt, row)}",
            source=str(path),
            column="timestamp",
            hint="fix or delete that row",
            **_where(path, fmt, encoding, row),
        )
    return (parsed.astype("datetime64[ns, UTC]").astype("int64") // 10**9).to_numpy(np.int64)


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
    interactions = _check_interaction_rows(interactions, source, fmt, encoding, drop_duplicates)

    if videos_path is not None:
        videos_file = Path(videos_path)
        videos, videos_fmt, video_columns = _read_table_file(
            videos_file,
            mapping,
            encoding,
            what="videos with a video_id column",
            int_columns=("video_id",),
            float_columns=("year", "duration", "upload_time"),
            all_str=True,
        )
        if "video_id" not in videos.columns:
            raise DataError(
                f"missing column 'video_id'; found {list(videos.columns)}",
                source=str(videos_file),
                hint="rename it or pass column_mapping={'<your column>': 'video_id'}",
            )
        _check_unique_ids(videos, "video_id", videos_file, videos_fmt, encoding)
        columns_seen += video_columns
        keep = [c for c in videos.columns if c in VIDEO_COLUMNS]
        videos = videos[keep]
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
        users_file = Path(users_path)
        users, users_fmt, user_columns = _read_table_file(
            users_file,
            mapping,
            encoding,
            what="users with a user_id column",
            int_columns=("user_id",),
            all_str=True,
        )
        if "user_id" not in users.columns:
            raise DataError(
                f"missing column 'user_id'; found {list(users.columns)}",
                source=str(users_file),
                hint="rename it or pass column_mapping={'<your column>': 'user_id'}",
            )
        _check_unique_ids(users, "user_id", users_file, users_fmt, encoding)
        columns_seen += user_columns
    unused = [key for key in mapping if key not in columns_seen]
    if unused:
        raise DataError(
            f"column_mapping names column(s) {unused} that none of the files has",
            source=str(source),
            hint="fix the column mapping",
        )
    name = source.name.split(".")[0] or "interactions"
    return _build_dataset(name, interactions, videos, users, source)


# --------------------------------------------------------------------------------------------
# Parquet layout
# --------------------------------------------------------------------------------------------


def _parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_dataset(dataset: Dataset, directory: PathLike) -> None:
    """Stores ``dataset`` as Parquet files in ``directory`` for `read_dataset`/`load_dataset`.

    Writes ``videos.parquet``, ``users.parquet`` (or removes a stale one when the dataset has
    no users) and, last, ``interactions.parquet``, each atomically (temporary file in the same
    directory, then ``os.replace``). Every file carries the same write id, and
    ``interactions.parquet`` the dataset's name and row counts, so a reader notices a mix of
    two writes (e.g. after a crash in the middle of one).

    Args:
        dataset: The dataset.
        directory: Target directory, created if needed.
    """
    import pyarrow as pa

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    write_id = uuid.uuid4().hex
    stamp = {_WRITE_ID_KEY: write_id.encode()}
    videos = dataset.videos
    list_of_str = pa.list_(pa.string())
    video_table = pa.table(
        {
            "video_id": pa.array(videos["video_id"].to_numpy(np.int64)),
            "title": pa.array(videos["title"].tolist(), type=pa.string()),
            "categories": pa.array(videos["categories"].tolist(), type=list_of_str),
            "tags": pa.array(videos["tags"].tolist(), type=list_of_str),
            "year": pa.array(videos["year"].to_numpy(np.float32)),
            "duration": pa.array(videos["duration"].to_numpy(np.float32)),
            "creator": pa.array(videos["creator"].tolist(), type=pa.string()),
            "upload_time": pa.array(videos["upload_time"].to_numpy(np.float64)),
        }
    ).replace_schema_metadata(stamp)
    atomic_write_bytes(root / VIDEOS_PARQUET, _parquet_bytes(video_table))
    users_file = root / USERS_PARQUET
    if dataset.users is not None:
        users = dataset.users
        columns: dict[str, Any] = {"user_id": pa.array(users["user_id"].to_numpy(np.int64))}
        for column in users.columns:
            if column != "user_id":
                columns[str(column)] = pa.array(users[column].tolist(), type=pa.string())
        user_table = pa.table(columns).replace_schema_metadata(stamp)
        atomic_write_bytes(users_file, _parquet_bytes(user_table))
    else:
        users_file.unlink(missing_ok=True)
    events = dataset.interactions
    metadata = {
        "name": dataset.name,
        "interactions": len(events),
        "videos": len(videos),
        "users": None if dataset.users is None else len(dataset.users),
    }
    event_table = pa.table(
        {
            "user_id": pa.array(events["user_id"].to_numpy(np.int64)),
            "video_id": pa.array(events["video_id"].to_numpy(np.int64)),
            "timestamp": pa.array(events["timestamp"].to_numpy(np.int64)),
            "rating": pa.array(events["rating"].to_numpy(np.float32)),
            "watch_seconds": pa.array(events["watch_seconds"].to_numpy(np.float32)),
            "event": pa.DictionaryArray.from_pandas(
                pd.Categorical(events["event"].to_numpy(dtype=object))
            ),
        }
    ).replace_schema_metadata({**stamp, _LAYOUT_METADATA_KEY: json.dumps(metadata).encode()})
    atomic_write_bytes(root / INTERACTIONS_PARQUET, _parquet_bytes(event_table))
    logger.info("wrote %s to %s", metadata, root)


def _read_parquet_table(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types on a bad file
        raise DataError(
            f"cannot read as Parquet: {_pandas_error_text(err)}",
            source=str(path),
            hint="rewrite the dataset (vidrec generate --out DIR) or restore the file",
        ) from None


def read_dataset(directory: PathLike) -> Dataset:
    """Reads a dataset stored by `write_dataset`.

    Raises:
        DataError: A missing or unreadable file, or files from different writes.
    """
    root = Path(directory)
    interactions_path = root / INTERACTIONS_PARQUET
    videos_path = root / VIDEOS_PARQUET
    users_path = root / USERS_PARQUET
    hint = f"expected {INTERACTIONS_PARQUET} and {VIDEOS_PARQUET} written by write_dataset"
    _check_file(interactions_path, "interactions", hint)
    _check_file(videos_path, "videos", hint)
    event_table = _read_parquet_table(interactions_path)
    raw_metadata = (event_table.schema.metadata or {}).get(_LAYOUT_METADATA_KEY)
    metadata: dict[str, Any] = json.loads(raw_metadata) if raw_metadata else {}
    video_table = _read_parquet_table(videos_path)
    user_table = _read_parquet_table(users_path) if users_path.is_file() else None
    write_ids = {
        path.name: (table.schema.metadata or {}).get(_WRITE_ID_KEY)
        for path, table in (
            (interactions_path, event_table),
            (videos_path, video_table),
            (users_path, user_table),
        )
        if table is not None
    }
    if len(set(write_ids.values())) > 1:
        raise DataError(
            f"{sorted(write_ids)} come from different writes: the directory mixes two writes",
            source=str(root),
            hint="write the dataset again",
        )
    interactions = event_table.to_pandas()
    if "event" in interactions.columns:
        interactions["event"] = interactions["event"].astype(object)
    videos = video_table.to_pandas()
    users = user_table.to_pandas() if user_table is not None else None
    expected = {"interactions": len(interactions), "videos": len(videos)}
    expected["users"] = None if users is None else len(users)
    for key, count in expected.items():
        if key in metadata and metadata[key] != count:
            raise DataError(
                f"{INTERACTIONS_PARQUET} was written with {metadata[key]} {key} but the "
                f"files hold {count}: the directory mixes two writes",
                source=str(root),
                hint="write the dataset again",
            )
    return _build_dataset(str(metadata.get("name") or root.name), interactions, videos, users, root)


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------

_LOOKED_FOR = (
    f"{INTERACTIONS_PARQUET} (vidrec's Parquet layout), u.data (MovieLens 100k), "
    "ratings.dat (MovieLens 1M), ratings.csv with movies.csv (MovieLens latest), "
    "or a single .csv/.tsv/.parquet interactions file"
)


def detect_format(path: PathLike) -> str:
    """Names the loader for ``path``: ``"parquet-layout"``, ``"ml-100k"``, ``"ml-1m"``,
    ``"ml-latest"`` or ``"file"``.

    Raises:
        DataError: The path does not exist or holds none of the known layouts.
    """
    root = Path(path)
    if not root.exists():
        raise DataError("path not found", source=str(root), hint=f"expected {_LOOKED_FOR}")
    if root.is_file():
        if _table_kind(root) is not None:
            return "file"
        raise DataError(
            "unsupported file type",
            source=str(root),
            hint="give a .csv, .tsv (optionally .gz) or .parquet file, or a directory with "
            f"{_LOOKED_FOR}",
        )
    if (root / INTERACTIONS_PARQUET).is_file():
        return "parquet-layout"
    if (root / "u.data").is_file():
        return "ml-100k"
    if (root / "ratings.dat").is_file():
        return "ml-1m"
    if (root / "ratings.csv").is_file() and (root / "movies.csv").is_file():
        return "ml-latest"
    present = sorted(p.name for p in root.iterdir())[:20]
    raise DataError(
        f"cannot tell the data format; looked for {_LOOKED_FOR}; found {present}",
        source=str(root),
        hint="point at the data set's directory or file, or use load_interactions_file "
        "with a column mapping",
    )


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "parquet-layout": read_dataset,
    "ml-100k": load_movielens_100k,
    "ml-1m": load_movielens_1m,
    "ml-latest": load_movielens_latest,
    "file": load_interactions_file,
}


def load_dataset(path: PathLike, **kwargs: Any) -> Dataset:
    """Loads a dataset, choosing the loader from what ``path`` holds (see the module doc).

    Args:
        path: A directory (Parquet layout or MovieLens) or an interactions file.
        **kwargs: Options of the chosen loader (``encoding``, ``drop_duplicates``,
            ``column_mapping``, ``videos_path``, ``users_path``); ``None`` values are ignored.

    Raises:
        DataError: Unknown layout (the message lists what was looked for), an option the
            chosen loader does not take, or any loader error.
    """
    kind = detect_format(path)
    loader = _LOADERS[kind]
    options = {k: v for k, v in kwargs.items() if v is not None}
    accepted = set(inspect.signature(loader).parameters) - {"path", "directory"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DataError(
            f"option(s) {unknown} do not apply to this data set format ({kind})",
            source=str(path),
            hint=f"the {kind} loader takes {sorted(accepted) or 'no options'}",
        )
    logger.info("loading %s as %s", path, kind)
    return loader(path, **options)
