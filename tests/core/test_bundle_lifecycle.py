"""Bundle lifecycle: publish history, promote, rollback, retention and sweeping."""

import datetime as dt
import itertools
import json
import time

import pytest

import core.bundle
from core.bundle import (
    PUBLISHED,
    STAGING_MARKER,
    BundleStore,
    StagedBundle,
    key_metrics,
    verify_bundle,
)
from core.errors import BundleError

METRICS = {
    "validation": {
        "retrieval/recall@20": 0.5,
        "retrieval/recall@100": 0.8,
        "retrieval/ndcg@10": 0.1,
        "retrieval/hr@10": 0.2,
        "ranking/ndcg@10": 0.15,
    },
    "seconds": {"train_retrieval": 12.0, "ndcg@10": 99.0},
    "index": {"recall@100": 0.97, "nprobe": 8},
}


@pytest.fixture(autouse=True)
def ordered_ids(monkeypatch):
    """Bundle ids one second apart, so creation order is id order within a test."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    counter = itertools.count()

    def fake(now=None):
        return f"{(start + dt.timedelta(seconds=next(counter))):%Y%m%dT%H%M%SZ}-abcdef"

    monkeypatch.setattr(core.bundle, "new_bundle_id", fake)


def write(store, parent=None, metrics=None, payload="weights"):
    with store.stage(parent=parent) as staged:
        (staged.path / "model.bin").write_text(payload)
        staged.commit(
            data={"name": "t", "first_timestamp": 86_400, "last_timestamp": 3 * 86_400},
            embedding_dim=8,
            counts={"videos": 3},
            metrics=metrics,
        )
    return staged.bundle_id


def chain(store, n, publish=True):
    """``n`` bundles, each trained from the serving one and (optionally) published."""
    ids = []
    for _ in range(n):
        ids.append(write(store, parent=store.current_id()))
        if publish:
            store.publish(ids[-1])
    return ids


def test_publish_appends_history_and_staging_marker_is_not_in_the_bundle(tmp_path):
    store = BundleStore(tmp_path)
    a, b = chain(store, 2)
    events = store.history()
    assert [(e.action, e.bundle_id, e.previous) for e in events] == [
        ("publish", a, None),
        ("publish", b, a),
    ]
    assert store.serving_stack() == [a, b]
    assert STAGING_MARKER not in verify_bundle(store.path(b)).files


def test_rollback_goes_back_one_step_at_a_time_then_refuses(tmp_path):
    store = BundleStore(tmp_path)
    a, b, c = chain(store, 3)
    assert store.previous_id() == b
    assert store.rollback(reason="bad ctr") == (c, b)
    assert store.current_id() == b
    # A second rollback goes further back, not back to c.
    assert store.rollback() == (b, a)
    assert store.current_id() == a
    with pytest.raises(
        BundleError,
        match=rf"bundle {a} is the start of the publish history \(PUBLISHED\) and has no parent "
        r"bundle: nothing to roll back to.*vidrec bundles promote ID",
    ):
        store.rollback()
    assert store.current_id() == a
    actions = [(e.action, e.bundle_id, e.previous, e.reason) for e in store.history()]
    assert actions[-2:] == [("rollback", b, c, "bad ctr"), ("rollback", a, b, "")]
    # Going forward again is an explicit promote; rollback then returns to a, not to c's past.
    store.promote(c)
    assert store.serving_stack() == [a, c]
    assert store.rollback() == (c, a)


def test_rollback_without_history_falls_back_on_the_parent_chain(tmp_path):
    store = BundleStore(tmp_path)
    a = write(store)
    b = write(store, parent=a)
    (tmp_path / "CURRENT").write_text(b + "\n")  # published by a vidrec without PUBLISHED
    assert store.serving_stack() == [b]
    assert store.rollback() == (b, a)
    assert store.serving_stack() == [a]
    with pytest.raises(BundleError, match="start of the publish history"):
        store.rollback()


def test_a_crash_between_current_and_the_log_is_repaired(tmp_path):
    store = BundleStore(tmp_path)
    a, b = chain(store, 2)
    c = write(store, parent=b)
    (tmp_path / "CURRENT").write_text(c + "\n")  # CURRENT moved, log line never written
    with open(tmp_path / PUBLISHED, "a") as log:
        log.write('{"action": "publish", "bundle_')  # and a torn line
    assert store.serving_stack() == [a, b, c]
    assert store.rollback() == (c, b)


def test_rollback_refuses_a_missing_or_corrupted_previous_bundle(tmp_path):
    store = BundleStore(tmp_path)
    a, b = chain(store, 2)
    (store.path(a) / "model.bin").write_text("tampered")
    with pytest.raises(
        BundleError,
        match=rf"cannot roll back from {b} to {a}: .*does not match its checksum.*"
        rf"CURRENT still names {b}",
    ):
        store.rollback()
    assert store.current_id() == b
    store._trash(store.path(a))
    with pytest.raises(BundleError, match=rf"the bundle that served before it, {a}, no longer"):
        store.rollback()


def test_promote_refuses_a_corrupted_bundle_and_keeps_current(tmp_path):
    store = BundleStore(tmp_path)
    (a,) = chain(store, 1)
    b = write(store, parent=a)
    (store.path(b) / "model.bin").write_text("weightz")
    with pytest.raises(BundleError, match=rf"bundle {b}: model.bin does not match its checksum"):
        store.promote(b)
    assert store.current_id() == a
    assert [e.bundle_id for e in store.history()] == [a]
    with pytest.raises(BundleError, match=rf"bundle {a} is already serving; nothing to promote"):
        store.promote(a)
    with pytest.raises(BundleError, match="no bundle 20990101T000000Z-abcdef"):
        store.promote("20990101T000000Z-abcdef")


def test_retention_keeps_newest_serving_parent_and_rollback_target(tmp_path):
    store = BundleStore(tmp_path)
    b1, b2, b3 = chain(store, 3)  # b3 serves, b2 is its parent and the rollback target
    b4, b5, b6 = (write(store, parent=b3) for _ in range(3))  # trained, gated out
    result = store.apply_retention(keep_last=2, running_since=time.time())
    assert result.removed == [b1, b4]
    assert result.kept == {
        b2: "parent of the serving bundle",
        b3: "serving (CURRENT)",
        b5: "one of the newest 2",
        b6: "one of the newest 2",
    }
    assert store.bundle_ids() == [b2, b3, b5, b6]
    assert not list(store.bundles_dir.glob(".trash-*"))
    # After a rollback the rollback target moves; retention follows it.
    store.rollback()
    assert store.apply_retention(keep_last=1).kept == {
        b2: "serving (CURRENT)",
        b6: "one of the newest 1",
    }
    assert store.bundle_ids() == [b2, b6]


def test_retention_keeps_what_a_running_job_stages_from_and_sweeps_crashed_staging(tmp_path):
    store = BundleStore(tmp_path)
    old, serving = chain(store, 2)
    n0, n1, n2 = (write(store, parent=serving) for _ in range(3))
    crashed = StagedBundle(store, "20260101T235959Z-dead00", parent=n0)
    marker = json.loads((crashed.path / STAGING_MARKER).read_text())
    marker["created"] -= 3600  # an hour before the running job took the lock
    (crashed.path / STAGING_MARKER).write_text(json.dumps(marker))
    lock_started = time.time() - 60
    live = StagedBundle(store, "20260101T235959Z-11fe00", parent=n1)

    result = store.apply_retention(keep_last=1, running_since=lock_started)
    assert result.swept == [crashed.path.name]
    assert live.path.is_dir() and not crashed.path.exists()
    assert result.removed == [n0]  # the crashed job's parent is not protected
    assert result.kept == {
        old: "parent of the serving bundle",
        serving: "serving (CURRENT)",
        n1: f"a running job stages from it ({live.path.name})",
        n2: "one of the newest 1",
    }
    live.discard()
    assert store.apply_retention(keep_last=1, running_since=time.time()).removed == [n1]


def test_a_staged_job_protects_its_parent_even_when_old(tmp_path):
    store = BundleStore(tmp_path)
    ancient, _, _ = chain(store, 3)
    live = StagedBundle(store, "20260101T235959Z-11fe00", parent=ancient)
    result = store.apply_retention(keep_last=1, running_since=time.time() - 60)
    assert result.kept[ancient] == f"a running job stages from it ({live.path.name})"
    # Without a lock start time nothing is swept: the staging directory might be live.
    assert store.apply_retention(keep_last=1).swept == []
    assert live.path.is_dir()


def test_deletion_never_breaks_a_reader_that_has_the_files_open(tmp_path):
    store = BundleStore(tmp_path)
    a, _b, _c = chain(store, 3)
    with open(store.path(a) / "model.bin") as handle:
        assert store.apply_retention(keep_last=1).removed == [a]
        assert handle.read() == "weights"
    with pytest.raises(BundleError, match=f"no bundle {a}"):
        store.path(a)


def test_remove_refuses_protected_bundles(tmp_path):
    store = BundleStore(tmp_path)
    a, b = chain(store, 2)
    with pytest.raises(BundleError, match=rf"bundle {b} is protected \(serving \(CURRENT\)\)"):
        store.remove(b)
    with pytest.raises(BundleError, match=rf"bundle {a} is protected \(parent of the serving"):
        store.remove(a)
    c = write(store, parent=b)
    store.remove(c)
    assert store.bundle_ids() == [a, b]


def test_summaries_and_key_metrics(tmp_path):
    assert key_metrics(METRICS) == {
        "index/recall@100": 0.97,
        "ranking/ndcg@10": 0.15,
        "retrieval/ndcg@10": 0.1,
        "retrieval/recall@100": 0.8,
    }
    store = BundleStore(tmp_path)
    a = write(store, metrics=METRICS)
    store.publish(a)
    b = write(store, parent=a, metrics={"validation": {"retrieval/ndcg@10": 0.2}})
    store.publish(b)
    broken = write(store, parent=b)
    (store.path(broken) / "manifest.json").write_text("{")
    rows = {s.bundle_id: s for s in store.summaries()}
    assert list(rows) == [a, b, broken]
    assert rows[b].serving and not rows[b].previous and rows[b].parent == a
    assert rows[a].previous and not rows[a].serving
    assert rows[a].key_metrics == key_metrics(METRICS)
    assert (rows[a].first_timestamp, rows[a].last_timestamp) == (86_400, 3 * 86_400)
    assert rows[broken].error.startswith("cannot read") and rows[broken].key_metrics == {}
