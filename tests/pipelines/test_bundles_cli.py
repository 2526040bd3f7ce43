"""``vidrec bundles list | show | promote | rollback | prune`` on a hand-made bundle store."""

import datetime as dt
import itertools
import json

import pytest

import core.bundle
from core.bundle import BundleStore
from core.errors import EXIT_FAILED, EXIT_LOCKED, EXIT_OK
from core.lock import JobLock
from pipelines.cli.main import main

DAY = 86_400
JAN_2 = 1_767_312_000  # 2026-01-02 00:00 UTC


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """Three published bundles a <- b <- c (c serves) and one gated-out d."""
    start = dt.datetime(2026, 1, 3, tzinfo=dt.UTC)
    counter = itertools.count()
    monkeypatch.setattr(
        core.bundle,
        "new_bundle_id",
        lambda now=None: f"{start + dt.timedelta(hours=next(counter)):%Y%m%dT%H%M%SZ}-abcdef",
    )
    store = BundleStore(tmp_path)
    for day in range(4):
        with store.stage(parent=store.current_id()) as staged:
            (staged.path / "reports").mkdir()
            (staged.path / "model.bin").write_text(f"weights of day {day}")
            (staged.path / "reports" / "retrieval_training.json").write_text(
                json.dumps({"best_epoch": 3, "stop_reason": "max_epochs=4", "epochs": [1, 2, 3]})
            )
            staged.commit(
                data={
                    "name": "synthetic",
                    "interactions": 1000 + day,
                    "users": 50,
                    "videos": 40,
                    "first_timestamp": JAN_2 - 10 * DAY,
                    "last_timestamp": JAN_2 + day * DAY,
                    "split": "leave_one_out",
                },
                embedding_dim=16,
                counts={"videos": 40},
                metrics={
                    "validation": {
                        "retrieval/ndcg@10": 0.1 + day / 100,
                        "retrieval/recall@100": 0.5 + day / 100,
                        "ranking/ndcg@10": 0.2 + day / 100,
                    },
                    "seconds": {"train_retrieval": 3.0},
                },
            )
        if day < 3:
            store.publish(staged.bundle_id)
    return store


def ids(store):
    return store.bundle_ids()


def test_list_marks_serving_and_rollback_target_and_shows_metrics(store, capsys):
    a, b, c, d = ids(store)
    assert main(["bundles", "list", "--artifacts", str(store.root)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "BUNDLE", "CREATED", "(UTC)", "PARENT", "DATA", "WINDOW", "(UTC)", "KEY", "METRICS",
    ]  # fmt: skip
    rows = {line.split()[1] if line.startswith(("*", "^")) else line.split()[0]: line
            for line in lines[1:-1]}  # fmt: skip
    assert list(rows) == [a, b, c, d]
    assert rows[c].startswith("*  ") and rows[b].startswith("^  ")
    assert rows[a].startswith(f"   {a}  ")
    assert f"  {b}  2025-12-23 00:00 .. 2026-01-04 00:00  " in rows[c]
    assert rows[c].endswith(
        "ranking/ndcg@10=0.2200  retrieval/ndcg@10=0.1200  retrieval/recall@100=0.5200"
    )
    assert lines[-1] == "* serving (CURRENT)   ^ what `vidrec bundles rollback` would publish"

    assert main(["bundles", "list", "--artifacts", str(store.root), "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [(r["bundle_id"], r["serving"], r["previous"]) for r in listed] == [
        (a, False, False),
        (b, False, True),
        (c, True, False),
        (d, False, False),
    ]
    assert listed[3]["key_metrics"]["retrieval/recall@100"] == pytest.approx(0.53)


def test_show_prints_manifest_reports_and_history(store, capsys):
    a, b, c, _ = ids(store)
    assert main(["bundles", "show", "--artifacts", str(store.root)]) == EXIT_OK  # CURRENT
    out = capsys.readouterr().out
    assert out.startswith(f"bundle      {c}   [serving]\n")
    assert f"parent      {b}\n" in out
    assert "verified    ok (2 files match their sha256)" in out
    assert "synthetic: 1002 events, 50 users, 40 videos, 2025-12-23 00:00 .. 2026-01-04" in out
    assert "  validation/ranking/ndcg@10" in out and "0.2200" in out
    assert "  reports/retrieval_training.json\n    best_epoch: 3\n" in out
    assert "    epochs: 3 items\n" in out
    assert out.endswith(f"  publish  {c} (was {b})\n")

    (store.path(a) / "reports" / "retrieval_training.json").write_text("{}")
    assert main(["bundles", "show", a, "--artifacts", str(store.root), "--json"]) == EXIT_OK
    details = json.loads(capsys.readouterr().out)
    assert details["verification"].startswith(f"FAILED: bundle {a}: reports/retrieval_train")
    assert details["metrics"]["validation/retrieval/recall@100"] == 0.5
    assert [e["action"] for e in details["publish_history"]] == ["publish", "publish"]


def test_promote_refuses_a_corrupted_bundle_and_keeps_current(store, capsys):
    _, _, c, d = ids(store)
    (store.path(d) / "manifest.json").write_text(
        (store.path(d) / "manifest.json").read_text().replace('"videos": 40', '"videos": 41')
    )
    (store.path(d) / "reports" / "retrieval_training.json").write_text('{"tampered": 1}')
    code = main(["bundles", "promote", d, "--artifacts", str(store.root)])
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == (
        f"vidrec bundles: error: bundle {d}: reports/retrieval_training.json does not match its "
        "checksum (altered or truncated); refusing to load it\n"
    )
    assert store.current_id() == c


def test_promote_then_rollback_twice_then_refuse(store, capsys):
    a, b, c, d = ids(store)
    root = str(store.root)
    assert main(["bundles", "promote", d, "--artifacts", root, "--reason", "manual"]) == EXIT_OK
    assert capsys.readouterr().out == f"promoted {d} (verified); it serves now, replacing {c}\n"
    assert store.current_id() == d
    for old, new, further in [(d, c, b), (c, b, a)]:
        assert main(["bundles", "rollback", "--artifacts", root]) == EXIT_OK
        assert capsys.readouterr().out == (
            f"rolled back from {old} to {new}; {new} serves now\n"
            f"a further rollback would publish {further}\n"
        )
    assert main(["bundles", "rollback", "--artifacts", root]) == EXIT_OK
    assert capsys.readouterr().out.endswith(
        "this is the start of the publish history: a further rollback will refuse\n"
    )
    assert main(["bundles", "rollback", "--artifacts", root]) == EXIT_FAILED
    assert "is the start of the publish history" in capsys.readouterr().err
    assert store.current_id() == a


def test_changing_commands_exit_75_while_a_job_holds_the_lock(store, capsys):
    _, b, c, _ = ids(store)
    with JobLock(store.root, command="vidrec retrain --cutoff 2026-01-05"):
        for argv in (["rollback"], ["promote", b], ["prune", "--keep", "1"]):
            code = main(["bundles", *argv, "--artifacts", str(store.root)])
            assert code == EXIT_LOCKED
            err = capsys.readouterr().err
            assert "another vidrec job holds the lock" in err
            assert ": vidrec retrain --cutoff 2026-01-05. Wait for it to finish" in err
        # Reading needs no lock.
        assert main(["bundles", "list", "--artifacts", str(store.root)]) == EXIT_OK
    assert store.current_id() == c and len(ids(store)) == 4


def test_prune_keeps_newest_and_protected(store, capsys, tmp_path):
    a, b, c, d = ids(store)
    assert main(["bundles", "prune", "--keep", "1", "--artifacts", str(store.root)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        f"removed {a}",
        f"kept    {b}  (parent of the serving bundle)",
        f"kept    {c}  (serving (CURRENT))",
        f"kept    {d}  (one of the newest 1)",
    ]
    assert ids(store) == [b, c, d]
    bad = tmp_path / "keep0.json"
    bad.write_text(json.dumps({"bundles": {"keep_last": 0}}))
    assert main(["bundles", "prune", "--config", str(bad), "--artifacts", str(store.root)]) == 2
    assert "bundles.keep_last: must be >= 1, got 0" in capsys.readouterr().err


def test_train_exits_75_before_reading_data_while_a_job_holds_the_lock(tmp_path, capsys):
    with JobLock(tmp_path, command="vidrec retrain --cutoff 2026-01-05"):
        code = main(["train", "--data", str(tmp_path / "nowhere"), "--artifacts", str(tmp_path)])
    assert code == EXIT_LOCKED
    assert "vidrec train: error: another vidrec job holds the lock" in capsys.readouterr().err
