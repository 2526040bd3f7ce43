import math

import numpy as np
import pytest

from ranking.blend import blend_scores


def test_blend_by_hand():
    # p(watch) = softmax([0, ln 2]) = [1/3, 2/3]; engagement [0.9, 0.3].
    logits = np.array([0.0, math.log(2.0)])
    engagement = np.array([0.9, 0.3])
    by_watch = blend_scores(logits, engagement, weight=0.0)
    np.testing.assert_allclose(np.exp(by_watch), [1 / 3, 2 / 3])
    # weight 1: expected engagement 1/3 * 0.9 = 0.3 beats 2/3 * 0.3 = 0.2.
    by_value = blend_scores(logits, engagement, weight=1.0)
    np.testing.assert_allclose(np.exp(by_value), [0.3, 0.2])
    assert np.argmax(by_watch) == 1 and np.argmax(by_value) == 0


def test_invalid_candidates_drop_out_of_the_softmax():
    logits = np.array([[1.0, 5.0, 1.0]])
    scores = blend_scores(logits, np.full((1, 3), 0.5), 0.0, valid=np.array([[True, False, True]]))
    assert scores[0, 1] == -np.inf
    np.testing.assert_allclose(np.exp(scores[0, [0, 2]]), [0.5, 0.5])


def test_engagement_is_clipped_away_from_zero():
    scores = blend_scores(np.zeros(2), np.array([0.0, 1.0]), weight=1.0)
    assert np.isfinite(scores).all()
    assert scores[0] == pytest.approx(math.log(0.5) + math.log(1e-3))
