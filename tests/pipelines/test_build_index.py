"""The index in bundles: `vidrec train` and `build-index` write it, `load_bundle` checks it."""

import json
import mmap
import shutil

import numpy as np
import pandas as pd
import pytest

from core.bundle import MANIFEST, BundleStore, read_manifest, verify_bundle
from core.config import IndexConfig
from core.errors import BundleError
from core.io import atomic_write_json, sha256_file
from core.schema import Dataset
from index import VideoIndex
from pipelines.artifacts import load_bundle
from pipelines.cli.main import main
from pipelines.data.datasets import read_dataset, write_dataset
from pipelines.jobs.build_index import build_index_job

NEW_VIDEO_ID = 987_654_321


@pytest.fixture()
def workspace(cli_workspace):
    """A synthetic platform of 200 videos and a trained, published bundle."""
    return cli_workspace


def _store(workspace):
    return BundleStore(workspace / "artifacts")


def _copy_bundle(store, bundle_id, tmp_path):
    """A private copy of a bundle (files copied, never hard-linked) to tamper with."""
    return shutil.copytree(store.path(bundle_id), tmp_path / bundle_id)


def _mapped(array):
    """Whether ``array`` is a view of a file mapping."""
    while array is not None and not isinstance(array, mmap.mmap):
        array = getattr(array, "base", None)
    return array is not None


def _remanifest(bundle_dir):
    """Re-checksums every file, as if the tampered bundle had been written that way."""
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest["files"] = {
        p.relative_to(bundle_dir).as_posix(): sha256_file(p)
        for p in sorted(bundle_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    atomic_write_json(bundle_dir / MANIFEST, manifest)


def test_train_publishes_a_bundle_with_a_loadable_index(workspace):
    store = _store(workspace)
    bundle = load_bundle(store.path(store.current_id()))
    catalogue = bundle.retrieval.video_ids
    assert len(catalogue) == 200
    assert bundle.index.kind == "flat" and bundle.index.dim == 16
    assert np.array_equal(np.sort(bundle.index.ids()), np.sort(catalogue))
    assert {
        "index/videos.faiss",
        "index/index_ids.npy",
        "index/index_report.json",
        "index/index_meta.json",
        "reports/index_build.json",
    } <= set(bundle.manifest.files)
    report = bundle.manifest.metrics["index"]
    assert report["query_source"] == "validation_histories"
    assert report["verification"]["at_k"] == 1.0  # exact index
    assert report["verification"]["queries"] > 0 and report["tuning"]["queries"] > 0
    assert bundle.manifest.counts["indexed_videos"] == 200

    retrieval = bundle.retrieval
    history = catalogue[:5]
    query = retrieval.encoders.query_embeddings(retrieval.catalogue_rows(), [history])
    _, ids = bundle.index.search(query, 10, exclude=[history])
    assert ids.shape == (1, 10)
    assert set(ids[0].tolist()) <= set(catalogue.tolist()) - set(history.tolist())
    assert bundle.ranker is not None


def test_build_index_without_data_publishes_a_child_bundle(workspace, capsys):
    store = _store(workspace)
    parent = store.current_id()
    assert main(["build-index", "--artifacts", str(store.root)]) == 0
    child = store.current_id()
    assert child != parent and child in capsys.readouterr().out
    manifest = verify_bundle(store.path(child))
    source = read_manifest(store.path(parent))
    assert manifest.parent == parent
    assert manifest.metrics["index"]["query_source"] == "one_watch_histories"
    assert manifest.metrics["validation"] == source.metrics["validation"]
    assert manifest.data == source.data
    # Everything but the index, its report and its TensorBoard run is carried over unchanged
    # (an event file is named after the time and process that wrote it).
    index_run = "reports/tensorboard/index/"

    def rebuilt(files):
        return {n for n in files if n.startswith(("index/", index_run))} | {
            "reports/index_build.json"
        }

    assert set(manifest.files) - rebuilt(manifest.files) == set(source.files) - rebuilt(
        source.files
    )
    assert [n for n in manifest.files if n.startswith(index_run)] != []
    rebuilt = rebuilt(manifest.files) | rebuilt(source.files)
    assert {n: d for n, d in manifest.files.items() if n not in rebuilt} == {
        n: d for n, d in source.files.items() if n not in rebuilt
    }
    assert load_bundle(store.path(child), ranker=False).index.count == 200


def test_build_index_adds_new_uploads_and_publishes_only_when_asked(workspace):
    store = _store(workspace)
    dataset = read_dataset(workspace / "data")
    upload = dataset.videos.iloc[[0]].copy()
    upload["video_id"] = NEW_VIDEO_ID
    upload["title"] = "Brand new upload about volcanoes"
    videos = pd.concat([dataset.videos, upload], ignore_index=True)
    grown = Dataset(dataset.name, dataset.interactions, videos, dataset.users)
    write_dataset(grown, workspace / "grown")
    current = store.current_id()

    args = ["build-index", "--artifacts", str(store.root), "--data", str(workspace / "grown")]
    assert main([*args, "--no-publish"]) == 0
    assert store.current_id() == current  # --no-publish leaves the serving bundle
    new_id = store.bundle_ids()[-1]
    bundle = load_bundle(store.path(new_id), ranker=False)
    assert bundle.manifest.parent == current
    assert bundle.manifest.counts["videos"] == 201
    assert bundle.manifest.data["catalogue"] == {
        "name": dataset.name,
        "videos": 201,
        "added_videos": 1,
    }
    assert bundle.manifest.metrics["index"]["query_source"] == "user_histories"
    assert bundle.retrieval.video_ids[-1] == NEW_VIDEO_ID
    own = bundle.retrieval.video_embeddings[-1:]
    _, ids = bundle.index.search(own, 1)
    assert ids.tolist() == [[NEW_VIDEO_ID]]
    # The inspector's titles and the projector's metadata know the upload.
    titles = pd.read_parquet(store.path(new_id) / "serving" / "videos.parquet")
    assert len(titles) == 201
    assert titles.loc[titles["video_id"] == NEW_VIDEO_ID, "title"].tolist() == [
        "Brand new upload about volcanoes"
    ]
    metadata = (store.path(new_id) / "reports/tensorboard/projector/metadata.tsv").read_text()
    assert f"{NEW_VIDEO_ID}\tBrand new upload about volcanoes\t" in metadata
    # The old videos keep their rows and (same towers, same metadata) their embeddings, up to
    # float rounding (TensorFlow's kernels block a batch of another size differently).
    parent = load_bundle(store.path(current), ranker=False)
    assert np.array_equal(bundle.retrieval.video_ids[:200], parent.retrieval.video_ids)
    np.testing.assert_allclose(
        bundle.retrieval.video_embeddings[:200], parent.retrieval.video_embeddings, atol=1e-6
    )


def test_build_that_cannot_reach_the_recall_target_fails_and_writes_nothing(
    workspace, tmp_path, capsys
):
    store = _store(workspace)
    before = (store.current_id(), store.bundle_ids())
    impossible = {
        "index": {
            "kind": "ivf_hnsw_pq",
            "ivf_nlist": 16,
            "ivf_nprobe": [1],
            "refine": "none",
            "recall_k": 20,
            "target_recall": 0.99,
        }
    }
    config = tmp_path / "impossible.json"
    config.write_text(json.dumps(impossible))
    assert main(["build-index", "--artifacts", str(store.root), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "vidrec build-index: error: ivf_hnsw_pq index" in err
    assert "cannot reach recall@20 >= 0.99 (index.target_recall" in err
    assert (store.current_id(), store.bundle_ids()) == before
    assert list(store.bundles_dir.glob(".tmp-*")) == []


def test_a_bundle_stores_padded_embedding_rows_and_one_from_before_them_still_loads(
    workspace, tmp_path
):
    store = _store(workspace)
    current = load_bundle(store.path(store.current_id())).retrieval
    rows = current.catalogue_rows()
    # Mapped from the bundle as the request path indexes it: zero padding and OOV rows.
    assert _mapped(rows) and not rows.flags.writeable
    assert rows.shape == (202, 16) and not rows[:2].any()
    np.testing.assert_array_equal(current.video_embeddings, rows[2:])
    # A bundle written before: the videos' rows alone, in retrieval/video_embeddings.npy.
    older = _copy_bundle(store, store.current_id(), tmp_path)
    np.save(older / "retrieval" / "video_embeddings.npy", np.asarray(rows[2:]))
    (older / "retrieval" / "video_embedding_rows.npy").unlink()
    _remanifest(older)
    loaded = load_bundle(older).retrieval
    np.testing.assert_array_equal(loaded.catalogue_rows(), rows)
    assert not loaded.catalogue_rows().flags.writeable
    # build-index on the older bundle writes the padded rows.
    result = build_index_job(store, bundle=str(older), publish=False)
    rebuilt = result.bundle_dir / "retrieval"
    assert (rebuilt / "video_embedding_rows.npy").exists()
    assert not (rebuilt / "video_embeddings.npy").exists()


def test_loader_refuses_an_index_of_another_dimension(workspace, tmp_path):
    store = _store(workspace)
    bundle_dir = _copy_bundle(store, store.current_id(), tmp_path)
    ids = np.load(bundle_dir / "retrieval" / "video_ids.npy")
    vectors = np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32)
    shutil.rmtree(bundle_dir / "index")
    VideoIndex.build(vectors, ids, IndexConfig(), tune=False).save(bundle_dir / "index")
    _remanifest(bundle_dir)
    verify_bundle(bundle_dir)  # every checksum holds: only the dimensions disagree
    with pytest.raises(BundleError, match="index dimension 8 does not match expected dimension 16"):
        load_bundle(bundle_dir)


def test_loader_refuses_an_index_missing_a_catalogue_video(workspace, tmp_path):
    store = _store(workspace)
    bundle_dir = _copy_bundle(store, store.current_id(), tmp_path)
    ids = np.load(bundle_dir / "retrieval" / "video_ids.npy")
    vectors = np.load(bundle_dir / "retrieval" / "video_embedding_rows.npy")[2:]
    shutil.rmtree(bundle_dir / "index")
    VideoIndex.build(vectors[1:], ids[1:], IndexConfig(), tune=False).save(bundle_dir / "index")
    _remanifest(bundle_dir)
    with pytest.raises(
        BundleError,
        match=rf"does not hold exactly the catalogue's videos \(199 indexed, 200 in the "
        rf"catalogue; 1 missing, e\.g\. \[{ids[0]}\]; 0 not in the catalogue",
    ):
        load_bundle(bundle_dir)


def test_loader_refuses_a_corrupted_index_file(workspace, tmp_path):
    store = _store(workspace)
    bundle_dir = _copy_bundle(store, store.current_id(), tmp_path)
    path = bundle_dir / "index" / "videos.faiss"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"index/videos\.faiss does not match its checksum"):
        load_bundle(bundle_dir)
    # Even with a manifest re-written over the damage, the index's own checksums refuse it.
    _remanifest(bundle_dir)
    with pytest.raises(BundleError, match=r"videos\.faiss: checksum mismatch"):
        load_bundle(bundle_dir)
