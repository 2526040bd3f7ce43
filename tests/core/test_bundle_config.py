import json

import pandas as pd
import pytest

from core.bundle import BundleStore, data_fingerprint, read_manifest, verify_bundle
from core.config import (
    FeatureConfig,
    RetrievalConfig,
    VidrecConfig,
    config_from_dict,
    config_to_dict,
)
from core.errors import BundleError, ConfigError


def _write_bundle(store, payload="weights", parent=None):
    with store.stage(parent=parent) as staged:
        (staged.path / "retrieval").mkdir()
        (staged.path / "retrieval" / "model.bin").write_text(payload)
        (staged.path / "config.json").write_text("{}")
        final = staged.commit(data={"name": "t"}, embedding_dim=8, counts={"videos": 3})
    return staged.bundle_id, final


def test_stage_commit_publish_and_verify(tmp_path):
    store = BundleStore(tmp_path)
    assert store.current_id() is None
    bundle_id, path = _write_bundle(store)
    assert store.bundle_ids() == [bundle_id]
    manifest = verify_bundle(path)
    assert set(manifest.files) == {"retrieval/model.bin", "config.json"}
    assert manifest.embedding_dim == 8 and manifest.libraries["numpy"] != "not installed"
    store.publish(bundle_id)
    assert store.current_id() == bundle_id
    second, _ = _write_bundle(store, parent=bundle_id)
    assert read_manifest(store.path(second)).parent == bundle_id


def test_a_failed_job_leaves_no_bundle_and_current_untouched(tmp_path):
    store = BundleStore(tmp_path)
    first, _ = _write_bundle(store)
    store.publish(first)
    with pytest.raises(RuntimeError, match="crash"), store.stage(parent=first) as staged:
        (staged.path / "half.bin").write_text("partial")
        raise RuntimeError("crash while writing")
    assert store.bundle_ids() == [first]
    assert not list((tmp_path / "bundles").glob(".tmp-*"))
    assert store.current_id() == first


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: (p / "retrieval" / "model.bin").write_text("weightz"),
            "does not match its checksum",
        ),
        (lambda p: (p / "retrieval" / "model.bin").unlink(), "is missing"),
        (lambda p: (p / "extra.txt").write_text("x"), "files not in its manifest"),
        (lambda p: (p / "manifest.json").unlink(), "has no manifest.json"),
    ],
)
def test_damaged_bundles_are_refused(tmp_path, damage, message):
    store = BundleStore(tmp_path)
    good, _ = _write_bundle(store)
    store.publish(good)
    bad, path = _write_bundle(store, payload="other")
    damage(path)
    with pytest.raises(BundleError, match=message):
        verify_bundle(path)
    if (path / "manifest.json").exists():
        with pytest.raises(BundleError, match=message):
            store.publish(bad)
    assert store.current_id() == good


def test_bad_bundle_ids_are_refused(tmp_path):
    store = BundleStore(tmp_path)
    with pytest.raises(BundleError, match="is not a bundle id"):
        store.path("../etc")
    with pytest.raises(BundleError, match="no bundle 20260101T000000Z-abcdef"):
        store.path("20260101T000000Z-abcdef")


def test_fingerprint_depends_on_events():
    a = pd.DataFrame({"user_id": [1, 2], "video_id": [3, 4], "timestamp": [5, 6]})
    b = a.assign(timestamp=[5, 7])
    assert data_fingerprint(a) == data_fingerprint(a.copy())
    assert data_fingerprint(a) != data_fingerprint(b)


def test_config_errors_name_the_field():
    with pytest.raises(
        ConfigError, match=r"retrieval.num_heads: must be >= 1 and divide embedding_dim=64"
    ):
        RetrievalConfig(num_heads=3)
    with pytest.raises(ConfigError, match=r"retrieval.temperature: must be > 0, got 0.0"):
        RetrievalConfig(temperature=0.0)
    with pytest.raises(ConfigError, match=r"features.history_length: must be >= 1, got 0"):
        FeatureConfig(history_length=0)


def test_config_round_trip_and_unknown_keys():
    config = VidrecConfig(retrieval=RetrievalConfig(embedding_dim=32, num_heads=4))
    payload = json.loads(json.dumps(config_to_dict(config)))
    assert config_from_dict(VidrecConfig, payload) == config
    with pytest.raises(ConfigError, match=r"retrieval: unknown key\(s\) \['embeding_dim'\]"):
        config_from_dict(VidrecConfig, {"retrieval": {"embeding_dim": 8}})


def test_configs_of_older_bundles_with_retired_keys_still_load():
    payload = json.loads(json.dumps(config_to_dict(VidrecConfig())))
    payload["serving"]["compile_xla"] = True  # written by bundles before request_runtime
    del payload["serving"]["request_runtime"]
    assert config_from_dict(VidrecConfig, payload) == VidrecConfig()
    with pytest.raises(ConfigError, match=r"serving.request_runtime: must be one of"):
        config_from_dict(VidrecConfig, {"serving": {"request_runtime": "onnx"}})
