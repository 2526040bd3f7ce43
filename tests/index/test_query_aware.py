"""Query-aware HNSW coordinates: exact scores, the automatic choice, and the save/load trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from core.config import IndexConfig
from core.errors import ConfigError, DataError
from index import META_FILE, VideoIndex, exact_search, recall_at_k
from index.query_aware import QueryAwareTransform
from tests.index.conftest import DIM, clustered_embeddings, config_for


def cone_queries(n: int, seed: int) -> np.ndarray:
    """``[n, DIM]`` unit queries crowded around one direction, like a trained user tower's."""
    rng = np.random.default_rng(seed)
    axis = np.zeros(DIM, dtype=np.float32)
    axis[-1] = 1.0  # the clustered catalogue has almost no spread along its last axes
    q = 2.5 * axis + rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def catalogue() -> dict[str, np.ndarray]:
    x = clustered_embeddings(6_000, seed=3)
    return {
        "embeddings": x,
        "ids": np.arange(len(x), dtype=np.int64) * 3 + 11,
        "tuning": cone_queries(300, seed=1),
        "held_out": cone_queries(200, seed=2),
    }


def test_transform_keeps_every_inner_product_and_equalises_norms():
    rng = np.random.default_rng(0)
    queries = cone_queries(500, seed=5)
    transform = QueryAwareTransform.fit(queries, shrinkage=0.1)
    x = rng.standard_normal((50, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = cone_queries(7, seed=6)
    stored, searched = transform.items(x), transform.queries(q)
    assert stored.shape == (50, DIM + 1) and searched.shape == (7, DIM + 1)
    np.testing.assert_allclose(searched @ stored.T, q @ x.T, atol=2e-5)
    np.testing.assert_allclose(
        np.linalg.norm(stored, axis=1), np.sqrt(transform.radius2), rtol=1e-4
    )
    np.testing.assert_allclose(transform.restore_items(stored), x, atol=2e-5)
    again = QueryAwareTransform.from_dict(json.loads(json.dumps(transform.to_dict())))
    assert np.array_equal(again.item_map, transform.item_map)
    assert again.radius2 == transform.radius2 and again.digest() == transform.digest()


def test_too_few_queries_or_bad_shrinkage_are_refused():
    with pytest.raises(DataError, match=r"at least as many queries as dimensions.*query_aware"):
        QueryAwareTransform.fit(cone_queries(10, seed=0), shrinkage=0.1)
    with pytest.raises(DataError, match=r"shrinkage must be > 0"):
        QueryAwareTransform.fit(cone_queries(100, seed=0), shrinkage=0.0)
    with pytest.raises(ConfigError, match=r"index\.query_aware_shrinkage"):
        IndexConfig(query_aware_shrinkage=0.0)


def test_queries_apart_from_the_videos_get_the_query_aware_graph(catalogue, tmp_path: Path):
    cfg = config_for("hnsw")
    index = VideoIndex.build(
        catalogue["embeddings"], catalogue["ids"], cfg, tuning_queries=catalogue["tuning"]
    )
    assert index.query_aware and index.report["query_aware"]
    q = catalogue["held_out"]
    truth_scores, truth = exact_search(q, [(catalogue["embeddings"], catalogue["ids"])], 100)
    scores, found = index.search(q, 100)
    assert recall_at_k(found, truth, 100) >= 0.95
    # Scores are the model's inner products, not distances in the transformed space.
    by_id = dict(zip(catalogue["ids"].tolist(), range(len(catalogue["ids"])), strict=True))
    rows = np.vectorize(by_id.__getitem__)(found)
    expected = np.einsum("qd,qkd->qk", q, catalogue["embeddings"][rows])
    np.testing.assert_allclose(scores, expected, atol=2e-5)
    np.testing.assert_allclose(scores[:, 0], truth_scores[:, 0], atol=2e-5)

    index.save(tmp_path / "index")
    assert json.loads((tmp_path / "index" / META_FILE).read_text())["query_transform"]
    loaded = VideoIndex.load(tmp_path / "index", expected_dim=DIM)
    assert loaded.query_aware
    again_scores, again = loaded.search(q, 100)
    assert np.array_equal(again, found) and np.array_equal(again_scores, scores)
    # Re-tuning reads the stored vectors back out of the query-fitted coordinates.
    assert loaded.tune(catalogue["tuning"])["recall"]["at_k"] >= 0.95

    # Uploads go through the same coordinates; a removed video never comes back.
    new = cone_queries(1, seed=9)  # a video right where the queries look
    loaded.add(new, [999_999])
    assert loaded.search(q[:1], 1)[1][0, 0] == 999_999
    loaded.remove([999_999])
    assert 999_999 not in loaded.search(q, 100)[1]


def test_queries_like_the_videos_keep_the_raw_graph(data):
    index = VideoIndex.build(
        data["embeddings"][:3_000],
        data["ids"][:3_000],
        config_for("hnsw"),
        tuning_queries=data["queries"],
    )
    assert not index.query_aware
    off = dataclasses.replace(config_for("hnsw"), query_aware=False)
    forced_off = VideoIndex.build(
        data["embeddings"][:3_000], data["ids"][:3_000], off, tuning_queries=cone_queries(300, 1)
    )
    assert not forced_off.query_aware
