"""Tuning helpers: exact ground truth, recall@K and the operating-point search."""

from __future__ import annotations

import numpy as np

from index import OperatingPoint, exact_search, recall_at_k
from index.tuning import Criteria, per_query_recall, walk_ladders


def test_exact_search_over_chunks_equals_one_pass():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    q = rng.standard_normal((20, 8)).astype(np.float32)
    ids = np.arange(1000, dtype=np.int64) * 5
    whole = exact_search(q, [(x, ids)], 10)
    chunked = exact_search(q, [(x[i : i + 64], ids[i : i + 64]) for i in range(0, 1000, 64)], 10)
    np.testing.assert_array_equal(whole[1], chunked[1])
    expected = np.argsort(-(q @ x.T), axis=1)[:, :10] * 5
    np.testing.assert_array_equal(whole[1], expected)
    few = exact_search(q, [(x[:3], ids[:3])], 10)[1]  # fewer vectors than k: -1 padding
    assert (few[:, 3:] == -1).all() and (few[:, :3] >= 0).all()


def test_recall_at_k_counts_overlap_and_ignores_padding():
    truth = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    found = np.array([[4, 3, 9, 9], [6, 5, -1, -1]])
    assert recall_at_k(found, truth, 4) == (0.5 + 1.0) / 2
    np.testing.assert_allclose(per_query_recall(found, truth, 2), [0.0, 1.0])


def test_walk_ladders_picks_the_cheapest_passing_point_and_rejects_hidden_failures():
    # ef=100 has a good mean but 5% of queries get nothing; ef=200 passes; ef=400 costs more.
    good = np.full(1000, 0.99)
    hidden = good.copy()
    hidden[:50] = 0.0
    measured = {100: (hidden, 0.1), 200: (np.full(1000, 0.97), 0.2), 400: (good, 0.4)}
    ladder = [OperatingPoint(ef_search=ef) for ef in (100, 200, 400)]
    calls = []

    def evaluate(point):
        calls.append(point.ef_search)
        return measured[point.ef_search]

    criteria = Criteria(target=0.9, confidence_z=2.0, floor=0.5, max_failed=0.01)
    chosen, trials = walk_ladders([ladder], evaluate, criteria)
    assert chosen is not None and chosen.point.ef_search == 200
    assert calls == [100, 200]  # stops at the first passing rung
    assert trials[0].recall > 0.9 and trials[0].failed == 0.05 and not trials[0].passes(criteria)
    lenient = Criteria(target=0.9, confidence_z=2.0, floor=0.5, max_failed=0.1)
    assert walk_ladders([ladder], evaluate, lenient)[0].point.ef_search == 100


def test_walk_ladders_needs_the_margin_and_reports_failure():
    noisy = np.r_[np.ones(50), np.full(50, 0.9)]  # mean 0.95, stderr 0.005
    chosen, trials = walk_ladders(
        [[OperatingPoint(ef_search=64)]],
        lambda p: (noisy, 0.1),
        Criteria(target=0.95, confidence_z=2.0),
    )
    assert chosen is None and len(trials) == 1
    chosen, _ = walk_ladders(
        [[OperatingPoint(ef_search=64)]], lambda p: (noisy, 0.1), Criteria(target=0.95)
    )
    assert chosen is not None
