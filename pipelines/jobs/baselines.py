"""Baselines in the same harness as the model: most-popular, item-kNN, EASE, item transitions.

Each baseline is fitted on the training interactions of a split and scores every catalogue
column for a batch of `EvalCases` (``[b, n] float32``), reading only each case's history.
Hyper-parameters (kNN neighbourhood, EASE's L2 weight) are picked on the validation cases,
as the model's are, so the comparison is fair.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.errors import ConfigError
from core.metrics import evaluate_scorer
from core.splits import EvalCases
from core.vocab import FIRST_ID_ROW, IdVocabulary

logger = logging.getLogger(__name__)

MAX_DENSE_VIDEOS = 40_000


class Baseline(Protocol):
    """A fitted scorer: batch of cases to ``[b, n] float32`` scores in catalogue order."""

    name: str

    def __call__(self, cases: EvalCases) -> np.ndarray: ...


def _columns(video_vocab: IdVocabulary, video_ids: np.ndarray) -> np.ndarray:
    columns = video_vocab.lookup(video_ids) - FIRST_ID_ROW
    return columns[columns >= 0]


def interaction_matrix(train: pd.DataFrame, video_vocab: IdVocabulary) -> sp.csr_matrix:
    """Binary users x videos matrix of the training interactions, ``float32``."""
    columns = video_vocab.lookup(train["video_id"].to_numpy(np.int64)) - FIRST_ID_ROW
    _, users = np.unique(train["user_id"].to_numpy(np.int64), return_inverse=True)
    keep = columns >= 0
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (users[keep], columns[keep])),
        shape=(int(users.max()) + 1 if len(users) else 0, video_vocab.num_ids),
    )
    matrix.data[:] = 1.0  # repeated watches count once
    return matrix


def history_matrix(cases: EvalCases, video_vocab: IdVocabulary) -> sp.csr_matrix:
    """Binary cases x videos matrix of the cases' histories, ``float32``."""
    rows, cols = [], []
    for i in range(len(cases)):
        columns = np.unique(_columns(video_vocab, cases.history(i)))
        rows.append(np.full(len(columns), i))
        cols.append(columns)
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix(
        (np.ones(len(row), dtype=np.float32), (row, col)), shape=(len(cases), video_vocab.num_ids)
    )


def _require_dense_size(name: str, num_videos: int) -> None:
    if num_videos > MAX_DENSE_VIDEOS:
        raise ConfigError(
            f"evaluation.baselines: {name} needs a dense {num_videos}x{num_videos} matrix; "
            f"above {MAX_DENSE_VIDEOS} videos drop it from the baselines (--baselines)"
        )


class MostPopular:
    """Scores every video by its number of training interactions."""

    name = "most_popular"

    def __init__(self, train: pd.DataFrame, video_vocab: IdVocabulary) -> None:
        columns = _columns(video_vocab, train["video_id"].to_numpy(np.int64))
        self.counts = np.bincount(columns, minlength=video_vocab.num_ids).astype(np.float32)

    def __call__(self, cases: EvalCases) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(cases), len(self.counts))).copy()


class ItemKNN:
    """Item-based collaborative filtering with cosine similarity over co-watches.

    Args:
        train: Training interactions.
        video_vocab: Catalogue vocabulary (column order).
        neighbours: Similar videos kept per video (0 keeps all).
        shrink: Added to the cosine denominator to damp rare co-occurrences.
    """

    name = "item_knn"

    def __init__(
        self,
        train: pd.DataFrame,
        video_vocab: IdVocabulary,
        neighbours: int = 200,
        shrink: float = 10.0,
    ) -> None:
        _require_dense_size(self.name, video_vocab.num_ids)
        self.video_vocab = video_vocab
        x = interaction_matrix(train, video_vocab)
        cooccurrence = (x.T @ x).toarray().astype(np.float32)
        norms = np.sqrt(np.diag(cooccurrence)).astype(np.float32)
        denominator = np.outer(norms, norms) + shrink
        similarity = np.divide(
            cooccurrence, denominator, out=np.zeros_like(cooccurrence), where=denominator > 0
        )
        np.fill_diagonal(similarity, 0.0)
        if 0 < neighbours < similarity.shape[0]:
            weakest = np.argpartition(-similarity, neighbours, axis=0)[neighbours:]
            np.put_along_axis(similarity, weakest, 0.0, axis=0)
        self.similarity = similarity

    def __call__(self, cases: EvalCases) -> np.ndarray:
        return np.asarray(history_matrix(cases, self.video_vocab) @ self.similarity)


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck, 2019): closed-form item-item weights.

    Args:
        train: Training interactions.
        video_vocab: Catalogue vocabulary.
        l2: Weight of the L2 penalty (lambda).
    """

    name = "ease"

    def __init__(self, train: pd.DataFrame, video_vocab: IdVocabulary, l2: float = 500.0) -> None:
        _require_dense_size(self.name, video_vocab.num_ids)
        self.video_vocab = video_vocab
        x = interaction_matrix(train, video_vocab)
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += l2
        precision = np.linalg.inv(gram)
        weights = precision / -np.diag(precision)
        np.fill_diagonal(weights, 0.0)
        self.weights = weights.astype(np.float32)

    def __call__(self, cases: EvalCases) -> np.ndarray:
        return np.asarray(history_matrix(cases, self.video_vocab) @ self.weights)


class Transition:
    """First-order item transitions: P(next video | last watched video).

    Scores are the empirical transition probabilities out of the case's last watched video;
    popularity, scaled below the smallest possible probability, breaks ties among the rest.
    """

    name = "transition"

    def __init__(self, train: pd.DataFrame, video_vocab: IdVocabulary) -> None:
        self.video_vocab = video_vocab
        users = train["user_id"].to_numpy(np.int64)
        columns = video_vocab.lookup(train["video_id"].to_numpy(np.int64)) - FIRST_ID_ROW
        same_user = users[1:] == users[:-1]
        known = (columns[1:] >= 0) & (columns[:-1] >= 0)
        keep = same_user & known
        n = video_vocab.num_ids
        counts = sp.csr_matrix(
            (np.ones(int(keep.sum()), dtype=np.float32), (columns[:-1][keep], columns[1:][keep])),
            shape=(n, n),
        )
        out_degree = np.asarray(counts.sum(axis=1)).ravel()
        self.transitions = sp.diags(1.0 / np.maximum(out_degree, 1.0)).dot(counts).tocsr()
        popularity = np.bincount(columns[columns >= 0], minlength=n).astype(np.float64)
        max_degree = max(float(out_degree.max()), 1.0) if n else 1.0
        self.backoff = (popularity / max(popularity.max(), 1.0) / (2.0 * max_degree)).astype(
            np.float32
        )

    def __call__(self, cases: EvalCases) -> np.ndarray:
        scores = np.broadcast_to(self.backoff, (len(cases), len(self.backoff))).copy()
        for i in range(len(cases)):
            columns = _columns(self.video_vocab, cases.history(i))
            if len(columns):
                row = self.transitions.getrow(int(columns[-1]))
                scores[i, row.indices] += row.data
        return scores


def _pick_on_validation(
    candidates: Sequence[Baseline], validation: EvalCases, video_vocab: IdVocabulary, label: str
) -> Baseline:
    best, best_ndcg = candidates[0], -1.0
    for candidate in candidates:
        ndcg = evaluate_scorer(candidate, validation, video_vocab).metrics["ndcg@10"]
        logger.info("%s: validation ndcg@10 %.4f", label.format(c=candidate), ndcg)
        if ndcg > best_ndcg:
            best, best_ndcg = candidate, ndcg
    return best


def fit_baselines(
    names: Sequence[str],
    train: pd.DataFrame,
    video_vocab: IdVocabulary,
    validation: EvalCases | None = None,
) -> dict[str, Baseline]:
    """Fits the named baselines, tuning their hyper-parameters on ``validation`` when given.

    Args:
        names: Any of ``most_popular``, ``item_knn``, ``ease``, ``transition``.
        train: Training interactions of the split.
        video_vocab: Catalogue vocabulary (column order of the scores).
        validation: Validation cases for hyper-parameter selection.

    Returns:
        Fitted baselines by name, in the order given.
    """
    fitted: dict[str, Baseline] = {}
    for name in names:
        if name == "most_popular":
            fitted[name] = MostPopular(train, video_vocab)
        elif name == "transition":
            fitted[name] = Transition(train, video_vocab)
        elif name == "item_knn":
            grid = [ItemKNN(train, video_vocab, neighbours=k) for k in (50, 200, 0)]
            fitted[name] = (
                _pick_on_validation(grid, validation, video_vocab, "item_knn")
                if validation is not None
                else grid[1]
            )
        elif name == "ease":
            grid = [EASE(train, video_vocab, l2=l2) for l2 in (100.0, 500.0, 2000.0)]
            fitted[name] = (
                _pick_on_validation(grid, validation, video_vocab, "ease")
                if validation is not None
                else grid[1]
            )
        else:
            raise ConfigError(f"evaluation.baselines: unknown baseline {name!r}")
    return fitted
