"""The serving catalogue: video rows, features and embeddings that grow in place.

A bundle's feature space is frozen; a server still has to take uploads (a new video must be
searchable at once) and metadata updates. `LiveCatalogue` keeps the bundle's rows and appends
new ones into arrays with spare capacity (doubling when full), so an upload costs one video's
work, not a copy of a million rows. Readers see a consistent prefix: rows are written before
the count that makes them visible is raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pandas as pd

from core.errors import DataError
from core.features import FeatureSpace, VideoFeatureArrays
from core.vocab import FIRST_ID_ROW, OOV_ROW

Embedder = Callable[[VideoFeatureArrays], np.ndarray]


class LiveCatalogue:
    """Rows of every servable video: the bundle's, then uploads.

    Args:
        features: The bundle's feature space.
        embeddings: ``[features.video_vocab.num_rows, d] float32`` embeddings by row (rows 0
            and 1 zero).
        durations: ``[features.video_vocab.num_ids] float32`` seconds per known video.
    """

    def __init__(
        self, features: FeatureSpace, embeddings: np.ndarray, durations: np.ndarray
    ) -> None:
        self.features = features
        self._count = features.video_vocab.num_rows
        # The bundle's arrays as they are (mapped from its files, shared by every worker)
        # until the first upload, which copies them with room to grow.
        self._arrays = dict(features.catalogue.as_dict())
        self._embeddings = embeddings.astype(np.float32, copy=False)
        self._durations = np.concatenate([np.full(FIRST_ID_ROW, np.nan, np.float32), durations])
        self._private = False
        self._uploaded: dict[int, int] = {}
        self._uploaded_ids: list[int] = []
        self._lock = threading.Lock()

    # -- reads (lock-free: rows below the count never change meaning) ---------------------

    @property
    def num_rows(self) -> int:
        """Rows in use, including padding and OOV."""
        return self._count

    @property
    def embeddings(self) -> np.ndarray:
        """``[num_rows, d] float32`` embeddings by row."""
        return self._embeddings[: self._count]

    @property
    def videos(self) -> VideoFeatureArrays:
        """Features by row (views, no copy)."""
        count = self._count
        return VideoFeatureArrays(**{k: v[:count] for k, v in self._arrays.items()})

    def durations(self, rows: np.ndarray) -> np.ndarray:
        """Seconds per row, NaN unknown."""
        return self._durations[rows]

    def rows(self, video_ids: np.ndarray) -> np.ndarray:
        """Rows of raw ids (OOV for unknown), same shape, int64."""
        video_ids = np.asarray(video_ids, dtype=np.int64)
        rows = self.features.video_vocab.lookup(video_ids)
        if self._uploaded:
            for i in np.flatnonzero(rows == OOV_ROW):
                rows.flat[i] = self._uploaded.get(int(video_ids.flat[i]), OOV_ROW)
        return rows

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Raw ids of rows (-1 for padding and OOV)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = self.features.video_vocab.id_of(np.where(rows < self._base_rows, rows, 0))
        uploaded = rows >= self._base_rows
        if uploaded.any():
            extra = np.asarray(self._uploaded_ids, dtype=np.int64)
            out[uploaded] = extra[rows[uploaded] - self._base_rows]
        return out

    @property
    def _base_rows(self) -> int:
        return self.features.video_vocab.num_rows

    def primary_categories(self, rows: np.ndarray) -> np.ndarray:
        """First category row of each video (0 when it has none)."""
        return self._arrays["category_rows"][rows, 0]

    # -- writes ---------------------------------------------------------------------------

    def embed(self, videos: pd.DataFrame, embed: Embedder) -> tuple[VideoFeatureArrays, np.ndarray]:
        """Features and embeddings of videos, checked before anything is written.

        Args:
            videos: Validated videos table.
            embed: The video tower over features -> ``[n, d]`` unit-norm embeddings.

        Returns:
            ``(features, embeddings [n, d] float32)``.

        Raises:
            DataError: A video whose embedding is not finite (it could never be searched).
        """
        arrays = self.features.video_features(videos)
        embeddings = np.asarray(embed(arrays), dtype=np.float32)
        broken = ~np.isfinite(embeddings).all(axis=1)
        if broken.any():
            ids = videos["video_id"].to_numpy(np.int64)[broken]
            raise DataError(
                f"video(s) {ids[:5].tolist()} embed to NaN or inf; check their year, duration "
                "and upload_time"
            )
        return arrays, embeddings

    def upsert(self, videos: pd.DataFrame, embed: Embedder) -> tuple[np.ndarray, np.ndarray]:
        """Adds new videos and refreshes known ones from their metadata.

        Args:
            videos: Validated videos table.
            embed: The video tower over features -> ``[n, d]`` unit-norm embeddings.

        Returns:
            ``(rows [n] int64, embeddings [n, d] float32)``.

        Raises:
            DataError: See `embed`; nothing is written then.
        """
        arrays, embeddings = self.embed(videos, embed)
        ids = videos["video_id"].to_numpy(np.int64)
        durations = videos["duration"].to_numpy(np.float32)
        with self._lock:
            rows = self.rows(ids)
            new = rows == OOV_ROW
            first = self._count
            rows[new] = first + np.arange(int(new.sum()))
            needed = first + int(new.sum())
            if not self._private or needed > len(self._embeddings):
                self._grow(needed)
            for name, values in arrays.as_dict().items():
                target = self._arrays[name]
                target[rows] = values
            # The models see uploaded ids as OOV; their content and embedding carry them.
            self._arrays["video_rows"][rows] = np.where(rows < self._base_rows, rows, OOV_ROW)
            self._embeddings[rows] = embeddings
            self._durations[rows] = durations
            for video_id, row in zip(ids[new], rows[new], strict=True):
                self._uploaded[int(video_id)] = int(row)
                self._uploaded_ids.append(int(video_id))
            self._count = needed
        return rows, embeddings

    def _grow(self, needed: int) -> None:
        """Private, writable copies with room for ``needed`` rows and more."""
        if self._private:
            capacity = max(needed, 2 * len(self._embeddings))
        else:
            capacity = max(needed, self._count + max(1_024, self._count // 8))
            self._private = True
        self._arrays = {k: _with_capacity(v, capacity) for k, v in self._arrays.items()}
        self._embeddings = _with_capacity(self._embeddings, capacity)
        self._durations = _with_capacity(self._durations, capacity, fill=np.nan)


def _with_capacity(values: np.ndarray, capacity: int, fill: float = 0) -> np.ndarray:
    out = np.full((capacity, *values.shape[1:]), fill, dtype=values.dtype)
    out[: len(values)] = values
    return out
