"""What a server needs beside the models, frozen into the bundle's ``serving/`` directory.

- Every user's watches (the history store's base; live events are added on top from the event
  store): the most recent feed the models, all of them are filtered out of recommendations.
- Recent popularity, overall and per category, for users with neither an id nor a history.
- Video durations, to turn live ``watch_seconds`` into the watch fraction the ranker reads.
- Which store events the bundle already contains (``events_until_id``), so a server adds only
  the later ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from core.errors import BundleError
from core.features import FeatureSpace, engagement_labels
from core.io import atomic_save_npy, atomic_write_json
from core.schema import Dataset

ARRAYS: tuple[str, ...] = (
    "history_user_ids",
    "history_indptr",
    "history_video_ids",
    "history_timestamps",
    "history_engagement",
    "popular_video_ids",
    "popular_counts",
    "category_indptr",
    "category_video_ids",
    "durations",
)
CATEGORY_POPULAR = 200
OVERALL_POPULAR = 2_000


@dataclasses.dataclass(frozen=True)
class ServingState:
    """Arrays for serving (see module doc); histories are CSR by ``history_user_ids``.

    Attributes:
        history_user_ids: ``[u] int64`` users with a history, sorted.
        history_indptr: ``[u + 1] int64``.
        history_video_ids: ``[h] int64`` every watch per user, oldest first.
        history_timestamps: ``[h] int64``.
        history_engagement: ``[h] float32`` (NaN unknown).
        popular_video_ids: ``[p] int64`` most watched videos of the recent window, best first.
        popular_counts: ``[p] int64`` their watch counts.
        category_names: Category of each CSR row below.
        category_indptr: ``[c + 1] int64``.
        category_video_ids: ``[..] int64`` per category, most watched first.
        durations: ``[n] float32`` seconds per video in vocabulary order (NaN unknown).
        events_until_id: Largest event-store id already in the bundle's data (0: none).
        data_until: Last timestamp of the bundle's data.
    """

    history_user_ids: np.ndarray
    history_indptr: np.ndarray
    history_video_ids: np.ndarray
    history_timestamps: np.ndarray
    history_engagement: np.ndarray
    popular_video_ids: np.ndarray
    popular_counts: np.ndarray
    category_names: list[str]
    category_indptr: np.ndarray
    category_video_ids: np.ndarray
    durations: np.ndarray
    events_until_id: int
    data_until: int

    def history(self, user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(video_ids, timestamps, engagement)`` of a user, oldest first (empty if unknown)."""
        i = int(np.searchsorted(self.history_user_ids, user_id))
        if i >= len(self.history_user_ids) or self.history_user_ids[i] != user_id:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float32)
        span = slice(self.history_indptr[i], self.history_indptr[i + 1])
        return (
            self.history_video_ids[span],
            self.history_timestamps[span],
            self.history_engagement[span],
        )

    def popular(self, category: str | None = None) -> np.ndarray:
        """Most popular video ids of the recent window, optionally of one category."""
        if category is None:
            return self.popular_video_ids
        if category not in self.category_names:
            return np.zeros(0, dtype=np.int64)
        i = self.category_names.index(category)
        return self.category_video_ids[self.category_indptr[i] : self.category_indptr[i + 1]]

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes the arrays (``.npy``) and scalars (``state.json``), each atomically."""
        directory = Path(directory)
        for name in ARRAYS:
            atomic_save_npy(directory / f"{name}.npy", getattr(self, name))
        atomic_write_json(
            directory / "state.json",
            {
                "category_names": self.category_names,
                "events_until_id": self.events_until_id,
                "data_until": self.data_until,
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ServingState:
        """Reads what `save` wrote.

        Raises:
            BundleError: A file is missing or unreadable.
        """
        directory = Path(directory)
        try:
            scalars = json.loads((directory / "state.json").read_text("utf-8"))
            arrays = {n: np.load(directory / f"{n}.npy", allow_pickle=False) for n in ARRAYS}
        except (OSError, ValueError) as error:
            raise BundleError(f"cannot read the serving state in {directory}: {error}") from error
        return cls(**arrays, **scalars)


def build_serving_state(
    dataset: Dataset,
    features: FeatureSpace,
    popularity_days: float,
    events_until_id: int = 0,
) -> ServingState:
    """Computes the serving state from all the data a bundle was built from.

    Args:
        dataset: Every interaction known at build time (not just a training split: held-out
            watches are real watches) and the catalogue.
        features: The bundle's feature space (its video order is the durations' order).
        popularity_days: Window of recent popularity, ending at the last event.
        events_until_id: Largest event-store id included in ``dataset``.
    """
    interactions = dataset.interactions
    users = interactions["user_id"].to_numpy(np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    indptr = np.r_[starts, len(users)].astype(np.int64)
    engagement = engagement_labels(interactions, dataset.videos)

    stamps = interactions["timestamp"].to_numpy(np.int64)
    last = int(stamps.max())
    recent = interactions.loc[stamps >= last - popularity_days * 86_400, "video_id"]
    counts = recent.value_counts()
    top = counts.iloc[:OVERALL_POPULAR]
    categories = dataset.videos.set_index("video_id")["categories"]
    per_category: dict[str, list[int]] = {}
    for video_id in counts.index:
        for category in categories.get(video_id, ()):
            bucket = per_category.setdefault(category, [])
            if len(bucket) < CATEGORY_POPULAR:
                bucket.append(int(video_id))
    names = sorted(per_category)
    category_indptr = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(per_category[n]) for n in names], out=category_indptr[1:])
    durations = (
        dataset.videos.set_index("video_id")["duration"]
        .reindex(features.video_vocab.ids)
        .to_numpy(np.float32)
    )
    return ServingState(
        history_user_ids=users[starts],
        history_indptr=indptr,
        history_video_ids=interactions["video_id"].to_numpy(np.int64),
        history_timestamps=stamps,
        history_engagement=engagement,
        popular_video_ids=top.index.to_numpy(np.int64),
        popular_counts=top.to_numpy(np.int64),
        category_names=names,
        category_indptr=category_indptr,
        category_video_ids=np.array([v for n in names for v in per_category[n]], dtype=np.int64),
        durations=durations,
        events_until_id=int(events_until_id),
        data_until=last,
    )
