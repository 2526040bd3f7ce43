"""vidrec's own on-disk layout: a dataset as three Parquet files in a directory.

``videos.parquet``, ``users.parquet`` (when the dataset has users) and ``interactions.parquet``
are written atomically, interactions last. All three carry one write id in their schema
metadata, and ``interactions.parquet`` the dataset's name and row counts, so that
`read_dataset` refuses a directory that mixes two writes (after a crash in the middle of one).
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError
from core.io import atomic_write_bytes
from core.schema import Dataset
from pipelines.data.checks import PathLike, build_dataset
from pipelines.data.readers import check_file, read_parquet

logger = logging.getLogger(__name__)

#: File names of the layout.
INTERACTIONS_PARQUET = "interactions.parquet"
VIDEOS_PARQUET = "videos.parquet"
USERS_PARQUET = "users.parquet"
_LAYOUT_METADATA_KEY = b"vidrec.dataset"
_WRITE_ID_KEY = b"vidrec.write_id"


def _parquet_bytes(table: Any) -> bytes:
    """``table`` (a ``pyarrow.Table``) as zstd-compressed Parquet bytes."""
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
    """Reads one file of the layout as a ``pyarrow.Table``, or raises `DataError`."""
    import pyarrow.parquet as pq

    hint = "rewrite the dataset (vidrec generate --out DIR) or restore the file"
    return read_parquet(path, pq.read_table, hint=hint)


def read_dataset(directory: PathLike) -> Dataset:
    """Reads a dataset stored by `write_dataset`.

    Args:
        directory: The directory `write_dataset` wrote.

    Returns:
        The dataset under the name it was written with (else the directory's name); ids and
        timestamps int64, ``rating`` and ``watch_seconds`` float32, ``event`` object.

    Raises:
        DataError: A missing or unreadable file, or files from different writes.
    """
    root = Path(directory)
    interactions_path = root / INTERACTIONS_PARQUET
    videos_path = root / VIDEOS_PARQUET
    users_path = root / USERS_PARQUET
    hint = f"expected {INTERACTIONS_PARQUET} and {VIDEOS_PARQUET} written by write_dataset"
    check_file(interactions_path, "interactions", hint)
    check_file(videos_path, "videos", hint)
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
    return build_dataset(str(metadata.get("name") or root.name), interactions, videos, users, root)
