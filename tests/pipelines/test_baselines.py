import math

import numpy as np
import pandas as pd
import pytest

from core.errors import ConfigError
from core.schema import validate_interactions
from core.splits import EvalCases
from core.vocab import IdVocabulary
from pipelines.jobs import baselines
from pipelines.jobs.baselines import EASE, ItemKNN, MostPopular, Transition, fit_baselines

# u1: 1 -> 2 -> 3, u2: 1 -> 2, u3: 2 -> 3; video 4 is never watched.
TRAIN = validate_interactions(
    pd.DataFrame(
        [(1, 1, 10), (1, 2, 20), (1, 3, 30), (2, 1, 10), (2, 2, 20), (3, 2, 10), (3, 3, 20)],
        columns=["user_id", "video_id", "timestamp"],
    )
)
VOCAB = IdVocabulary([1, 2, 3, 4])


def _cases(histories):
    indptr = np.r_[0, np.cumsum([len(h) for h in histories])].astype(np.int64)
    ids = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    one = np.arange(len(histories) + 1, dtype=np.int64)
    targets = np.full(len(histories), 4, dtype=np.int64)
    return EvalCases(
        np.arange(len(histories), dtype=np.int64),
        indptr,
        ids,
        np.zeros_like(ids),
        one,
        targets,
        np.zeros_like(targets),
    )


def test_most_popular_counts():
    scores = MostPopular(TRAIN, VOCAB)(_cases([[1], [3]]))
    assert scores.tolist() == [[2, 3, 2, 0], [2, 3, 2, 0]]


def test_transition_probabilities_with_popularity_tie_break():
    scores = Transition(TRAIN, VOCAB)(_cases([[1], [3], [1, 2]]))
    # After 1 always 2, after 2 always 3, nothing ever followed 3. Popularity (2, 3, 2, 0)
    # scaled by 1 / (2 * max out-degree 2) breaks ties below any observed transition.
    backoff = np.array([2 / 3, 1.0, 2 / 3, 0.0]) / 4
    np.testing.assert_allclose(scores[0], backoff + [0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(scores[1], backoff, atol=1e-6)
    np.testing.assert_allclose(scores[2], backoff + [0, 0, 1, 0], atol=1e-6)


def test_item_knn_cosine_by_hand():
    scores = ItemKNN(TRAIN, VOCAB, neighbours=0, shrink=0.0)(_cases([[1]]))[0]
    # co-watch counts: (1,2)=2, (1,3)=1; watch counts 1:2, 2:3, 3:2.
    assert scores == pytest.approx([0.0, 2 / math.sqrt(6), 1 / math.sqrt(4), 0.0], abs=1e-6)


def test_ease_solves_its_constrained_least_squares():
    l2 = 3.0
    model = EASE(TRAIN, VOCAB, l2=l2)
    x = baselines.interaction_matrix(TRAIN, VOCAB).toarray().astype(np.float64)
    gram = x.T @ x
    weights = model.weights.astype(np.float64)
    assert np.allclose(np.diag(weights), 0.0)
    # Stationarity with diag(B) = 0: (G + l2 I) B - G is diagonal.
    residual = (gram + l2 * np.eye(4)) @ weights - gram
    off_diagonal = residual - np.diag(np.diag(residual))
    assert np.abs(off_diagonal).max() < 1e-4
    scores = model(_cases([[1]]))[0]
    np.testing.assert_allclose(scores, weights[0], atol=1e-6)


def test_fit_baselines_by_name_and_unknown_name():
    fitted = fit_baselines(["most_popular", "transition"], TRAIN, VOCAB)
    assert list(fitted) == ["most_popular", "transition"]
    with pytest.raises(ConfigError, match="unknown baseline 'svd'"):
        fit_baselines(["svd"], TRAIN, VOCAB)


def test_dense_baselines_refuse_huge_catalogues(monkeypatch):
    monkeypatch.setattr(baselines, "MAX_DENSE_VIDEOS", 3)
    with pytest.raises(ConfigError, match="ease needs a dense 4x4 matrix"):
        EASE(TRAIN, VOCAB)
