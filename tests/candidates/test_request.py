"""The candidate sources at one request's shapes (`candidates.request`) give exactly what the
batched functions give for a list of one: the merge, the proposals and the evidence."""

import numpy as np
import pytest

from candidates import ORIGINS, CandidateSources, ItemGraph, merge_candidates
from candidates.request import RequestSources, merge_one_list
from core.config import CandidatesConfig


def assert_same_merge(index_rows, proposals, num_slots, source_slots):
    batched = merge_candidates(
        np.asarray(index_rows)[None],
        {name: (np.asarray(rows)[None], None) for name, (rows, _) in proposals.items()},
        num_slots,
        source_slots,
    )
    one = merge_one_list(np.asarray(index_rows), proposals, num_slots, source_slots)
    valid = batched.valid[0]
    np.testing.assert_array_equal(one.rows, batched.rows[0][valid])
    np.testing.assert_array_equal(one.origins, batched.origins[0][valid])
    np.testing.assert_array_equal(one.retrieval_rank, batched.retrieval_rank[0][valid])
    assert one.rows.dtype == np.int64 and one.retrieval_rank.dtype == np.int64
    return one


def test_one_list_merge_by_hand():
    one = assert_same_merge(
        [10, 11, 12, 13, 0],
        {"transition": ([11, 20, 0], None), "covisit": ([21, 20, 22], None)},
        num_slots=5,
        source_slots=2,
    )
    # Head 10, 11, 12; the sources add 21 and 20 (11 is in already, 22 would be a third).
    assert one.rows.tolist() == [10, 11, 12, 21, 20]
    assert one.retrieval_rank.tolist() == [0, 1, 2, -1, -1]
    transition, covisit = ORIGINS.index("transition"), ORIGINS.index("covisit")
    assert one.origins[:, 0].tolist() == [True, True, True, False, False]
    assert one.origins[:, transition].tolist() == [False, True, False, False, True]
    assert one.origins[:, covisit].tolist() == [False, False, False, True, True]


@pytest.mark.parametrize(
    ("index_rows", "proposals", "num_slots", "source_slots"),
    [
        # The index fills what the sources leave; a source repeats an index video.
        ([7, 0, 0, 0], {"transition": ([8, 7], None)}, 4, 2),
        # A video of the index's tail that a source brings first: its index rank is kept.
        ([10, 11, 12, 13, 14], {"covisit": ([14, 30], None)}, 4, 2),
        # No sources, an index shorter than the slots, then an empty index.
        ([5, 6, 0], {}, 4, 1),
        ([0, 0], {"creator": ([0, 0], None)}, 3, 1),
        # Sources only (no head), all three sources, one list full of repeats.
        (
            [3, 4],
            {
                "transition": ([9, 9, 4, 0], None),
                "covisit": ([4, 8, 9, 7], None),
                "creator": ([8, 0, 0, 0], None),
            },
            3,
            3,
        ),
        # More source slots than slots, more index than slots.
        ([2, 3, 4, 5, 6, 7], {"covisit": ([7, 6, 20], None)}, 4, 9),
    ],
)
def test_one_list_merge_equals_the_batched_merge(index_rows, proposals, num_slots, source_slots):
    assert_same_merge(index_rows, proposals, num_slots, source_slots)


def test_one_list_merge_equals_the_batched_merge_at_request_size():
    rng = np.random.default_rng(0)
    for trial in range(20):
        index_rows = rng.choice(np.arange(2, 2_000), 300, replace=False)
        index_rows[rng.random(300) < 0.02 * (trial % 3)] = 0
        proposals = {}
        for name in ("transition", "covisit", "creator")[: 1 + trial % 3]:
            rows = np.concatenate([rng.choice(index_rows, 30), rng.integers(2, 2_000, 70)])
            rows[rng.random(100) < 0.2] = 0
            proposals[name] = (rows, None)
        one = assert_same_merge(index_rows, proposals, 300, 100)
        assert len(one.rows) > 200


def sources_of(num_rows, seed):
    """Random graphs over ``num_rows`` rows, popularity and upload times (some unknown)."""
    rng = np.random.default_rng(seed)
    graphs = {
        name: ItemGraph.from_pairs(
            rng.integers(2, num_rows, 4_000), rng.integers(2, num_rows, 4_000), num_rows, 20
        )
        for name in ("transition", "covisit", "creator")
    }
    popularity = rng.integers(0, 50, num_rows).astype(np.float32)
    upload_time = rng.uniform(0, 1e6, num_rows)
    upload_time[rng.random(num_rows) < 0.2] = np.nan
    return CandidateSources(CandidatesConfig(per_source=30), graphs, popularity, upload_time, 0.5)


def test_one_request_proposes_and_describes_as_the_batch_does():
    num_rows = 300
    sources = sources_of(num_rows, 1)
    request = RequestSources(sources)
    rng = np.random.default_rng(2)
    for _ in range(10):
        history = np.concatenate([[0, 1], rng.integers(2, num_rows, 8), [0]])
        np.testing.assert_array_equal(request.recent(history), sources.recent(history[None])[0])
        recent = request.recent(history)
        excluded = np.unique(np.concatenate([history, rng.integers(2, num_rows, 20)]))
        proposals = request.propose(recent, excluded)
        batched = sources.propose(recent[None], excluded[None])
        for name in batched:
            np.testing.assert_array_equal(proposals[name][0], batched[name][0][0])
            np.testing.assert_array_equal(proposals[name][1], batched[name][1][0])
        # Index rows past the sources' rows stand for uploads after the bundle was built.
        index_rows = rng.choice(np.arange(2, num_rows + 20), 60, replace=False)
        merged = merge_one_list(index_rows, proposals, 80, 30)
        scores = rng.normal(size=len(merged.rows)).astype(np.float32)
        now = 1.2e6
        one = request.evidence(recent, merged, scores, now)
        for name, graph in sources.graphs.items():
            # The watch each candidate follows most strongly, from the batched counts.
            pull = graph.counts_between(recent[None], merged.rows[None])[0]
            pull /= np.maximum(graph.row_totals(recent), 1.0)[:, None]
            expected = np.where(pull.max(axis=0) > 0, recent[np.argmax(pull, axis=0)], -1)
            followed = request.followed_watches(name, recent, merged.rows)
            np.testing.assert_array_equal(followed, expected)
            assert (followed >= 0).any()
        batch = sources.evidence(
            recent[None],
            merged.rows[None],
            scores[None],
            merged.retrieval_rank[None],
            merged.origins[None],
            np.array([now]),
        )[0]
        assert one.dtype == np.float32
        np.testing.assert_array_equal(one, batch)
        assert (one[:, 2:7] > 0).any()


def test_counts_of_one_list_read_only_the_given_rows_edges():
    # 2->3 twice, 2->4, 2->5, 3->4; two neighbours kept per row (2->5 is pruned).
    graph = ItemGraph.from_pairs(np.array([2, 2, 2, 3, 2]), np.array([3, 4, 3, 4, 5]), 6, 2)
    counts = graph.counts_of_one(np.array([3, 2, 0, 2, 9]), np.array([4, 3, 5, 7, 0]))
    np.testing.assert_array_equal(
        counts,
        [[1, 0, 0, 0, 0], [1, 2, 0, 0, 0], [0, 0, 0, 0, 0], [1, 2, 0, 0, 0], [0, 0, 0, 0, 0]],
    )
    assert counts.dtype == np.float32


def test_followed_watch_is_the_strongest_edge_and_the_newest_on_ties():
    # 2->5 once of 2 (0.5), 3->5 twice of 4 (0.5), 4->5 once of 1 (1.0), 3->6 twice of 4.
    pairs = [(2, 5), (2, 7), (3, 5), (3, 5), (3, 6), (3, 6), (4, 5)]
    graph = ItemGraph.from_pairs(
        np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]), 9, 5
    )
    config = CandidatesConfig(sources=("covisit",), recent_watches=3)
    sources = CandidateSources(
        config, {"covisit": graph}, np.zeros(9, np.float32), np.full(9, np.nan), 0.5
    )
    request = RequestSources(sources)
    rows = np.array([5, 6, 8, 12])  # 8: no edge; 12: an upload past the graph
    # Newest first: 3 then 2 tie on 5 (0.5 each): the newer, 3.
    np.testing.assert_array_equal(
        request.followed_watches("covisit", np.array([3, 2, 0]), rows), [3, 3, -1, -1]
    )
    # With 4 among the watches, its 1.0 wins wherever it is.
    np.testing.assert_array_equal(
        request.followed_watches("covisit", np.array([2, 3, 4]), rows), [4, 3, -1, -1]
    )
