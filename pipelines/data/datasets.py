"""Loading a dataset from a path: `load_dataset` picks the loader from what the path holds.

Every loader returns a validated `core.schema.Dataset` with int64 ids, and every error on bad
input is a one-line `core.errors.DataError` naming the file, line or column and what to do.

==========================================  ===========================================
what the path holds                         loader
==========================================  ===========================================
``interactions.parquet`` (+ videos, users)  `read_dataset` (`write_dataset`'s layout)
``u.data`` (+ ``u.item``, ``u.user``)       `load_movielens_100k`
``ratings.dat`` (+ movies, users)           `load_movielens_1m`
``ratings.csv`` + ``movies.csv``            `load_movielens_latest`
a ``.csv``/``.tsv``/``.parquet`` file       `load_interactions_file`
==========================================  ===========================================

One module does each job; the loaders are re-exported here, where callers import them:

- `pipelines.data.readers`: reading a text or Parquet file so that errors name its line or row;
- `pipelines.data.checks`: row checks every loader shares, and building the `Dataset`;
- `pipelines.data.movielens`: MovieLens 100k, 1M and latest;
- `pipelines.data.tabular`: a generic CSV/TSV/Parquet file with a column mapping;
- `pipelines.data.layout`: vidrec's Parquet layout (`write_dataset`, `read_dataset`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.schema import Dataset
from pipelines.data.checks import PathLike
from pipelines.data.layout import INTERACTIONS_PARQUET, read_dataset, write_dataset
from pipelines.data.movielens import (
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_latest,
)
from pipelines.data.tabular import load_interactions_file, table_kind

__all__ = [
    "detect_format",
    "load_dataset",
    "load_interactions_file",
    "load_movielens_1m",
    "load_movielens_100k",
    "load_movielens_latest",
    "read_dataset",
    "write_dataset",
]

logger = logging.getLogger(__name__)

_LOOKED_FOR = (
    f"{INTERACTIONS_PARQUET} (vidrec's Parquet layout), u.data (MovieLens 100k), "
    "ratings.dat (MovieLens 1M), ratings.csv with movies.csv (MovieLens latest), "
    "or a single .csv/.tsv/.parquet interactions file"
)


def detect_format(path: PathLike) -> str:
    """Names the loader for ``path`` by the files it holds (see the module doc).

    Args:
        path: A directory or a file.

    Returns:
        ``"parquet-layout"``, ``"ml-100k"``, ``"ml-1m"``, ``"ml-latest"`` or ``"file"``.

    Raises:
        DataError: The path does not exist or holds none of the known layouts.
    """
    root = Path(path)
    if not root.exists():
        raise DataError("path not found", source=str(root), hint=f"expected {_LOOKED_FOR}")
    if root.is_file():
        if table_kind(root) is not None:
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

    Returns:
        The loader's validated dataset.

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
