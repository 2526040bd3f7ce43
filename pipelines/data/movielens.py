"""MovieLens loaders: 100k, 1M and "latest" (latest-small, 20M, 25M, 32M share its layout).

The three releases store the same three things (ratings, movies, optionally users) in three
layouts. Each loader names its files and fields; reading, checking and shaping a ratings,
movies or users file is done once here for all three. Interactions are ratings (``event``
``"rating"``, ``watch_seconds`` NaN); a movie's title loses its ``(1995)`` suffix, which
becomes its ``year``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError
from core.schema import Dataset
from pipelines.data.checks import (
    PathLike,
    build_dataset,
    check_interaction_rows,
    check_unique_ids,
)
from pipelines.data.readers import TextFormat, read_delimited

logger = logging.getLogger(__name__)

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

_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)\s*$")
#: Schema names of a ratings file's four fields, in the order every release stores them.
_RATINGS_FIELDS = ("user_id", "video_id", "rating", "timestamp")


@dataclasses.dataclass(frozen=True)
class _File:
    """One file of a release.

    Attributes:
        name: File name inside the release's directory.
        fmt: Its layout; a headerless file names its fields in ``fmt.names`` with schema
            names (``user_id``, ``video_id``, ...).
        what: What it holds, for messages ("file not found (...)", "expected ...").
        header: For a file with a header, the source names it must have, in the order of
            the headerless names (so the ids come first).
    """

    name: str
    fmt: TextFormat
    what: str
    header: tuple[str, ...] | None = None


_CSV = TextFormat(",", None, quoted=True)
_ML100K_RATINGS = _File(
    "u.data",
    TextFormat("\t", _RATINGS_FIELDS),
    "MovieLens 100k ratings: user<TAB>item<TAB>rating<TAB>timestamp",
)
_ML100K_GENRES = _File(
    "u.genre", TextFormat("|", ("genre", "index")), "MovieLens 100k genre names: name|index"
)
_ML100K_USERS = _File(
    "u.user",
    TextFormat("|", ("user_id", "age", "gender", "occupation", "zip")),
    "MovieLens 100k users: id|age|gender|occupation|zip",
)
_ML1M_RATINGS = _File(
    "ratings.dat",
    TextFormat("::", _RATINGS_FIELDS),
    "MovieLens 1M ratings: UserID::MovieID::Rating::Timestamp",
)
_ML1M_MOVIES = _File(
    "movies.dat",
    TextFormat("::", ("video_id", "title", "genres")),
    "MovieLens 1M movies: MovieID::Title::Genres",
)
_ML1M_USERS = _File(
    "users.dat",
    TextFormat("::", ("user_id", "gender", "age", "occupation", "zip")),
    "MovieLens 1M users: UserID::Gender::Age::Occupation::Zip-code",
)
_LATEST_RATINGS = _File(
    "ratings.csv",
    _CSV,
    "MovieLens ratings.csv: userId,movieId,rating,timestamp",
    header=("userId", "movieId", "rating", "timestamp"),
)
_LATEST_MOVIES = _File(
    "movies.csv",
    _CSV,
    "MovieLens movies.csv: movieId,title,genres",
    header=("movieId", "title", "genres"),
)
_LATEST_TAGS = _File(
    "tags.csv", _CSV, "MovieLens tags.csv: userId,movieId,tag,timestamp", header=("movieId", "tag")
)


def _ml100k_items(flags: Sequence[str]) -> _File:
    """``u.item``, with one genre flag field (named ``flags``) per genre of ``u.genre``."""
    return _File(
        "u.item",
        TextFormat("|", ("video_id", "title", "release_date", "video_release_date", "url", *flags)),
        "MovieLens 100k movies: id|title|release date|video release date|url|"
        f"{len(flags)} genre flags",
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
    ratings = _read_ratings(root, _ML100K_RATINGS, encoding, drop_duplicates)
    genre_names = _ml100k_genre_names(root, encoding)
    flag_names = [f"genre_{i}" for i in range(len(genre_names))]
    items = _read_movies(root, _ml100k_items(flag_names), encoding, flag_columns=flag_names)
    flags = items[flag_names].to_numpy(dtype=np.int64) != 0
    named = np.array([g not in NO_GENRE for g in genre_names])
    flags &= named[None, :]
    names = np.array(genre_names, dtype=object)
    # The release date ("01-Jan-1995") stands in for a title without a year.
    release_years = pd.to_numeric(
        items["release_date"].fillna("").astype(str).str.extract(r"(\d{4})\s*$", expand=False),
        errors="coerce",
    ).to_numpy(dtype=np.float32)
    videos = _video_frame(items, [tuple(names[row]) for row in flags], fallback_years=release_years)
    users = _read_users(root, _ML100K_USERS, encoding)
    return build_dataset("ml-100k", ratings, videos, users, root)


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
    ratings = _read_ratings(root, _ML1M_RATINGS, encoding, drop_duplicates)
    movies = _read_movies(root, _ML1M_MOVIES, encoding)
    videos = _video_frame(movies, [_genres(g) for g in movies["genres"]])
    users = _read_users(root, _ML1M_USERS, encoding)
    return build_dataset("ml-1m", ratings, videos, users, root)


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
    ratings = _read_ratings(root, _LATEST_RATINGS, encoding, drop_duplicates)
    movies = _read_movies(root, _LATEST_MOVIES, encoding)
    video_ids = movies["video_id"].to_numpy(np.int64)
    tags: list[tuple[str, ...]] = [()] * len(movies)
    tags_path = root / _LATEST_TAGS.name
    if tags_path.is_file():
        tag_table = _read(root, _LATEST_TAGS, encoding, int_columns=("movieId",), all_str=True)
        tags = _tags_per_video(tag_table["movieId"], tag_table["tag"], video_ids, tags_path)
    videos = _video_frame(movies, [_genres(g) for g in movies["genres"]], tags=tags)
    return build_dataset(root.name or "ml-latest", ratings, videos, None, root)


# --------------------------------------------------------------------------------------------
# One reader per kind of file, shared by the three releases
# --------------------------------------------------------------------------------------------


def _read(
    root: Path,
    file: _File,
    encoding: str,
    *,
    int_columns: Sequence[str],
    float_columns: Sequence[str] = (),
    required: Sequence[str] = (),
    all_str: bool = False,
) -> pd.DataFrame:
    """Parses ``file`` in ``root`` and checks that a header names the fields it must.

    Args:
        root: The release's directory.
        file: The file and its layout.
        encoding: Codec of the file.
        int_columns: Columns (source names) that must hold integers; int64.
        float_columns: Columns that must hold numbers or nothing; float64.
        required: Columns that must not be empty.
        all_str: Read the other columns as strings.

    Returns:
        The table, with the source's column names.
    """
    path = root / file.name
    frame = read_delimited(
        path,
        file.fmt,
        encoding,
        what=file.what,
        int_columns=int_columns,
        float_columns=float_columns,
        required=required,
        all_str=all_str,
    )
    if file.header is not None:
        _require_header(frame, file.header, path)
    return frame


def _read_ratings(root: Path, file: _File, encoding: str, drop_duplicates: bool) -> pd.DataFrame:
    """Reads and checks a ratings file.

    Args:
        root: The release's directory.
        file: The ratings file: user, movie, rating, timestamp.
        encoding: Codec of the file.
        drop_duplicates: Keep the first of repeated events instead of refusing them.

    Returns:
        Interactions: ``user_id``, ``video_id``, ``timestamp`` int64, ``rating`` float32,
        ``event`` object (``"rating"``).
    """
    user, video, rating, timestamp = file.header or _RATINGS_FIELDS
    frame = _read(
        root,
        file,
        encoding,
        int_columns=(user, video, timestamp),
        float_columns=(rating,),
        required=(rating,),
    )
    frame = frame.rename(columns={user: "user_id", video: "video_id"})
    frame = check_interaction_rows(frame, root / file.name, file.fmt, encoding, drop_duplicates)
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(np.int64),
            "video_id": frame["video_id"].to_numpy(np.int64),
            "timestamp": frame["timestamp"].to_numpy(np.int64),
            "rating": frame["rating"].to_numpy(np.float32),
            "event": np.full(len(frame), "rating", dtype=object),
        }
    )


def _read_movies(
    root: Path, file: _File, encoding: str, *, flag_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """Reads a movies file and refuses a movie listed twice.

    Args:
        root: The release's directory.
        file: The movies file; its first field is the movie id.
        encoding: Codec of the file.
        flag_columns: Other columns that must hold integers (ml-100k's genre flags).

    Returns:
        The table with an int64 ``video_id`` column; the other columns as read (strings).
    """
    id_column = (file.header or file.fmt.names or ("video_id",))[0]
    frame = _read(root, file, encoding, int_columns=(id_column, *flag_columns), all_str=True)
    frame = frame.rename(columns={id_column: "video_id"})
    check_unique_ids(frame, "video_id", root / file.name, file.fmt, encoding)
    return frame


def _read_users(root: Path, file: _File, encoding: str) -> pd.DataFrame | None:
    """Reads a headerless users file, or returns ``None`` (with a warning) when it is absent.

    Returns:
        ``user_id`` int64 and the other fields as strings, or ``None``.
    """
    path = root / file.name
    if not path.is_file():
        logger.warning("%s not found; loading without user attributes", path)
        return None
    users = _read(root, file, encoding, int_columns=("user_id",), all_str=True)
    check_unique_ids(users, "user_id", path, file.fmt, encoding)
    return users


def _ml100k_genre_names(root: Path, encoding: str) -> tuple[str, ...]:
    """Genre names in flag order from ``u.genre`` (name|index), or the standard 19."""
    if not (root / _ML100K_GENRES.name).is_file():
        logger.warning(
            "%s not found; using the standard 19 ml-100k genre names", root / _ML100K_GENRES.name
        )
        return ML100K_GENRES
    table = _read(root, _ML100K_GENRES, encoding, int_columns=("index",), all_str=True)
    return tuple(table.sort_values("index")["genre"].fillna("").astype(str).tolist())


def _require_header(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    """Raises `DataError` on line 1 unless the header names every one of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing} in the header; found {list(frame.columns)}",
            source=str(path),
            line=1,
            hint=f"the header must name {list(columns)}",
        )


# --------------------------------------------------------------------------------------------
# Movie metadata
# --------------------------------------------------------------------------------------------


def _video_frame(
    movies: pd.DataFrame,
    categories: list[tuple[str, ...]],
    *,
    fallback_years: np.ndarray | None = None,
    tags: list[tuple[str, ...]] | None = None,
) -> pd.DataFrame:
    """The catalogue in the schema's columns.

    Args:
        movies: ``video_id`` int64 and ``title`` (with its year suffix), one row per movie.
        categories: Genre names per movie.
        fallback_years: ``[n] float32`` years for titles without one (NaN if unknown).
        tags: Tags per movie, if the release has them.

    Returns:
        ``video_id`` int64, ``title``, ``categories``, ``tags`` (when given), ``year`` float32.
    """
    titles, years = _split_title_year(movies["title"])
    if fallback_years is not None:
        years = np.where(np.isnan(years), fallback_years, years)
    columns: dict[str, object] = {
        "video_id": movies["video_id"].to_numpy(np.int64),
        "title": titles,
        "categories": categories,
    }
    if tags is not None:
        columns["tags"] = tags
    columns["year"] = years
    return pd.DataFrame(columns)


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
    """``"A|B"`` as ``("A", "B")``, leaving out the placeholders of `NO_GENRE`."""
    if not isinstance(value, str):
        return ()
    return tuple(g for g in value.split("|") if g and g not in NO_GENRE)


def _tags_per_video(
    movie_ids: pd.Series, tag_values: pd.Series, video_ids: np.ndarray, source: Path
) -> list[tuple[str, ...]]:
    """Each video's tags: stripped, lower-cased, deduplicated, in order of first use.

    Args:
        movie_ids: Movie id of each tag row (integers).
        tag_values: The tag of each row.
        video_ids: ``[n] int64`` catalogue ids; tags of other movies are dropped with a warning.
        source: The tags file, for the warning.

    Returns:
        ``n`` tuples of tags, in ``video_ids`` order.
    """
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
