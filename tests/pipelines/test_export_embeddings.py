"""`vidrec export-embeddings` on the shared tiny bundle: the file `benchmarks/ann.py --embeddings`
reads, round-tripped against the bundle's own arrays and the build's held-out queries."""

from __future__ import annotations

import numpy as np
import pytest

from core.bundle import BundleStore
from core.errors import BundleError, DataError
from pipelines import artifacts
from pipelines.jobs.export_embeddings import export_embeddings
from pipelines.jobs.index_queries import held_out_queries


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_cli_writes_what_the_ann_benchmark_reads(shared_bundle, tmp_path, capsys):
    from pipelines.cli import main

    directory, bundle_id = shared_bundle
    out = tmp_path / "tiny.npz"
    code = main(
        ["-q", "export-embeddings", "--artifacts", str(directory / "artifacts"),
         "--bundle", bundle_id, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.npz"]  # no temporary file left

    bundle_dir = directory / "artifacts" / "bundles" / bundle_id
    source = artifacts.load_retrieval(bundle_dir)
    config = artifacts.read_config(bundle_dir).index
    with np.load(out) as npz:
        assert sorted(npz.files) == ["embeddings", "ids", "queries", "tuning_queries"]
        saved = {name: npz[name] for name in npz.files}
    np.testing.assert_array_equal(saved["ids"], source.video_ids)
    assert saved["ids"].dtype == np.int64
    np.testing.assert_allclose(saved["embeddings"], _unit(source.video_embeddings), atol=1e-6)

    # The same two sets build-index tunes and verifies on (one-watch histories without data).
    rows = np.zeros((2 + len(source.video_ids), source.encoders.dim), dtype=np.float32)
    rows[2:] = source.video_embeddings
    expected = held_out_queries(source.encoders, rows, source.video_ids, config)
    assert expected.source == "one_watch_histories"
    np.testing.assert_allclose(saved["tuning_queries"], _unit(expected.tuning), atol=1e-6)
    np.testing.assert_allclose(saved["queries"], _unit(expected.verification), atol=1e-6)
    n_videos = len(source.video_ids)
    assert len(saved["tuning_queries"]) + len(saved["queries"]) == min(
        n_videos, 2 * config.tuning_queries
    )
    # Disjoint: no query of one set is a query of the other.
    gap = np.abs(saved["tuning_queries"][:, None, :] - saved["queries"][None, :, :]).sum(axis=2)
    assert gap.min() > 0

    # The benchmark's own reader accepts it as is.
    from benchmarks.ann import load_trained  # a namespace package under the repository root

    loaded = load_trained(out, None, None)
    assert loaded["embeddings"].shape == saved["embeddings"].shape


def test_with_data_the_queries_are_users_recent_histories(shared_bundle, tmp_path):
    from pipelines.data.datasets import load_dataset

    directory, bundle_id = shared_bundle
    store = BundleStore(directory / "artifacts")
    dataset = load_dataset(directory / "data")
    first = export_embeddings(store, bundle_id, tmp_path / "a.npz", dataset=dataset)
    second = export_embeddings(store, bundle_id, tmp_path / "b.npz", dataset=dataset)
    assert first.query_source == "user_histories"
    with np.load(first.path) as a, np.load(second.path) as b:  # reproducible: fixed seed
        for name in ("tuning_queries", "queries"):
            np.testing.assert_array_equal(a[name], b[name])
        assert len(a["tuning_queries"]) == first.tuning_queries > 0


def test_unknown_bundle_and_unwritable_out_are_refused(shared_bundle, tmp_path):
    from pipelines.cli import main

    directory, _ = shared_bundle
    store = BundleStore(directory / "artifacts")
    with pytest.raises(BundleError, match=r"no bundle 20990101T000000Z-abcdef in .*latest"):
        export_embeddings(store, "20990101T000000Z-abcdef", tmp_path / "x.npz")
    with pytest.raises(BundleError, match="is not a bundle id"):
        export_embeddings(store, "latest", tmp_path / "x.npz")
    _, bundle_id = shared_bundle
    with pytest.raises(DataError, match=r"directory .*missing does not exist; create it first"):
        export_embeddings(store, bundle_id, tmp_path / "missing" / "x.npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        export_embeddings(store, bundle_id, tmp_path / "dir.npz")
    with pytest.raises(DataError, match=r"must end in \.npz"):
        export_embeddings(store, bundle_id, tmp_path / "x.npy")
    code = main(
        ["-q", "export-embeddings", "--artifacts", str(directory / "artifacts"),
         "--bundle", bundle_id, "--out", str(tmp_path / "missing" / "x.npz")]
    )  # fmt: skip
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npz"]  # nothing written
