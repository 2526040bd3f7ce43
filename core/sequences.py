"""Training windows over watch sequences: (history strictly before t, video at t) pairs.

A user's time-ordered watches ``s[0..n-1]`` are cut into windows of ``length`` positions, the
most recent window first, each window starting ``stride`` positions earlier than the previous
one. Column ``j`` of a window holds input ``s[t-1]`` and target ``s[t]``; a causal model reading
the inputs at columns ``<= j`` therefore sees exactly the watches before ``t`` that fall in the
window. Overlapping windows would count a target twice, so each target is *owned* by one window
only (the most recent window in which it has at least ``length - stride`` inputs before it, or
the user's first window), and the loss is taken over owned positions.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd

from core.errors import DataError
from core.features import FeatureSpace


@dataclasses.dataclass(frozen=True)
class Windows:
    """Training windows, all arrays row-aligned.

    Attributes:
        inputs: ``[w, length] int64`` video rows, left-padded with 0.
        targets: ``[w, length] int64`` video rows; ``targets[:, j]`` follows ``inputs[:, j]``.
        owned: ``[w, length] bool``; positions whose target this window trains on.
        user_rows: ``[w] int64`` user vocabulary rows.
        target_timestamps: ``[w, length] int64`` seconds of each target event (0 on padding).
        engagement: ``[w, length] float32`` engagement label of each target (NaN if unknown).
    """

    inputs: np.ndarray
    targets: np.ndarray
    owned: np.ndarray
    user_rows: np.ndarray
    target_timestamps: np.ndarray
    engagement: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def num_examples(self) -> int:
        """Owned (history, target) pairs."""
        return int(self.owned.sum())


def training_windows(
    interactions: pd.DataFrame,
    features: FeatureSpace,
    length: int,
    stride: int | None = None,
    engagement: np.ndarray | None = None,
) -> Windows:
    """Cuts every user's sequence into causal training windows.

    Args:
        interactions: Validated training interactions (sorted by user, then time).
        features: Supplies the video and user vocabularies.
        length: Window length (the models' history length).
        stride: Step between windows; defaults to ``max(1, length // 2)``.
        engagement: Optional ``[len(interactions)] float32`` label per event.

    Returns:
        The windows; users with a single event contribute none.

    Raises:
        DataError: No user has two or more events, or ``stride`` is out of range.
    """
    stride = stride or max(1, length // 2)
    if not 1 <= stride <= length:
        raise DataError(f"stride must be in [1, {length}], got {stride}")
    users = interactions["user_id"].to_numpy(np.int64)
    rows = features.video_vocab.lookup(interactions["video_id"].to_numpy(np.int64))
    stamps = interactions["timestamp"].to_numpy(np.int64)
    labels = (
        np.full(len(rows), np.nan, dtype=np.float32)
        if engagement is None
        else np.asarray(engagement, dtype=np.float32)
    )
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1, len(users)]
    spans: list[tuple[int, int, int]] = []  # (user start, window end position e, user length)
    for begin, end in itertools.pairwise(starts):
        n = end - begin
        e = n - 1
        while e >= 1:
            spans.append((begin, e, n))
            if e - stride < 1:
                break
            e -= stride
    if not spans:
        raise DataError("no user has two or more training events; nothing to learn from")
    w = len(spans)
    inputs = np.zeros((w, length), dtype=np.int64)
    targets = np.zeros((w, length), dtype=np.int64)
    owned = np.zeros((w, length), dtype=bool)
    target_stamps = np.zeros((w, length), dtype=np.int64)
    target_labels = np.full((w, length), np.nan, dtype=np.float32)
    user_rows = np.zeros(w, dtype=np.int64)
    user_row_of = features.user_vocab.lookup(users[starts[:-1]])
    user_index = np.searchsorted(starts[:-1], [s[0] for s in spans], side="right") - 1
    for i, (begin, e, _n) in enumerate(spans):
        first = max(1, e - length + 1)
        count = e - first + 1
        cols = slice(length - count, length)
        positions = begin + np.arange(first, e + 1)
        targets[i, cols] = rows[positions]
        inputs[i, cols] = rows[positions - 1]
        target_stamps[i, cols] = stamps[positions]
        target_labels[i, cols] = labels[positions]
        owned[i, cols] = np.arange(first, e + 1) > e - stride
        user_rows[i] = user_row_of[user_index[i]]
    return Windows(inputs, targets, owned, user_rows, target_stamps, target_labels)
