"""The nightly retrain on a small synthetic platform: warm start, gate, idempotence, uploads."""

import shutil

import numpy as np
import pandas as pd
import pytest

from core.bundle import BundleStore, read_manifest
from core.errors import DataError, LockHeldError
from core.lock import JobLock
from core.schema import Dataset
from pipelines.data.synthetic import SPAN_START
from pipelines.jobs.retrain import GATED_OUT, PUBLISHED, retrain_job
from pipelines.serving.events import EventStore, FeedbackEvent
from tests.tiny import SHARED_SPLIT_AT, shared_platform, tiny_config

DAY = 86_400


@pytest.fixture(scope="module")
def world(shared_bundle, tmp_path_factory):
    """Day 0-6 is the base data (bundle A, the session's shared bundle); days 7-9 arrive as
    events in the store."""
    shared, first = shared_bundle
    root = tmp_path_factory.mktemp("retrain")
    base, everything = shared_platform()
    config = tiny_config(retrain={"min_window_users": 5})
    shutil.copytree(shared / "artifacts", root / "artifacts")
    store = BundleStore(root / "artifacts")
    assert store.current_id() == first
    events = EventStore(root / "events.db")
    late = everything.interactions.loc[everything.interactions["timestamp"] >= SHARED_SPLIT_AT]
    assert SHARED_SPLIT_AT == SPAN_START + 7 * DAY  # the cutoffs below count from it
    events.append(
        [
            FeedbackEvent(
                int(r.user_id), int(r.video_id), int(r.timestamp), "watch", float(r.watch_seconds)
            )
            for r in late.itertuples()
        ]
    )
    return root, base, config, store, events, first


def test_retrain_publishes_a_warm_started_bundle_and_rerun_is_idempotent(world):
    _, base, _config, store, events, first = world
    cutoff = SPAN_START + 8 * DAY
    result = retrain_job(base, events, store, tolerant(), cutoff)
    assert result.status == PUBLISHED, result.reason
    assert store.current_id() == result.bundle_id != first
    manifest = read_manifest(store.path(result.bundle_id))
    assert manifest.parent == first
    assert manifest.data["cutoff"] == cutoff and manifest.data["split"] == "time_cut"
    assert manifest.data["sources"]["stored_events"] > 0  # day 7 came from the store
    assert manifest.data["events_until_id"] == events.last_id()
    gate = manifest.metrics["gate"]
    assert gate["serving_bundle"] == first and set(gate["new"]) >= {"ndcg@10", "hr@10"}
    report = (store.path(result.bundle_id) / "reports" / "retrain.md").read_text()
    assert "| ndcg@10 |" in report and "published" in report
    assert (store.path(result.bundle_id) / "reports" / "retrain.png").is_file()
    # Same cutoff, same data: nothing is trained again.
    again = retrain_job(base, events, store, tolerant(), cutoff)
    assert again.reused and again.bundle_id == result.bundle_id
    assert store.bundle_ids().count(result.bundle_id) == 1


def test_a_model_trained_on_shuffled_labels_is_gated_out(world, tmp_path):
    _, base, _config, store, events, _ = world
    serving_before = store.current_id()
    # Everything before the window has its videos shuffled among events; the window (day 8)
    # stays real, so the gate compares the two pipelines on real behaviour.
    stored = events.interactions()[base.interactions.columns]
    everything = pd.concat([base.interactions, stored], ignore_index=True)
    everything = everything.loc[everything["timestamp"] < SPAN_START + 9 * DAY]
    before_window = (everything["timestamp"] < SPAN_START + 8 * DAY).to_numpy()
    videos = everything["video_id"].to_numpy().copy()
    videos[before_window] = np.random.default_rng(0).permutation(videos[before_window])
    shuffled = everything.assign(video_id=videos).drop_duplicates(
        ["user_id", "video_id", "timestamp"]
    )
    broken = Dataset("synthetic", shuffled, base.videos, base.users)
    cold = tiny_config(retrain={"min_window_users": 5, "warm_start": False})
    result = retrain_job(
        broken, EventStore(tmp_path / "empty.db"), store, cold, SPAN_START + 9 * DAY
    )
    assert result.status == GATED_OUT, result.reason
    assert result.reason.startswith("worse: ndcg@10")
    assert store.current_id() == serving_before
    # The gated-out bundle is kept for inspection but never served.
    assert result.bundle_id in store.bundle_ids()


def test_too_little_window_data_fails_instead_of_promoting_blindly(world):
    _, base, _config, store, events, _ = world
    strict = tiny_config(retrain={"min_window_users": 10_000, "max_window_users": 10_000})
    before = store.current_id()
    with pytest.raises(DataError, match=r"retrain\.min_window_users is 10000"):
        retrain_job(base, events, store, strict, SPAN_START + 8 * DAY)
    assert store.current_id() == before


def test_one_run_at_a_time(world):
    _, base, config, store, events, _ = world
    with (
        JobLock(store.root, command="another retrain"),
        pytest.raises(LockHeldError, match="another retrain"),
    ):
        retrain_job(base, events, store, config, SPAN_START + 8 * DAY)


def tolerant():
    """The first retrain may be a hair worse than a model trained on more days: tolerate it."""
    return tiny_config(retrain={"min_window_users": 5, "tolerance": 0.5})
