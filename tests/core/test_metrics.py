import math

import numpy as np
import pytest

from core.metrics import evaluate_scorer, list_metrics, metrics_from_ranks, target_ranks
from core.splits import EvalCases
from core.vocab import IdVocabulary


def _cases(histories, targets, user_ids=None):
    def csr(lists):
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in lists])
        values = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
        return indptr, values

    h_ptr, h_ids = csr(histories)
    t_ptr, t_ids = csr(targets)
    users = np.arange(len(histories), dtype=np.int64) if user_ids is None else user_ids
    return EvalCases(users, h_ptr, h_ids, np.zeros_like(h_ids), t_ptr, t_ids, np.zeros_like(t_ids))


def test_hand_computed_ranks_and_metrics():
    # Videos 10..14 are catalogue columns 0..4.
    vocab = IdVocabulary([10, 11, 12, 13, 14])
    scores = np.array([[0.9, 0.5, 0.7, 0.1, 0.3], [0.9, 0.5, 0.7, 0.1, 0.3]], dtype=np.float32)
    cases = _cases(histories=[[10], [11]], targets=[[12], [14]])
    report = evaluate_scorer(lambda c: scores[: len(c)], cases, vocab, ks=(1, 10), ns=(3,))
    # Case 0: 10 is watched, so 12 (0.7) ranks first among 11, 12, 13, 14.
    # Case 1: 11 is watched; unseen order 10 (0.9), 12 (0.7), 14 (0.3), 13 (0.1): rank 3.
    m = report.metrics
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["hr@10"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 2)
    assert m["mrr"] == pytest.approx((1.0 + 1.0 / 3.0) / 2)
    assert m["recall@3"] == pytest.approx(1.0)
    assert report.num_cases == 2


def test_ties_count_against_the_target():
    scores = np.zeros((1, 20), dtype=np.float32)
    ranks = target_ranks(scores, [np.array([], dtype=np.int64)], [np.array([5])])
    assert ranks[0].tolist() == [20]
    assert metrics_from_ranks(ranks, ks=(10,))["hr@10"] == 0.0


def test_two_relevant_videos_ndcg():
    ranks = [np.array([1, 3])]
    m = metrics_from_ranks(ranks, ks=(10,))
    ideal = 1.0 + 1.0 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 0.5) / ideal)
    assert m["recall@10"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx(1.0)


def test_coverage_and_category_diversity():
    vocab = IdVocabulary([1, 2, 3, 4])
    scores = np.array([[4, 3, 2, 1], [4, 3, 2, 1]], dtype=np.float32)
    cases = _cases(histories=[[], [1]], targets=[[2], [3]])
    report = evaluate_scorer(
        lambda c: scores[: len(c)],
        cases,
        vocab,
        ks=(2,),
        diversity_k=2,
        video_categories=[("a",), ("a",), ("b",), ("c", "d")],
    )
    # Top-2 lists: {1, 2} and, with 1 filtered, {2, 3}: videos 1, 2, 3 shown out of 4.
    assert report.metrics["coverage@2"] == pytest.approx(0.75)
    assert report.metrics["categories@2"] == pytest.approx((1 + 2) / 2)


def test_cases_whose_targets_were_already_watched_are_skipped():
    vocab = IdVocabulary([1, 2, 3])
    scores = np.ones((2, 3), dtype=np.float32)
    cases = _cases(histories=[[1], [2]], targets=[[1], [3]])
    report = evaluate_scorer(lambda c: scores[: len(c)], cases, vocab)
    assert report.num_cases == 1
    assert report.skipped_cases == 1


def test_scorer_with_wrong_shape_is_refused():
    vocab = IdVocabulary([1, 2, 3])
    cases = _cases(histories=[[1]], targets=[[2]])
    with pytest.raises(ValueError, match=r"scorer returned shape \(1, 2\), expected \(1, 3\)"):
        evaluate_scorer(lambda c: np.zeros((1, 2), np.float32), cases, vocab)


def test_list_metrics_by_hand():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1], [0.5, 0.5, 0.4]])
    target = np.array([2, -1, 1])
    m = list_metrics(scores, target, k=2)
    # Case 0: target ranks 2nd; case 1: retrieval missed it; case 2: tie counts against it.
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(3)) / 3)
