"""TensorBoard event files of a bundle, read back with TensorBoard's own reader and compared with
the figures the jobs record (training histories, the index summary, the gate record)."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from core.config import VidrecConfig, config_from_dict
from core.training import EpochRecord, TrainingHistory
from pipelines import tensorboard
from tests.tiny import SHARED_SECTIONS


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` of a run's scalars (text summaries left out)."""
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    # TF2's tf.summary.scalar writes tensors, which EventAccumulator keeps under Tensors.
    scalars = {}
    for tag in events.Tags()["tensors"]:
        values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        if values[0][1].dtype != object:  # a text summary holds bytes
            scalars[tag] = [(step, float(value)) for step, value in values]
    return scalars


def _f32(pairs) -> list[tuple[int, float]]:
    """The values as TensorBoard stores scalars (float32), exactly."""
    return [(int(step), float(np.float32(value))) for step, value in pairs]


def test_train_writes_both_stages_the_index_and_the_projector(shared_bundle):
    directory, bundle_id = shared_bundle
    bundle = directory / "artifacts" / "bundles" / bundle_id
    logdir = bundle / tensorboard.TENSORBOARD_DIR
    config = config_from_dict(VidrecConfig, SHARED_SECTIONS)
    for stage, section in (("retrieval", config.retrieval), ("ranking", config.ranking)):
        history = json.loads((bundle / "reports" / f"{stage}_training.json").read_text())
        scalars = _scalars(logdir / stage)
        epochs = history["epochs"]
        assert scalars["loss"] == _f32((e["epoch"], e["loss"]) for e in epochs)
        for name in epochs[0]["validation"]:
            assert scalars[f"validation/{name}"] == _f32(
                (e["epoch"], e["validation"][name]) for e in epochs
            )
        assert scalars["learning_rate"] == _f32((e["epoch"], section.learning_rate) for e in epochs)
        elapsed = np.cumsum([e["seconds"] for e in epochs])
        assert scalars["seconds_elapsed"] == _f32(
            zip(range(1, len(epochs) + 1), elapsed, strict=True)
        )
        assert ("budget_used" in scalars) == (section.max_train_seconds > 0)

    manifest = json.loads((bundle / "manifest.json").read_text())
    index = _scalars(logdir / "index")
    report = json.loads((bundle / "reports" / "index_build.json").read_text())
    trials = report["index_report"]["tuning"]["trials"]
    assert index["tuning/recall_at_k"] == _f32((i, t["recall"]) for i, t in enumerate(trials))
    summary = manifest["metrics"]["index"]
    assert index["verified/recall_at_k"] == _f32([(0, summary["verification"]["at_k"])])
    assert index["verified/latency_ms_p50"] == _f32([(0, summary["latency_ms"]["p50"])])

    projector = logdir / tensorboard.PROJECTOR_RUN
    metadata = pd.read_csv(projector / "metadata.tsv", sep="\t", keep_default_na=False)
    titles = pd.read_parquet(bundle / "serving" / "videos.parquet").set_index("video_id")
    assert len(metadata) == manifest["counts"]["videos"] == 200  # under the sample cap
    row = metadata.iloc[0]
    assert row["title"] == titles.at[row["video_id"], "title"]
    assert row["categories"] == ", ".join(titles.at[row["video_id"], "categories"])
    # An event file makes the directory a run, which is where the projector looks.
    assert len(list(projector.glob("events.out.tfevents.*"))) == 1
    config_text = (projector / "projector_config.pbtxt").read_text()
    assert 'metadata_path: "metadata.tsv"' in config_text
    # The checkpoint holds the bundle's embeddings of those very videos, in that order.
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(projector))
    stored = reader.get_tensor(tensorboard._CHECKPOINT_TENSOR)
    embeddings = np.load(bundle / "retrieval" / "video_embedding_rows.npy")[2:]
    ids = np.load(bundle / "retrieval" / "video_ids.npy")
    order = {int(v): i for i, v in enumerate(ids)}
    np.testing.assert_array_equal(stored, embeddings[[order[int(v)] for v in metadata["video_id"]]])


def test_gate_and_training_runs_hold_exactly_what_they_are_given(tmp_path):
    history = TrainingHistory(
        epochs=[
            EpochRecord(1, 2.5, {"recall@20": 0.25}, 10.0),
            EpochRecord(2, 2.0, {"recall@20": 0.375}, 30.0),
        ],
        best_epoch=2,
        stop_reason="max_epochs",
    )
    tensorboard.write_training(tmp_path, "retrieval", history, 0.001, 80.0)
    scalars = _scalars(tmp_path / tensorboard.TENSORBOARD_DIR / "retrieval")
    assert scalars["loss"] == [(1, 2.5), (2, 2.0)]
    assert scalars["validation/recall@20"] == [(1, 0.25), (2, 0.375)]
    assert scalars["seconds_elapsed"] == [(1, 10.0), (2, 40.0)]
    assert scalars["budget_used"] == [(1, 0.125), (2, 0.5)]  # 10 / 80, 40 / 80

    gate = {
        "status": "published",
        "reason": "not worse",
        "new": {"ndcg@10": 0.25, "hr@10": 0.5},
        "serving": {"ndcg@10": 0.125, "hr@10": float("nan")},
    }
    tensorboard.write_gate(tmp_path, gate)
    scalars = _scalars(tmp_path / tensorboard.TENSORBOARD_DIR / "retrain")
    assert scalars == {
        "gate/new/ndcg@10": [(0, 0.25)],
        "gate/new/hr@10": [(0, 0.5)],
        "gate/serving/ndcg@10": [(0, 0.125)],
    }


def test_projector_samples_large_catalogues(tmp_path):
    ids = np.arange(10, 20, dtype=np.int64)
    embeddings = np.eye(10, 4, dtype=np.float32) + ids[:, None]
    videos = pd.DataFrame(
        {"video_id": ids, "title": [f"t\t{i}" for i in ids], "categories": [("a",)] * 10}
    )
    written = tensorboard.write_projector(tmp_path, embeddings, ids, videos, sample=4, seed=1)
    assert written == 4
    projector = tmp_path / tensorboard.TENSORBOARD_DIR / tensorboard.PROJECTOR_RUN
    metadata = pd.read_csv(projector / "metadata.tsv", sep="\t")
    assert len(metadata) == 4 and list(metadata["video_id"]) == sorted(metadata["video_id"])
    assert list(metadata["title"]) == [f"t {i}" for i in metadata["video_id"]]  # tab removed
    import tensorflow as tf

    stored = tf.train.load_checkpoint(str(projector)).get_tensor(tensorboard._CHECKPOINT_TENSOR)
    np.testing.assert_array_equal(stored, embeddings[metadata["video_id"].to_numpy() - 10])


def test_cli_prints_the_tensorboard_line(shared_bundle, tmp_path, capsys):
    from pipelines.cli import main

    directory, bundle_id = shared_bundle
    artifacts = directory / "artifacts"
    # In-process: --print-only never starts TensorBoard, and a subprocess costs a TF import.
    assert (
        main(["tensorboard", "--artifacts", str(artifacts), "--print-only", "--port", "6123"]) == 0
    )
    logdir = (artifacts / "bundles" / bundle_id / "reports" / "tensorboard").resolve()
    executable = Path(sys.executable).with_name("tensorboard")
    assert capsys.readouterr().out.strip() == f"{executable} --logdir {logdir} --port 6123"
    empty = tmp_path / "old-bundle"
    empty.mkdir()
    assert main(["tensorboard", "--bundle", str(empty), "--print-only"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vidrec tensorboard: error: {empty} has no TensorBoard event files "
        "(reports/tensorboard/): it was built before they were written; train, retrain or "
        "build-index writes them"
    )


def test_demo_says_how_to_serve_inspect_and_open_tensorboard(shared_bundle, tmp_path):
    from core.bundle import BundleStore
    from core.config import ServingConfig
    from pipelines.jobs.demo import next_steps

    directory, bundle_id = shared_bundle
    store = BundleStore(directory / "artifacts")
    bundle_dir = store.path(bundle_id)
    text = next_steps(tmp_path, store, bundle_dir, ServingConfig(port=8123), user_id=7)
    bin_dir = Path(sys.executable).parent
    logdir = (bundle_dir / "reports" / "tensorboard").resolve()
    assert text.splitlines() == [
        "next: serve the bundle and look inside it",
        f"      {bin_dir}/vidrec serve --artifacts {store.root} --events {tmp_path}/events.db "
        "--port 8123",
        "      inspector: http://127.0.0.1:8123/ui (try user 7; the Bundle tab has the metrics "
        "and training curves)",
        f"      TensorBoard: {bin_dir}/tensorboard --logdir {logdir} --port 6006",
        "      (then http://localhost:6006/)",
    ]
