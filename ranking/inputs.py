"""Ranker inputs as numpy arrays: each video's fields, the fill for unknown engagement, and
candidate lists with the history they are ranked against.

The ranker's inputs are defined in `ranking/` only: here in numpy, in `ranking.encoders` as the
scoring function's signature, and in `ranking.request` padded and packed for one request.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.features import VideoFeatureArrays

# The engagement a history slot reads when it is unknown (no watch time and no rating) or
# padding: training lists, evaluation lists and requests all fill it in the same way.
UNKNOWN_ENGAGEMENT = 0.5


def video_fields(
    rows: np.ndarray, videos: VideoFeatureArrays, embeddings: np.ndarray
) -> dict[str, np.ndarray]:
    """The ranker's per-video inputs (`ranking.model.VIDEO_FIELDS`) of ``rows [...]``.

    Args:
        rows: ``[...] int64`` video rows (0 for padding).
        videos: Features by video row (the feature space's catalogue, or a live catalogue's
            grown arrays).
        embeddings: ``[rows, d] float32`` retrieval embeddings by video row.

    Returns:
        ``rows [...]``, ``embeddings [..., d]``, ``category_rows [..., C]``,
        ``creator_rows [...]``, ``numeric [..., F]``.
    """
    # np.take: a gather along one axis, a few times cheaper than fancy indexing at one
    # request's few hundred rows (the request path calls this once per request).
    return {
        "rows": rows,
        "embeddings": np.take(embeddings, rows, axis=0),
        "category_rows": np.take(videos.category_rows, rows, axis=0),
        "creator_rows": np.take(videos.creator_rows, rows, axis=0),
        "numeric": np.take(videos.numeric, rows, axis=0),
    }


@dataclasses.dataclass(frozen=True)
class CandidateLists:
    """``n`` lists of ``k`` candidates, each with the history it is ranked for.

    Attributes:
        history_rows: ``[n, L] int64`` video rows watched before, oldest first, left-padded 0.
        history_engagement: ``[n, L] float32`` engagement of each watch in ``[0, 1]``.
        history_age_hours: ``[n, L] float32`` hours between each watch and the ranking moment.
        candidate_rows: ``[n, k] int64`` video rows to rank.
        candidate_valid: ``[n, k] bool``; False for padding and duplicates.
        evidence: ``[n, k, E] float32`` what is known about each candidate's origin (the
            retrieval score and rank, item-to-item source scores, ...; the caller defines the
            ``E`` columns and must give the same ones when scoring).
        user_attributes: ``[n, A] int64`` user attribute rows.
        target: ``[n] int64`` column of the watched video in ``candidate_rows`` (-1 when
            retrieval missed it); training lists always have it in column 0.
        engagement: ``[n] float32`` engagement of the watched video (NaN when unknown).
    """

    history_rows: np.ndarray
    history_engagement: np.ndarray
    history_age_hours: np.ndarray
    candidate_rows: np.ndarray
    candidate_valid: np.ndarray
    evidence: np.ndarray
    user_attributes: np.ndarray
    target: np.ndarray
    engagement: np.ndarray

    def __len__(self) -> int:
        return len(self.candidate_rows)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def take(self, index: np.ndarray) -> CandidateLists:
        """Lists ``index`` only."""
        return CandidateLists(**{k: v[index] for k, v in self.as_dict().items()})
