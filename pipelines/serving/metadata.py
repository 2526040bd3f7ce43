"""Titles and categories of the catalogue, for people reading recommendations.

The models see hashed title tokens and category rows, not the text, so a bundle keeps the text
aside in ``serving/videos.parquet`` (written by the jobs with `write_video_metadata`). The server
reads it for the inspector (``GET /videos``, ``GET /videos/search``) and adds uploads as they
are applied. A bundle from before this file serves on with empty titles.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.io import atomic_write_bytes

logger = logging.getLogger(__name__)

METADATA_FILE = "videos.parquet"


def write_video_metadata(videos: pd.DataFrame, path: str | Path) -> None:
    """Writes ``video_id``, ``title`` and ``categories`` of a videos table, atomically.

    Args:
        videos: A validated videos table (`core.schema`).
        path: Destination, normally ``<bundle>/serving/videos.parquet``.
    """
    table = pd.DataFrame(
        {
            "video_id": videos["video_id"].to_numpy(np.int64),
            "title": videos["title"].fillna("").astype(str).to_numpy(),
            "categories": [list(c) for c in videos["categories"]],
        }
    )
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def merge_video_metadata(source: str | Path, videos: pd.DataFrame, target: str | Path) -> None:
    """Writes ``source``'s titles updated by ``videos`` (a grown catalogue) to ``target``.

    Args:
        source: The source bundle's file (absent for a bundle from before it).
        videos: A validated videos table; its rows win.
        target: The new bundle's file.
    """
    fresh = videos[["video_id", "title", "categories"]]
    if Path(source).exists():
        old = pd.read_parquet(source)
        old = old[~old["video_id"].isin(fresh["video_id"])]
        fresh = pd.concat([old, fresh], ignore_index=True)
    write_video_metadata(fresh, target)


def read_video_metadata(path: str | Path) -> pd.DataFrame:
    """What `write_video_metadata` wrote (an empty table when the file is absent)."""
    if not Path(path).exists():
        return pd.DataFrame({"video_id": [], "title": [], "categories": []})
    return pd.read_parquet(path)


class VideoMetadata:
    """Title and categories by video id; thread-safe (uploads write while requests read).

    A bundle's titles are read on first use, not at load: only the inspector reads them, and
    at a million videos the table costs each worker seconds of its load and hundreds of MB.

    Args:
        titles: ``{video_id: (title, categories)}``.
        path: A `write_video_metadata` file read on first use (before ``titles``, which win).
    """

    def __init__(
        self,
        titles: dict[int, tuple[str, tuple[str, ...]]] | None = None,
        path: str | Path | None = None,
    ) -> None:
        self._titles = dict(titles or {})
        self._path = None if path is None else Path(path)
        self._folded: list[tuple[int, str]] | None = None  # (id, case-folded title), by id
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> VideoMetadata:
        """The titles `write_video_metadata` wrote, read on first use; empty when the bundle
        predates the file."""
        path = Path(path)
        if not path.exists():
            logger.warning("%s is missing (an older bundle): the inspector shows no titles", path)
            return cls()
        return cls(path=path)

    def _read(self) -> dict[int, tuple[str, tuple[str, ...]]]:
        """The titles, reading the file on the first call (hold ``_lock``)."""
        if self._path is not None:
            path, self._path = self._path, None
            try:
                table = pd.read_parquet(path)
                stored = {
                    int(video_id): (str(title), tuple(str(c) for c in categories))
                    for video_id, title, categories in zip(
                        table["video_id"], table["title"], table["categories"], strict=True
                    )
                }
            except (OSError, ValueError, KeyError, TypeError) as error:
                # Only people read titles: better none than an inspector that fails.
                logger.error("cannot read the video titles in %s: %s", path, error)
                stored = {}
            self._titles = {**stored, **self._titles}
        return self._titles

    def update(self, videos: pd.DataFrame) -> None:
        """Adds or replaces the rows of a validated videos table (uploads)."""
        rows = {
            int(video_id): (str(title or ""), tuple(str(c) for c in categories))
            for video_id, title, categories in zip(
                videos["video_id"], videos["title"], videos["categories"], strict=True
            )
        }
        with self._lock:
            self._read().update(rows)
            self._folded = None

    def describe(self, video_id: int) -> dict[str, Any]:
        """``{"video_id", "title", "categories", "known"}``; unknown ids have empty text."""
        with self._lock:
            found = self._read().get(int(video_id))
        title, categories = found if found is not None else ("", ())
        return {
            "video_id": int(video_id),
            "title": title,
            "categories": list(categories),
            "known": found is not None,
        }

    def search(self, query: str, limit: int, hidden: Iterable[int] = ()) -> list[dict[str, Any]]:
        """Videos whose title contains every word of ``query`` (case-insensitive), by id.

        Args:
            query: Words to look for.
            limit: At most this many results.
            hidden: Ids never returned (taken down).
        """
        words = query.casefold().split()
        blocked = set(hidden)
        with self._lock:
            if self._folded is None:  # once per bundle and upload batch, not per query
                self._folded = sorted((v, t.casefold()) for v, (t, _) in self._read().items())
            folded = self._folded
        found = []
        for video_id, title in folded:
            if video_id not in blocked and all(word in title for word in words):
                found.append(self.describe(video_id))
                if len(found) == limit:
                    break
        return found
