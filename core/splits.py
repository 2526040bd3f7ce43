"""Evaluation splits (docs/design.md §8): chronological leave-one-out and a global time cut.

Both produce `EvalCases`: per evaluated user, the time-ordered history the model may read and
the videos that count as relevant. Histories hold only events strictly before every target, so
no case can see its own future.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from core.errors import DataError


@dataclasses.dataclass(frozen=True)
class EvalCases:
    """Histories and relevant videos of the evaluated users, in CSR layout.

    Attributes:
        user_ids: ``[u] int64`` evaluated users.
        history_indptr: ``[u + 1] int64``; history of case ``i`` is
            ``history_video_ids[history_indptr[i]:history_indptr[i + 1]]``, oldest first.
        history_video_ids: ``[h] int64`` watched videos, time-ordered per case.
        history_timestamps: ``[h] int64`` seconds, aligned with ``history_video_ids``.
        target_indptr: ``[u + 1] int64``; targets of case ``i`` likewise.
        target_video_ids: ``[t] int64`` relevant videos (never in the case's history).
        target_timestamps: ``[t] int64`` seconds of the target events.
        history_engagement: ``[h] float32`` engagement of each watch (NaN unknown), or None.
    """

    user_ids: np.ndarray
    history_indptr: np.ndarray
    history_video_ids: np.ndarray
    history_timestamps: np.ndarray
    target_indptr: np.ndarray
    target_video_ids: np.ndarray
    target_timestamps: np.ndarray
    history_engagement: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    def history(self, case: int) -> np.ndarray:
        """Watched videos of one case, oldest first, ``[h] int64``."""
        return self.history_video_ids[self.history_indptr[case] : self.history_indptr[case + 1]]

    def targets(self, case: int) -> np.ndarray:
        """Relevant videos of one case, ``[t] int64``."""
        return self.target_video_ids[self.target_indptr[case] : self.target_indptr[case + 1]]

    def subset(self, cases: np.ndarray) -> EvalCases:
        """The given cases only (e.g. a sample for fast validation)."""
        cases = np.asarray(cases, dtype=np.int64)
        history_columns = [self.history_video_ids, self.history_timestamps]
        if self.history_engagement is not None:
            history_columns.append(self.history_engagement)
        h_ptr, *history = _take_csr(self.history_indptr, cases, *history_columns)
        t_ptr, t_ids, t_ts = _take_csr(
            self.target_indptr, cases, self.target_video_ids, self.target_timestamps
        )
        engagement = history[2] if len(history) == 3 else None
        return EvalCases(
            self.user_ids[cases], h_ptr, history[0], history[1], t_ptr, t_ids, t_ts, engagement
        )


def _take_csr(indptr: np.ndarray, rows: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    lengths = indptr[rows + 1] - indptr[rows]
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    positions = (
        np.concatenate([np.arange(indptr[r], indptr[r + 1], dtype=np.int64) for r in rows])
        if len(rows)
        else np.zeros(0, dtype=np.int64)
    )
    return (new_indptr, *(column[positions] for column in columns))


def _csr(groups: np.ndarray, num_groups: int, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """CSR arrays from values already sorted by ``groups`` (``[n]`` ints in ``[0, num_groups)``)."""
    counts = np.bincount(groups, minlength=num_groups)
    indptr = np.zeros(num_groups + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return (indptr, *(np.asarray(c) for c in columns))


@dataclasses.dataclass(frozen=True)
class LeaveOneOutSplit:
    """Per user: last event is test, the one before validation, the rest training.

    Users with fewer than three events stay entirely in training and are not evaluated.

    Attributes:
        train: Training interactions (schema of `core.schema`).
        validation: Validation cases: history = the user's training events.
        test: Test cases: history = training events plus the validation event.
    """

    train: pd.DataFrame
    validation: EvalCases
    test: EvalCases


def _positions_within_user(user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by user: position of each row within its user and the user's count."""
    starts = np.r_[0, np.flatnonzero(np.diff(user_ids)) + 1]
    counts = np.diff(np.r_[starts, len(user_ids)])
    position = np.arange(len(user_ids)) - np.repeat(starts, counts)
    return position, np.repeat(counts, counts)


def leave_one_out(
    interactions: pd.DataFrame, min_events: int = 3, engagement: np.ndarray | None = None
) -> LeaveOneOutSplit:
    """Chronological leave-one-out split.

    Args:
        interactions: Validated interactions (sorted by user, then time, ties in source order).
        min_events: Users with fewer events are kept for training only; at least 3.
        engagement: Optional ``[len(interactions)] float32`` per event, carried into the
            cases' histories.

    Returns:
        The split; ``test`` and ``validation`` list the same users in the same order.

    Raises:
        DataError: ``min_events`` below 3, or no user has enough events to evaluate.
    """
    if min_events < 3:
        raise DataError(f"min_events must be >= 3 for leave-one-out, got {min_events}")
    user_ids = interactions["user_id"].to_numpy(np.int64)
    if len(user_ids) > 1 and (np.diff(user_ids) < 0).any():
        raise DataError(
            "interactions are not sorted by user", hint="pass them through validate_interactions"
        )
    position, count = _positions_within_user(user_ids)
    evaluated = count >= min_events
    is_test = evaluated & (position == count - 1)
    is_valid = evaluated & (position == count - 2)
    if not is_test.any():
        raise DataError(
            f"no user has {min_events} or more events; leave-one-out has nothing to evaluate"
        )
    train = interactions.loc[~(is_test | is_valid)].reset_index(drop=True)

    videos = interactions["video_id"].to_numpy(np.int64)
    stamps = interactions["timestamp"].to_numpy(np.int64)
    eval_users = user_ids[is_test]
    user_index = np.searchsorted(eval_users, user_ids)
    in_train_of_evaluated = evaluated & ~(is_test | is_valid)
    n = len(eval_users)
    per_event = [videos, stamps] + ([] if engagement is None else [np.asarray(engagement)])

    def history_csr(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        ptr, *columns = _csr(user_index[rows], n, *(c[rows] for c in per_event))
        return ptr, columns[0], columns[1], columns[2] if len(columns) == 3 else None

    one = np.arange(n + 1, dtype=np.int64)
    v_ptr, v_ids, v_ts, v_eng = history_csr(in_train_of_evaluated)
    validation = EvalCases(
        eval_users, v_ptr, v_ids, v_ts, one, videos[is_valid], stamps[is_valid], v_eng
    )
    # Test history = training events followed by the validation event, per user.
    t_ptr, t_ids, t_ts, t_eng = history_csr(evaluated & ~is_test)
    test = EvalCases(eval_users, t_ptr, t_ids, t_ts, one, videos[is_test], stamps[is_test], t_eng)
    return LeaveOneOutSplit(train=train, validation=validation, test=test)


@dataclasses.dataclass(frozen=True)
class TimeCutSplit:
    """Train before ``cutoff``; evaluate on the window ``[cutoff, cutoff + window)``.

    Attributes:
        cutoff: First second of the test window.
        window_seconds: Length of the test window.
        train: Interactions strictly before the cutoff.
        test: Users active both before and in the window; targets are the videos they watched
            in the window and had not watched before.
    """

    cutoff: int
    window_seconds: int
    train: pd.DataFrame
    test: EvalCases


def time_cut(
    interactions: pd.DataFrame,
    cutoff: int,
    window_seconds: int,
    engagement: np.ndarray | None = None,
) -> TimeCutSplit:
    """Global time cut: the retrain gate's split.

    Args:
        interactions: Validated interactions (sorted by user, then time).
        cutoff: Seconds since the epoch; events before it are training data.
        window_seconds: Events in ``[cutoff, cutoff + window_seconds)`` are test targets.
        engagement: Optional ``[len(interactions)] float32`` per event, carried into the
            cases' histories.

    Raises:
        DataError: Empty training side or no user with a new video in the window.
    """
    if window_seconds <= 0:
        raise DataError(f"window_seconds must be > 0, got {window_seconds}")
    stamps = interactions["timestamp"].to_numpy(np.int64)
    before = stamps < cutoff
    inside = (stamps >= cutoff) & (stamps < cutoff + window_seconds)
    if not before.any():
        raise DataError(f"no interactions before the cutoff {cutoff}", hint="move the cutoff later")
    train = interactions.loc[before].reset_index(drop=True)
    window = interactions.loc[inside]
    known_pairs = pd.MultiIndex.from_frame(train[["user_id", "video_id"]])
    new = ~pd.MultiIndex.from_frame(window[["user_id", "video_id"]]).isin(known_pairs)
    window = window.loc[new]
    window = window.loc[window["user_id"].isin(train["user_id"].unique())]
    window = window.drop_duplicates(["user_id", "video_id"], keep="first")
    if len(window) == 0:
        raise DataError(
            f"no user with history watched a new video in [{cutoff}, {cutoff + window_seconds})",
            hint="widen the window or move the cutoff",
        )
    eval_users = np.unique(window["user_id"].to_numpy(np.int64))
    train_users = train["user_id"].to_numpy(np.int64)
    keep = np.isin(train_users, eval_users)
    history_columns = [
        train["video_id"].to_numpy(np.int64)[keep],
        train["timestamp"].to_numpy(np.int64)[keep],
    ]
    if engagement is not None:
        history_columns.append(np.asarray(engagement)[before][keep])
    h_ptr, *history = _csr(
        np.searchsorted(eval_users, train_users[keep]), len(eval_users), *history_columns
    )
    t_ptr, t_ids, t_ts = _csr(
        np.searchsorted(eval_users, window["user_id"].to_numpy(np.int64)),
        len(eval_users),
        window["video_id"].to_numpy(np.int64),
        window["timestamp"].to_numpy(np.int64),
    )
    test = EvalCases(
        eval_users,
        h_ptr,
        history[0],
        history[1],
        t_ptr,
        t_ids,
        t_ts,
        history[2] if engagement is not None else None,
    )
    return TimeCutSplit(cutoff=cutoff, window_seconds=window_seconds, train=train, test=test)


def last_event_holdout(
    interactions: pd.DataFrame, engagement: np.ndarray | None = None
) -> tuple[pd.DataFrame, EvalCases]:
    """Each user's last event held out for early stopping, the rest for training.

    Used by retraining, whose test window is a time cut: it still needs validation cases from
    the training period, and this costs one event per user instead of a day of data.

    Args:
        interactions: Validated interactions (sorted by user, then time).
        engagement: Optional ``[len(interactions)] float32`` per event.

    Returns:
        ``(training interactions, validation cases)``; users with a single event stay in
        training and are not validated.

    Raises:
        DataError: No user has two events.
    """
    user_ids = interactions["user_id"].to_numpy(np.int64)
    position, count = _positions_within_user(user_ids)
    held_out = (count >= 2) & (position == count - 1)
    if not held_out.any():
        raise DataError("no user has two events; nothing to validate on")
    users = user_ids[held_out]
    user_index = np.searchsorted(users, user_ids)
    in_history = (count >= 2) & ~held_out
    videos = interactions["video_id"].to_numpy(np.int64)
    stamps = interactions["timestamp"].to_numpy(np.int64)
    columns = [videos[in_history], stamps[in_history]]
    if engagement is not None:
        columns.append(np.asarray(engagement)[in_history])
    h_ptr, *history = _csr(user_index[in_history], len(users), *columns)
    one = np.arange(len(users) + 1, dtype=np.int64)
    cases = EvalCases(
        users,
        h_ptr,
        history[0],
        history[1],
        one,
        videos[held_out],
        stamps[held_out],
        history[2] if engagement is not None else None,
    )
    return interactions.loc[~held_out].reset_index(drop=True), cases
