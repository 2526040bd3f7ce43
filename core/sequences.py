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
    """

    inputs: np.ndarray
    targets: np.ndarray
    owned: np.ndarray
    user_rows: np.ndarray

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
) -> Windows:
    """Cuts every user's sequence into causal training windows.

    Args:
        interactions: Validated training interactions (sorted by user, then time).
        features: Supplies the video and user vocabularies.
        length: Window length (the models' history length).
        stride: Step between windows; defaults to ``max(1, length // 2)``.

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
        owned[i, cols] = np.arange(first, e + 1) > e - stride
        user_rows[i] = user_row_of[user_index[i]]
    return Windows(inputs, targets, owned, user_rows)


@dataclasses.dataclass(frozen=True)
class NextWatchExamples:
    """(history strictly before t, event at t) pairs as row indices into an interactions table.

    Attributes:
        history_events: ``[n, length] int64`` indices of the watches before the target, oldest
            first, left-padded with -1.
        target_events: ``[n] int64`` index of the target event.
    """

    history_events: np.ndarray
    target_events: np.ndarray

    def __len__(self) -> int:
        return len(self.target_events)

    def take(self, index: np.ndarray) -> NextWatchExamples:
        """The examples at ``index``."""
        return NextWatchExamples(self.history_events[index], self.target_events[index])

    def gather(self, values: np.ndarray, fill: float | int = 0) -> np.ndarray:
        """Per-event ``values`` laid out like ``history_events`` (``fill`` on padding)."""
        out = values[np.maximum(self.history_events, 0)]
        mask = self.history_events < 0
        if out.ndim > 2:
            mask = mask.reshape(mask.shape + (1,) * (out.ndim - 2))
        return np.where(mask, np.asarray(fill, dtype=out.dtype), out)


def next_watch_examples(
    interactions: pd.DataFrame,
    length: int,
    max_examples: int | None = None,
    min_history: int = 1,
    per_user: int | None = None,
) -> NextWatchExamples:
    """Every event with at least ``min_history`` earlier events of its user, as an example.

    Args:
        interactions: Validated interactions (sorted by user, then time).
        length: History columns (the most recent ``length`` earlier events).
        max_examples: Keep only the most recent this many examples (by timestamp).
        min_history: Earlier events an example needs.
        per_user: Keep only each user's latest this many examples (before ``max_examples``).

    Returns:
        The examples, ordered by user then time.

    Raises:
        DataError: No event has enough history.
    """
    users = interactions["user_id"].to_numpy(np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    user_start = np.repeat(starts, counts)
    events = np.arange(len(users), dtype=np.int64)
    keep = events - user_start >= min_history
    if per_user is not None:
        user_stop = np.repeat(starts + counts, counts)
        keep &= user_stop - events <= per_user
    if not keep.any():
        raise DataError(f"no event has {min_history} earlier event(s) of its user to learn from")
    targets = events[keep]
    if max_examples is not None and len(targets) > max_examples:
        stamps = interactions["timestamp"].to_numpy(np.int64)[targets]
        recent = np.sort(np.argsort(stamps, kind="stable")[-max_examples:])
        targets = targets[recent]
    columns = targets[:, None] - length + np.arange(length)[None, :]
    history = np.where(columns >= user_start[targets][:, None], columns, -1)
    return NextWatchExamples(history.astype(np.int64), targets)
