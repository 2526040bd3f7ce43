"""The ``vidrec`` commands end to end on a tiny synthetic platform."""

import json

import pytest

from pipelines.cli.main import main


@pytest.fixture()
def workspace(cli_workspace):
    return cli_workspace


def test_train_publishes_a_verified_bundle(workspace):
    from core.bundle import BundleStore, verify_bundle

    store = BundleStore(workspace / "artifacts")
    current = store.current_id()
    assert store.bundle_ids() == [current]
    manifest = verify_bundle(store.path(current))
    assert manifest.data["split"] == "leave_one_out"
    assert manifest.embedding_dim == 16
    assert {
        "retrieval/video_embedding_rows.npy",
        "retrieval/video_ids.npy",
        "vocab/video_ids.npy",
        "reports/retrieval_training.png",
        "config.json",
    } <= set(manifest.files)
    assert "ranking/ranker/saved_model.pb" in manifest.files
    assert set(manifest.metrics["validation"]) >= {"retrieval/recall@20", "ranking/ndcg@10"}


def test_evaluate_prints_a_table_and_writes_json(workspace, capsys):
    out = workspace / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(workspace / "data"),
                "--artifacts",
                str(workspace / "artifacts"),
                "--config",
                str(workspace / "config.json"),
                "--baselines",
                "most_popular",
                "transition",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    for name in ("two_tower", "two_stage", "most_popular", "transition", "ndcg@10", "recall@60"):
        assert name in table
    result = json.loads(out.read_text())
    current = (workspace / "artifacts" / "CURRENT").read_text().strip()
    # The same report is kept beside the store for the inspector's bundle page.
    kept = workspace / "artifacts" / "reports" / "evaluations" / f"{current}.json"
    assert json.loads(kept.read_text()) == result
    manifest = json.loads(
        (workspace / "artifacts" / "bundles" / current / "manifest.json").read_text()
    )
    order = manifest["metrics"]["stage_gate"]["order"]
    served = set() if order == "two_stage" else {f"served ({order})"}
    sources = {"source/transition", "source/covisit", "source/creator"}
    expected = {"two_tower", "two_stage", "most_popular", "transition"} | sources | served
    assert set(result["rows"]) == expected
    rows = result["rows"]
    for name in sources:
        assert 0.0 <= rows[name]["hr@10"] <= rows[name]["recall@60"] <= 1.0
    assert result["num_cases"] == 275  # users with an event to hold out in days 0-6
    assert 0.0 <= result["rows"]["two_tower"]["ndcg@10"] <= 1.0


def test_evaluate_refuses_a_bundle_trained_on_other_data(workspace, tmp_path, capsys):
    assert (
        main(
            [
                "generate",
                "--out",
                str(tmp_path / "other"),
                "--users",
                "200",
                "--videos",
                "150",
                "--events",
                "4000",
                "--days",
                "10",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    code = main(
        [
            "evaluate",
            "--data",
            str(tmp_path / "other"),
            "--artifacts",
            str(workspace / "artifacts"),
            "--baselines",
            "most_popular",
        ]
    )
    assert code == 2
    assert "with different interactions; evaluate it on the data it was trained on" in (
        capsys.readouterr().err
    )


def test_bad_config_names_the_field(workspace, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"retrieval": {"temperature": -1}}))
    code = main(
        [
            "train",
            "--data",
            str(workspace / "data"),
            "--artifacts",
            str(tmp_path),
            "--config",
            str(bad),
        ]
    )
    assert code == 2
    assert "retrieval.temperature: must be > 0, got -1" in capsys.readouterr().err


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--artifacts", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
