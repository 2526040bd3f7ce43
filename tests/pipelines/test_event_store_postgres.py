"""What only the PostgreSQL backend has to get right: commit order across writers, the event
watermark under writers in flight, an unreachable server, and `vidrec events migrate`.

Against the session's throwaway server (`pg_cluster`), each test in a schema of its own.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pandas as pd
import psycopg
import pytest

from core.errors import StoreError
from pipelines.cli.main import main
from pipelines.serving.events import EventStore, FeedbackEvent
from pipelines.serving.events.postgres import LOCK_CHANGE_LOG
from tests.pg_cluster import free_port


def _in_thread(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = target()
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_the_change_log_commits_in_seq_order(pg_url):
    store = EventStore(pg_url)
    store.upsert_video({"video_id": 1})  # seq 1
    # Another writer has drawn seq 2 and not committed yet (a replica mid-write).
    with psycopg.connect(pg_url) as other:
        other.execute(LOCK_CHANGE_LOG)
        other.execute("INSERT INTO catalogue_changes (video_id, change) VALUES (2, 'takedown')")
        writer, outcome = _in_thread(lambda: store.take_down(3))
        writer.join(0.3)
        # The second writer waits for the first instead of committing seq 3 ahead of seq 2, and
        # readers are not blocked meanwhile: they see seq 1 and nothing after it.
        assert writer.is_alive()
        assert store.catalogue_version() == 1
        other.commit()
    writer.join(10)
    assert "error" not in outcome, outcome
    changes = store.catalogue_changes_after(0)
    assert [(c.seq, c.video_id) for c in changes] == [(1, 1), (2, 2), (3, 3)]
    store.close()


def test_the_event_watermark_waits_for_writers_in_flight(pg_url):
    store = EventStore(pg_url)
    with psycopg.connect(pg_url) as slow:
        # Draws id 1 and stays open; a faster writer then commits id 2.
        slow.execute(
            "INSERT INTO events (user_id, video_id, timestamp, event, received_at) "
            "VALUES (1, 10, 100, 'watch', 0)"
        )
        store.append([FeedbackEvent(2, 20, 200)])
        reader, outcome = _in_thread(store.last_id)
        reader.join(0.3)
        # MAX(id) is 2 already, but id 1 may still commit: the watermark is not given yet.
        assert reader.is_alive()
        slow.commit()
    reader.join(10)
    assert outcome == {"value": 2}
    # A retrain that reads up to the watermark gets both events, so neither is lost between
    # the bundle (id <= 2) and the live reads (id > 2).
    assert store.interactions(until_id=outcome["value"])["video_id"].tolist() == [10, 20]
    store.close()


def test_an_unreachable_server_fails_fast_and_the_store_reconnects_by_itself(pg_cluster, pg_url):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(StoreError, match=r"cannot be opened \(.*\); check that PostgreSQL runs"):
        EventStore(dead)
    store = EventStore(pg_url, retry_seconds=0.2)
    assert store.append([FeedbackEvent(1, 10, 100)]) == 1
    assert store.health()["state"] == "ok"
    with pg_cluster.stopped():
        with pytest.raises(StoreError, match="cannot be read now"):
            store.user_events(1, after_id=0, limit=10)
        started = time.monotonic()
        for _ in range(20):  # every call meanwhile fails at once
            with pytest.raises(StoreError, match="cannot take a write now"):
                store.append([FeedbackEvent(1, 11, 101)])
            with pytest.raises(StoreError, match="unavailable for"):
                store.catalogue_version()
        assert time.monotonic() - started < 1.0
        health = store.health()
        assert health["state"] == "unavailable" and health["unavailable_seconds"] >= 0
    deadline = time.monotonic() + 15
    while store.health()["state"] != "ok":
        assert time.monotonic() < deadline, store.health()
        time.sleep(0.05)
    # The same store object: nothing acknowledged was lost, and writes go through again.
    assert store.append([FeedbackEvent(1, 12, 102)]) == 1
    assert store.interactions()["video_id"].tolist() == [10, 12]
    store.close()


def test_a_connection_that_died_idle_is_replaced_without_failing_the_call(pg_cluster, pg_url):
    store = EventStore(pg_url)
    store.append([FeedbackEvent(1, 10, 100)])
    # Every session of the store is ended behind its back (a failover, a restart between two
    # requests): the next call finds a dead connection, replaces it and succeeds.
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'vidrec' AND pid <> pg_backend_pid()"
        )
    assert store.count() == 1
    assert store.append([FeedbackEvent(1, 11, 101)]) == 1
    assert store.health()["state"] == "ok"
    store.close()


def _sqlite_store_with_everything(path) -> EventStore:
    store = EventStore(path)
    store.append([FeedbackEvent(1, 10, 100, watch_seconds=5.0), FeedbackEvent(2, 11, 200)])
    store.append([FeedbackEvent(1, 12, 300, event="rating", rating=4.5)])
    store.upsert_video({"video_id": 7, "title": "seven"})
    store.take_down(8)
    raw = sqlite3.connect(path)
    with raw:  # a bad row an older store let in (event id 4)
        raw.execute(
            "INSERT INTO events (user_id, video_id, timestamp, event, received_at) "
            "VALUES (-1, 10, 100, 'watch', 0)"
        )
    raw.close()
    return store


def test_migrate_copies_a_sqlite_store_into_postgresql(tmp_path, pg_url, capsys):
    path = tmp_path / "events.db"
    source = _sqlite_store_with_everything(path)
    migrate = ["events", "migrate", "--from", f"sqlite:///{path}", "--to", pg_url]
    # Invalid rows first have to be set aside (the quarantine is copied with the rest).
    assert main(migrate) == 2
    assert "holds 1 invalid live row(s)" in capsys.readouterr().err
    assert main(["events", "repair", "--events", str(path)]) == 0
    capsys.readouterr()
    assert main(migrate) == 0
    out = capsys.readouterr().out
    assert "events: 3 row(s)  (keys 1..3); ids issued up to 4" in out
    assert "catalogue_changes: 2 row(s)  (keys 1..2)" in out
    assert "quarantine: 1 row(s)" in out
    target = EventStore(pg_url)
    # The same events in the same order, the same catalogue and quarantine.
    pd.testing.assert_frame_equal(target.interactions(), source.interactions())
    assert target.last_id() == source.last_id() == 3
    assert [(c.seq, c.video_id, c.change) for c in target.catalogue_changes_after(0)] == [
        (1, 7, "upsert"),
        (2, 8, "takedown"),
    ] and target.taken_down() == {8}
    assert target.uploaded_videos() == source.uploaded_videos()
    assert [r["ref"] for r in target.quarantined("set_aside")] == [4]
    # New rows continue after the copied ids, and id 4 (set aside) is never handed out again,
    # as in the source: a bundle may already count it.
    for store in (source, target):
        store.append([FeedbackEvent(3, 13, 400)])
        store.take_down(9)
        assert (store.last_id(), store.catalogue_version()) == (5, 3)
    # A second run refuses the non-empty target; --overwrite replaces its contents.
    assert main(migrate) == 2
    assert "is not empty (events 4, videos 1, takedowns 2" in capsys.readouterr().err
    assert main([*migrate, "--overwrite"]) == 0
    assert target.count() == 4 and target.taken_down() == {8, 9}
    target.close()
