"""Item-to-item candidate sources against hand-computed answers: counting, pruning, lookups,
proposals, the merge into N slots, the evidence and its leave-own-pair-out for training."""

import json

import numpy as np
import pandas as pd
import pytest

from candidates import EVIDENCE_FEATURES, ORIGINS, CandidateSources, ItemGraph, merge_candidates
from candidates.recency import fit_recency_decay
from candidates.sources import order_scores
from core.config import CandidatesConfig
from core.errors import BundleError, ConfigError
from core.vocab import IdVocabulary

COLUMN = {name: i for i, name in enumerate(EVIDENCE_FEATURES)}


def graph() -> ItemGraph:
    # 2->3 twice, 2->4, 2->5, 3->4; two neighbours kept per row.
    return ItemGraph.from_pairs(np.array([2, 2, 2, 3, 2]), np.array([3, 4, 3, 4, 5]), 6, 2)


def test_pairs_are_counted_and_each_row_keeps_its_strongest_edges():
    g = graph()
    np.testing.assert_array_equal(g.indptr, [0, 0, 0, 2, 3, 3, 3])
    # Row 2 keeps 3 (twice) and 4 (the tie with 5 goes to the smaller column).
    np.testing.assert_array_equal(g.columns, [3, 4, 4])
    np.testing.assert_array_equal(g.counts, [2, 1, 1])
    # Totals are counted before pruning: P(3 | 2) = 2 / 4.
    np.testing.assert_array_equal(g.totals, [0, 0, 4, 1, 0, 0])


def test_counts_between_reads_every_pair_and_nothing_outside_the_graph():
    g = graph()
    counts = g.counts_between(np.array([[2, 3, 0, 9]]), np.array([[3, 4, 5, 9]]))
    expected = np.zeros((1, 4, 4), np.float32)
    expected[0, 0, :2] = [2, 1]  # 2->5 was pruned
    expected[0, 1, 1] = 1
    np.testing.assert_array_equal(counts, expected)
    # Row 9 is past the graph (an upload after training): never an edge, never a collision.
    assert g.row_totals(np.array([2, 9, 0])).tolist() == [4.0, 0.0, 0.0]


def test_top_sums_weighted_probabilities_and_honours_exclusions():
    g = graph()
    rows, scores = g.top(np.array([[2, 3], [3, 0]]), np.array([1.0, 0.5]), 3)
    # List 0: 4 gets 1 * 1/4 + 0.5 * 1/1 = 0.75; 3 gets 1 * 2/4 = 0.5.
    np.testing.assert_array_equal(rows, [[4, 3, 0], [4, 0, 0]])
    np.testing.assert_allclose(scores, [[0.75, 0.5, 0], [1.0, 0, 0]])
    rows, _ = g.top(np.array([[2, 3]]), np.array([1.0, 0.5]), 3, exclude=np.array([[4, 0]]))
    np.testing.assert_array_equal(rows, [[3, 0, 0]])


def test_graph_round_trips_and_refuses_broken_files(tmp_path):
    g = graph()
    g.save(tmp_path, "transition")
    loaded = ItemGraph.load(tmp_path, "transition")
    for name in ("indptr", "columns", "counts", "totals"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(g, name))
    np.save(tmp_path / "transition_indptr.npy", np.array([0, 5]))
    with pytest.raises(BundleError, match=r"'transition' .* is not a valid graph"):
        ItemGraph.load(tmp_path, "transition")
    with pytest.raises(BundleError, match="cannot read candidate source"):
        ItemGraph.load(tmp_path, "covisit")


def test_merge_keeps_the_index_head_then_interleaves_the_sources():
    merged = merge_candidates(
        np.array([[10, 11, 12, 13, 0]]),
        {
            "transition": (np.array([[11, 20, 0]]), None),
            "covisit": (np.array([[21, 20, 22]]), None),
        },
        num_slots=5,
        source_slots=2,
    )
    # Head 10, 11, 12; sources add 21 and 20 (11 is already in, 22 would be a third); the
    # index's 13 no longer fits.
    np.testing.assert_array_equal(merged.rows, [[10, 11, 12, 21, 20]])
    np.testing.assert_array_equal(merged.retrieval_rank, [[0, 1, 2, -1, -1]])
    index, transition, covisit = (ORIGINS.index(n) for n in ("retrieval", "transition", "covisit"))
    origins = merged.origins[0]
    assert origins[:, index].tolist() == [True, True, True, False, False]
    assert origins[:, transition].tolist() == [False, True, False, False, True]
    assert origins[:, covisit].tolist() == [False, False, False, True, True]


def test_merge_lets_the_index_fill_what_the_sources_leave():
    merged = merge_candidates(
        np.array([[10, 11, 12, 13], [7, 0, 0, 0]]),
        {"transition": (np.array([[10, 0], [8, 7]]), None)},
        num_slots=4,
        source_slots=2,
    )
    np.testing.assert_array_equal(merged.rows, [[10, 11, 12, 13], [7, 8, 0, 0]])
    assert merged.valid.tolist() == [[True] * 4, [True, True, False, False]]


def platform() -> tuple[pd.DataFrame, pd.DataFrame, IdVocabulary]:
    """Videos 100..104; creator "a" uploads 100, 101, 102 in that order, "b" 103, 104."""
    videos = pd.DataFrame(
        {
            "video_id": np.arange(100, 105, dtype=np.int64),
            "creator": ["a", "a", "a", "b", "b"],
            "upload_time": [10.0, 20.0, 30.0, 5.0, np.nan],
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": np.array([1, 1, 1, 2, 2, 3, 3], dtype=np.int64),
            "video_id": np.array([100, 101, 102, 100, 101, 103, 100], dtype=np.int64),
        }
    )
    return interactions, videos, IdVocabulary(videos["video_id"].to_numpy(np.int64))


def test_sources_are_counted_from_sequences_and_the_catalogue():
    interactions, videos, vocab = platform()
    config = CandidatesConfig(covisit_window=2)
    sources = CandidateSources.build(interactions, videos, vocab, config)
    row = {int(v): int(vocab.lookup(np.array([v]))[0]) for v in range(100, 105)}
    transition = sources.graphs["transition"]
    # 100 -> 101 twice (users 1, 2), 101 -> 102 once, 103 -> 100 once; never across users.
    assert transition.counts_between(np.array([row[100]]), np.array([row[101]]))[0, 0] == 2
    assert transition.counts_between(np.array([row[102]]), np.array([row[103]]))[0, 0] == 0
    assert transition.row_totals(np.array([row[100]]))[0] == 2
    covisit = sources.graphs["covisit"]
    # Within two positions, either order: 100 and 102 co-visit (user 1), 101 and 100 twice.
    assert covisit.counts_between(np.array([row[102]]), np.array([row[100]]))[0, 0] == 1
    assert covisit.counts_between(np.array([row[101]]), np.array([row[100]]))[0, 0] == 2
    creator = sources.graphs["creator"]
    # "a": 100 -> 101 -> 102 by upload time; 104 has no upload time, so "b" has no edge.
    assert creator.num_edges == 2
    assert creator.counts_between(np.array([row[101]]), np.array([row[102]]))[0, 0] == 1
    np.testing.assert_array_equal(sources.popularity[[row[100], row[104]]], [3, 0])


def test_evidence_by_hand_and_the_watched_video_without_its_own_pair():
    interactions, videos, vocab = platform()
    config = CandidatesConfig(sources=("transition",), recent_watches=2, recency_decay=0.5)
    sources = CandidateSources.build(interactions, videos, vocab, config)
    r100, r101, r102 = (int(vocab.lookup(np.array([v]))[0]) for v in (100, 101, 102))
    recent = sources.recent(np.array([[0, r100, r101]]))
    np.testing.assert_array_equal(recent, [[r101, r100]])
    candidates = np.array([[r102, r101]])
    origins = np.zeros((1, 2, len(ORIGINS)), bool)
    origins[0, 0, ORIGINS.index("transition")] = True
    evidence = sources.evidence(
        recent, candidates, np.array([[0.3, 0.1]]), np.array([[-1, 0]]), origins, np.array([50.0])
    )[0]
    # 102 follows 101 in 1 of 1 transitions out of 101: score 1; 101 follows 100 in 2 of 2,
    # at the older position: 0.5 * 1.
    np.testing.assert_allclose(evidence[:, COLUMN["transition_score"]], [1.0, 0.5])
    np.testing.assert_allclose(evidence[:, COLUMN["transition_last_count"]], [np.log1p(1), 0])
    np.testing.assert_allclose(evidence[:, COLUMN["retrieval_rank"]], [0.0, 1.0])
    assert evidence[:, COLUMN["from_transition"]].tolist() == [1.0, 0.0]
    # Uploaded at 30 s, ranked at 50 s: 20 s old; log1p(days) / log1p(3650).
    np.testing.assert_allclose(
        evidence[0, COLUMN["freshness"]], np.log1p(20 / 86_400) / np.log1p(3_650), rtol=1e-5
    )
    # Training: column 0 was watched right after `recent`, and its pair was counted from
    # that very sequence; without it, 101 -> 102 was never seen.
    training = sources.evidence(
        recent,
        candidates,
        np.zeros((1, 2)),
        np.full((1, 2), -1),
        origins,
        np.array([50.0]),
        upcoming=np.array([[r102, 0]]),
    )[0]
    np.testing.assert_allclose(training[:, COLUMN["transition_score"]], [0.0, 0.5])
    # A source's order ranks by its score, then by retrieval.
    np.testing.assert_array_equal(np.argsort(-order_scores(evidence, "transition")), [0, 1])
    np.testing.assert_array_equal(np.argsort(-order_scores(evidence, "retrieval")), [0, 1])


def test_sources_round_trip_and_refuse_disagreeing_files(tmp_path):
    interactions, videos, vocab = platform()
    sources = CandidateSources.build(interactions, videos, vocab, CandidatesConfig())
    sources.save(tmp_path)
    loaded = CandidateSources.load(tmp_path, CandidatesConfig())
    assert sorted(loaded.graphs) == ["covisit", "creator", "transition"]
    np.testing.assert_array_equal(loaded.popularity, sources.popularity)
    np.testing.assert_array_equal(loaded.upload_time, sources.upload_time)
    np.save(tmp_path / "popularity.npy", np.zeros(3, np.float32))
    with pytest.raises(BundleError, match="disagree on the number of videos"):
        CandidateSources.load(tmp_path, CandidatesConfig())


def test_the_fitted_recency_decay_is_stored_and_read_back(tmp_path):
    interactions, videos, vocab = platform()
    sources = CandidateSources.build(interactions, videos, vocab, CandidatesConfig())
    assert sources.recency_decay == CandidatesConfig().recency_decay
    sources.with_recency_decay(0.7).save(tmp_path)
    loaded = CandidateSources.load(tmp_path, CandidatesConfig(recency_decay=0.5))
    assert loaded.recency_decay == 0.7
    np.testing.assert_allclose(loaded.recency_weights, 0.7 ** np.arange(5))
    state = json.loads((tmp_path / "sources.json").read_text())
    # A bundle from before the fit reads histories with its config's decay.
    del state["recency_decay"]
    (tmp_path / "sources.json").write_text(json.dumps(state))
    assert CandidateSources.load(tmp_path, CandidatesConfig(recency_decay=0.4)).recency_decay == 0.4
    for bad in (0, 1.5, "0.7", True):
        (tmp_path / "sources.json").write_text(json.dumps({**state, "recency_decay": bad}))
        with pytest.raises(BundleError, match=r"recency_decay must be a number in \(0, 1\]"):
            CandidateSources.load(tmp_path, CandidatesConfig())


def decay_sources() -> CandidateSources:
    # a=2 -> x=5, b=3 -> y=6, c=4 -> y=6: one edge out of each, so every probability is 1.
    transition = ItemGraph.from_pairs(np.array([2, 3, 4]), np.array([5, 6, 6]), 7, 5)
    config = CandidatesConfig(sources=("transition",), recent_watches=3)
    return CandidateSources(
        config, {"transition": transition}, np.zeros(7, np.float32), np.full(7, np.nan), 0.5
    )


def test_recency_decay_is_picked_by_the_sources_ndcg_on_validation():
    sources = decay_sources()
    # Watched c, b, then a. x scores 1 (after a); y scores d + d^2 (after b and c), above 1
    # only for d > 0.618: y is the top proposal at 0.7 and second at 0.5.
    history = [np.array([4, 3, 2])]
    fitted, record = fit_recency_decay(sources, history, np.array([6]), (0.5, 0.7))
    second = round(1 / np.log2(3), 5)
    assert record == {
        "recency_decay": 0.7,
        "validation_ndcg@10": {"0.5": {"transition": second}, "0.7": {"transition": 1.0}},
        "cases": 1,
    }
    assert fitted.recency_decay == 0.7 and sources.recency_decay == 0.5
    # A second case that wants x evens them out: the first of equal choices is kept.
    fitted, record = fit_recency_decay(sources, history * 2, np.array([6, 5]), (0.5, 0.7))
    assert record["recency_decay"] == 0.5 and fitted.recency_decay == 0.5
    # A video watched long before the latest three is never proposed, as at request time:
    # y watched first leaves x alone at the top whatever the decay.
    _, record = fit_recency_decay(sources, [np.array([6, 4, 3, 2])], np.array([5]), (0.7,))
    assert record["validation_ndcg@10"] == {"0.7": {"transition": 1.0}}
    # Without choices (or cases) the sources keep their decay.
    assert fit_recency_decay(sources, history, np.array([6]), ())[0] is sources
    assert fit_recency_decay(sources, [], np.array([], np.int64), (0.7,))[0] is sources


def test_ties_with_the_target_count_against_it_when_the_decay_is_fitted():
    # Watched b, then a, at decay 1: x (after a) and y (after b) both score 1, and the tie
    # puts the target y second.
    sources = decay_sources()
    _, record = fit_recency_decay(sources, [np.array([3, 2])], np.array([6]), (1.0,))
    assert record["validation_ndcg@10"] == {"1.0": {"transition": round(1 / np.log2(3), 5)}}


def test_config_names_the_field_to_fix():
    with pytest.raises(ConfigError, match=r"candidates.sources: unknown \['episodes'\]"):
        CandidatesConfig(sources=("episodes",))
    with pytest.raises(ConfigError, match=r"candidates\.recency_decay: must be in"):
        CandidatesConfig(recency_decay=0.0)
    with pytest.raises(ConfigError, match=r"candidates\.recency_decay_choices: .*got \[1\.5\]"):
        CandidatesConfig(recency_decay_choices=(0.5, 1.5))


def test_one_request_reads_the_same_counts_as_a_batch():
    rng = np.random.default_rng(0)
    g = ItemGraph.from_pairs(rng.integers(2, 300, 5_000), rng.integers(2, 300, 5_000), 300, 20)
    sources = rng.integers(0, 310, (1, 5))  # padding, OOV and rows past the graph included
    targets = rng.integers(0, 310, (1, 40))
    one = g.counts_between(sources, targets)  # a request: each row's own edges
    batch = g.counts_between(np.repeat(sources, 8, 0), np.repeat(targets, 8, 0))  # all edges
    np.testing.assert_array_equal(one[0], batch[0])
    assert one.sum() > 0


def test_one_request_gets_the_same_proposals_as_a_batch():
    rng = np.random.default_rng(1)
    g = ItemGraph.from_pairs(rng.integers(2, 300, 5_000), rng.integers(2, 300, 5_000), 300, 20)
    sources = np.concatenate([rng.integers(2, 300, (1, 4)), [[0]]], axis=1)
    exclude = rng.integers(2, 300, (1, 30))
    weights = 0.5 ** np.arange(5)
    one = g.top(sources, weights, 25, exclude)
    batch = g.top(np.repeat(sources, 3, 0), weights, 25, np.repeat(exclude, 3, 0))
    np.testing.assert_array_equal(one[0][0], batch[0][0])
    np.testing.assert_allclose(one[1][0], batch[1][0], rtol=1e-6)
    assert (one[0] > 0).all()
