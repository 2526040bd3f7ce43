"""The diversity step of the request path (`Recommender._diversify`, pipelines/serve.py): maximal
marginal relevance and the per-category cap, on a real loaded bundle.

Candidates with chosen embeddings and categories are uploaded into the loaded recommender's
catalogue (through `LiveCatalogue.upsert`, with a plain function in place of the video tower),
so the small cases below can be worked out by hand; MMR over the bundle's own embeddings is
compared with a direct transcription of the formula.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.schema import validate_videos
from core.vocab import FIRST_ID_ROW
from pipelines.serve import Recommender

FIRST_UPLOAD_ID = 10**12


@pytest.fixture(scope="module")
def recommender(load_tiny_service):
    """The tiny bundle loaded once for this module, over its own event store."""
    service = load_tiny_service("diversity")
    yield service.current
    service.close()


def _upload(recommender: Recommender, vectors: np.ndarray, categories: list[str]) -> np.ndarray:
    """Adds one video per row of ``vectors`` with the given main category ("" for none).

    Returns:
        Their catalogue rows.
    """
    start = FIRST_UPLOAD_ID + recommender.catalogue.num_rows  # fresh ids on every call
    ids = start + np.arange(len(vectors))
    table = validate_videos(
        pd.DataFrame(
            {
                "video_id": ids,
                "categories": [(c,) if c else () for c in categories],
                "duration": np.full(len(ids), 60.0),
            }
        )
    )

    def embed(arrays: Any) -> np.ndarray:
        return vectors

    rows, _ = recommender.catalogue.upsert(table, embed)
    return rows


def _diversify(
    recommender: Recommender, scores: list[float] | np.ndarray, rows: np.ndarray, k: int, **serving
) -> list[int]:
    """`Recommender._diversify` under serving settings ``serving`` (restored afterwards)."""
    saved = recommender.config
    recommender.config = dataclasses.replace(saved, **serving)
    try:
        return recommender._diversify(np.asarray(scores, dtype=np.float64), rows, k)
    finally:
        recommender.config = saved


def _mmr_reference(scores: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> list[int]:
    """MMR as the literature writes it, one candidate at a time.

    The first pick is the best score; each next one maximises
    ``lam * relevance - (1 - lam) * max(similarity to the picked)``, relevance being the score
    scaled to [0, 1] and similarity the inner product of the embeddings.
    """
    low, high = float(np.min(scores)), float(np.max(scores))
    relevance = [(float(s) - low) / (high - low) for s in scores]
    picked = [int(np.argmax(scores))]
    while len(picked) < min(k, len(scores)):
        best, best_value = -1, -math.inf
        for i in range(len(scores)):
            if i in picked:
                continue
            redundancy = max(float(np.dot(vectors[i], vectors[j])) for j in picked)
            value = lam * relevance[i] - (1.0 - lam) * redundancy
            if value > best_value:
                best, best_value = i, value
        picked.append(best)
    return picked


# -- MMR --------------------------------------------------------------------------------------

# Candidates a, b, c, d: b duplicates a, c is orthogonal to a, d lies half-way between them
# (similarity 1/sqrt(2) = 0.7071 to both). Scores 1.0, 0.9, 0.5, 0.8 scale to relevance
# 1, 0.8, 0, 0.6; a is picked first. Values lam * rel - (1 - lam) * max_similarity:
#   lam = 1:    plain score order a, b, d, c.
#   lam = 0.57: 2nd pick: b 0.456 - 0.43 = 0.026, c 0, d 0.342 - 0.43 * 0.7071 = 0.038 -> d;
#               3rd pick: b 0.026, c 0 - 0.43 * 0.7071 = -0.304 -> b; then c.
#   lam = 0.5:  2nd pick: b 0.4 - 0.5 = -0.1, c 0, d 0.3 - 0.354 = -0.054 -> c;
#               3rd pick: b -0.1, d -0.054 -> d; then b.
MMR_CASES = [(1.0, [0, 1, 3, 2]), (0.57, [0, 3, 1, 2]), (0.5, [0, 2, 3, 1])]


@pytest.mark.parametrize(("lam", "expected"), MMR_CASES)
def test_mmr_on_a_case_worked_out_by_hand(recommender, lam, expected):
    dim = recommender.catalogue.embeddings.shape[1]
    vectors = np.zeros((4, dim), dtype=np.float32)
    vectors[0, 0] = vectors[1, 0] = 1.0
    vectors[2, 1] = 1.0
    vectors[3, :2] = 1.0 / math.sqrt(2.0)
    rows = _upload(recommender, vectors, ["", "", "", ""])
    scores = [1.0, 0.9, 0.5, 0.8]
    assert _diversify(recommender, scores, rows, 4, diversity="mmr", mmr_lambda=lam) == expected
    assert _mmr_reference(np.array(scores), vectors, 4, lam) == expected
    # A shorter list is the same list cut.
    assert (
        _diversify(recommender, scores, rows, 2, diversity="mmr", mmr_lambda=lam) == (expected[:2])
    )


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 0.9])
def test_mmr_on_the_bundle_embeddings_matches_the_formula(recommender, lam):
    catalogue = recommender.catalogue
    generator = np.random.default_rng(7)
    rows = generator.choice(np.arange(FIRST_ID_ROW, catalogue.num_rows), 40, replace=False)
    scores = generator.normal(size=40)
    got = _diversify(recommender, scores, rows, 10, diversity="mmr", mmr_lambda=lam)
    assert got == _mmr_reference(scores, catalogue.embeddings[rows], 10, lam)
    assert len(set(got)) == 10


def test_mmr_with_lambda_one_is_the_plain_score_order(recommender):
    catalogue = recommender.catalogue
    generator = np.random.default_rng(11)
    rows = generator.choice(np.arange(FIRST_ID_ROW, catalogue.num_rows), 60, replace=False)
    scores = generator.normal(size=60)
    plain = np.argsort(-scores)[:20].tolist()
    assert _diversify(recommender, scores, rows, 20, diversity="mmr", mmr_lambda=1.0) == plain
    assert _diversify(recommender, scores, rows, 20, diversity="none") == plain


# -- category cap -----------------------------------------------------------------------------


def test_the_category_cap_defers_the_extra_videos_of_a_category(recommender):
    a, b = recommender.features.categories.values[:2]
    categories = [a, a, b, a, "", "", "", b]  # "" has no category: never capped
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # already in score order
    dim = recommender.catalogue.embeddings.shape[1]
    rows = _upload(recommender, np.eye(8, dim, dtype=np.float32), categories)

    def capped(k: int, cap: int) -> list[int]:
        return _diversify(recommender, scores, rows, k, diversity="category_cap", category_cap=cap)

    # Cap 2: the third video of a (position 3) waits; the list fills from later positions.
    assert capped(5, 2) == [0, 1, 2, 4, 5]
    assert capped(7, 2) == [0, 1, 2, 4, 5, 6, 7]
    # With too few other videos, the deferred ones fill the end, in score order.
    assert capped(8, 2) == [0, 1, 2, 4, 5, 6, 7, 3]
    assert capped(8, 1) == [0, 2, 4, 5, 6, 1, 3, 7]
    assert capped(3, 1) == [0, 2, 4]
    # A cap no category reaches is the score order.
    assert capped(8, 3) == list(range(8))
