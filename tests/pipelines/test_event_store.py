"""`EventStore` (pipelines/serving/events/) on its own: what it stores, in which order, and how
it sets aside rows it cannot serve, on both backends (`store_backend`: SQLite, then PostgreSQL).
Rows an older store or a bug let in are written with the database's driver directly, as such a
store would hold them."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from core.config import ServingConfig
from core.errors import ConfigError, DataError, StoreError
from pipelines.cli.main import main
from pipelines.serving.events import (
    CHANGE_ROW,
    EVENT_ROW,
    SET_ASIDE,
    SKIPPED,
    TAKEDOWN,
    UPSERT,
    VIDEO_ROW,
    EventStore,
    FeedbackEvent,
    sql,
)
from pipelines.serving.events.urls import backend_of, redact, resolve_events_url, sqlite_path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _plain(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with NaN as None, so that lists compare with ``==``."""
    return [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in r) for r in rows]


def _insert_event(raw: Any, *values: Any) -> None:
    raw.execute(
        "INSERT INTO events (user_id, video_id, timestamp, event, watch_seconds, rating,"
        " received_at) VALUES (?, ?, ?, ?, ?, ?, 0)",
        values,
    )


# -- events ----------------------------------------------------------------------------------


def test_user_events_come_oldest_first_after_an_id_and_limited_to_the_newest(store_backend):
    store = store_backend.open()
    assert store.last_id() == 0
    written = store.append(
        [
            FeedbackEvent(1, 10, 300, watch_seconds=30.0),  # id 1
            FeedbackEvent(2, 11, 100),  # id 2, another user
            FeedbackEvent(1, 12, 100, event="rating", rating=4.0),  # id 3, older than id 1
            FeedbackEvent(1, 13, 300),  # id 4, same time as id 1
            FeedbackEvent(1, 14, 200, event="like"),  # id 5
        ]
    )
    assert written == 5
    assert (store.last_id(), store.count()) == (5, 5)
    # Ordered by timestamp, ties by id; watch_seconds and rating NaN where unknown.
    assert _plain(store.user_events(1, after_id=0, limit=10)) == [
        (12, 100, None, 4.0),
        (14, 200, None, None),
        (10, 300, 30.0, None),
        (13, 300, None, None),
    ]
    # Only events stored after id 3 (ids 4 and 5).
    assert _plain(store.user_events(1, after_id=3, limit=10)) == [
        (14, 200, None, None),
        (13, 300, None, None),
    ]
    # The limit keeps the most recent ones, still oldest first.
    assert [e[0] for e in store.user_events(1, after_id=0, limit=2)] == [10, 13]
    assert store.user_events(2, after_id=2, limit=10) == []
    assert store.user_events(99, after_id=0, limit=10) == []
    assert store.append([]) == 0


def test_interactions_select_by_time_and_by_stored_id(store_backend):
    store = store_backend.open()
    # Stored out of time order: ids 1..4 have timestamps 400, 100, 300, 200.
    store.append([FeedbackEvent(1, 10, 400, watch_seconds=12.5)])
    store.append([FeedbackEvent(2, 20, 100, event="skip")])
    store.append([FeedbackEvent(3, 30, 300, event="rating", rating=2.5)])
    store.append([FeedbackEvent(4, 40, 200)])

    def videos(**kwargs: int) -> list[int]:
        return store.interactions(**kwargs)["video_id"].tolist()

    assert videos() == [10, 20, 30, 40]  # in stored order, not time order
    assert videos(since=200) == [10, 30, 40]
    assert videos(until=300) == [20, 40]  # until is exclusive
    assert videos(since=200, until=400) == [30, 40]
    assert videos(until_id=2) == [10, 20]
    assert videos(since=200, until_id=3) == [10, 30]
    frame = store.interactions(since=300)
    assert list(frame.columns) == [
        "user_id",
        "video_id",
        "timestamp",
        "event",
        "watch_seconds",
        "rating",
    ]
    assert frame["watch_seconds"].dtype == "float32" and frame["rating"].dtype == "float32"
    rows = [tuple(r) for r in frame.itertuples(index=False)]
    assert _plain(rows) == [(1, 10, 400, "watch", 12.5, None), (3, 30, 300, "rating", None, 2.5)]


# -- catalogue changes -----------------------------------------------------------------------


def test_catalogue_changes_are_logged_in_commit_order_and_an_upload_lifts_a_takedown(store_backend):
    store = store_backend.open()
    assert store.catalogue_version() == 0
    assert store.upsert_video({"video_id": 7, "title": "first", "duration": 60}) == 7  # seq 1
    store.take_down(7)  # seq 2
    store.take_down(8)  # seq 3
    assert store.taken_down() == {7, 8}
    store.upsert_video({"video_id": 7, "title": "second", "categories": ["news"]})  # seq 4
    assert store.taken_down() == {8}
    assert store.catalogue_version() == 4

    changes = store.catalogue_changes_after(0)
    assert [(c.seq, c.video_id, c.change) for c in changes] == [
        (1, 7, UPSERT),
        (2, 7, TAKEDOWN),
        (3, 8, TAKEDOWN),
        (4, 7, UPSERT),
    ]
    first = {
        "video_id": 7,
        "title": "first",
        "categories": [],
        "tags": [],
        "year": None,
        "duration": 60.0,
        "creator": "",
        "upload_time": None,
    }
    second = {**first, "title": "second", "categories": ["news"], "duration": None}
    assert [c.metadata for c in changes] == [first, None, None, second]
    assert [c.seq for c in store.catalogue_changes_after(2)] == [3, 4]
    assert store.catalogue_changes_after(4) == []
    # The videos table holds the latest metadata only.
    assert store.uploaded_videos() == [second]


def test_a_refused_catalogue_write_stores_nothing(store_backend):
    store = store_backend.open()
    with pytest.raises(DataError, match=r"video_id.*must be in \[0, 2\*\*63 - 1\], got -1"):
        store.upsert_video({"video_id": -1})
    with pytest.raises(DataError, match=r"video_id must be in \[0, 2\*\*63 - 1\], got -2"):
        store.take_down(-2)
    assert store.catalogue_version() == 0
    assert (store.upload_rows(), store.taken_down()) == ([], set())


# -- rows that cannot be served --------------------------------------------------------------


def test_quarantine_records_a_row_once(store_backend):
    store = store_backend.open()
    store.quarantine(EVENT_ROW, 5, {"user_id": -1}, "user_id out of range")
    # A second server process meets the same row and records it again: still one entry, the first.
    store.quarantine(EVENT_ROW, 5, {"user_id": -1}, "another wording")
    store.quarantine(VIDEO_ROW, 5, None, "metadata is not a JSON object")  # another source
    entries = store.quarantined()
    assert [(e["source"], e["ref"], e["payload"], e["reason"], e["status"]) for e in entries] == [
        (EVENT_ROW, 5, '{"user_id": -1}', "user_id out of range", SKIPPED),
        (VIDEO_ROW, 5, "null", "metadata is not a JSON object", SKIPPED),
    ]
    assert store.skipped_count() == 2
    assert store.quarantined(SET_ASIDE) == []


def test_invalid_rows_are_listed_skipped_on_read_and_set_aside_by_repair(store_backend):
    store = store_backend.open()
    store.append([FeedbackEvent(1, 10, 100)])  # id 1, valid
    store.upsert_video({"video_id": 7})  # seq 1, valid
    # One committed transaction, as an older version of the store would have written.
    with store_backend.raw() as raw:
        _insert_event(raw, -1, 10, 150, "watch", None, None)  # id 2
        _insert_event(raw, 1, 11, 200, "rating", None, 7.0)  # id 3
        _insert_event(raw, 1, 12, 250, "bogus", None, None)  # id 4
        raw.execute("INSERT INTO videos (video_id, metadata, updated_at) VALUES (8, 'nope', 0)")
        raw.execute(
            "INSERT INTO videos (video_id, metadata, updated_at) VALUES (9, ?, 0)",
            ('{"video_id": 10}',),
        )
        raw.execute("INSERT INTO catalogue_changes (video_id, change) VALUES (9, 'rename')")
    # A server skipped event 2 before the repair, and a valid row by mistake (a bug since fixed).
    store.quarantine(EVENT_ROW, 2, None, "skipped by a server")
    store.quarantine(EVENT_ROW, 1, None, "skipped by a bug")

    found = [(r["source"], r["ref"], r["reason"]) for r in store.invalid_rows()]
    assert found == [
        (EVENT_ROW, 2, "user_id must be in [0, 2**63 - 1], got -1"),
        (EVENT_ROW, 3, "rating must be a finite number in [0, 5], got 7.0"),
        (EVENT_ROW, 4, "event must be one of ['like', 'rating', 'skip', 'watch'], got 'bogus'"),
        (VIDEO_ROW, 8, "metadata is not a JSON object"),
        (VIDEO_ROW, 9, "metadata names video_id 10, the row 9"),
        (CHANGE_ROW, 2, "unknown change 'rename' or video_id 9"),
    ]
    # Reads leave them out.
    assert _plain(store.user_events(1, after_id=0, limit=10)) == [(10, 100, None, None)]
    assert store.interactions()["video_id"].tolist() == [10]
    assert [v["video_id"] for v in store.uploaded_videos()] == [7]

    set_aside = store.repair()
    assert [(r["source"], r["ref"], r["reason"]) for r in set_aside] == found
    assert store.invalid_rows() == []
    assert store.count() == 1
    assert [v for v, _ in store.upload_rows()] == [7]
    assert [c.seq for c in store.catalogue_changes_after(0)] == [1]
    # Nothing is lost: each row is kept, with its content, as set aside; the skipped entries
    # are cleared (the valid row will be applied again at the next start).
    kept = store.quarantined()
    assert [(e["source"], e["ref"], e["status"]) for e in kept] == [
        (source, ref, SET_ASIDE) for source, ref, _ in found
    ]
    assert kept[0]["payload"] == (
        '{"user_id": -1, "video_id": 10, "timestamp": 150, "event": "watch",'
        ' "watch_seconds": null, "rating": null}'
    )
    assert store.skipped_count() == 0
    assert store.repair() == []


# -- the SQLite file ---------------------------------------------------------------------------


def test_a_fractional_id_sqlite_kept_is_invalid_not_a_failed_retrain(tmp_path):
    """SQLite stores 1.5 in an INTEGER column; the retrain's loader would stop on it."""
    store = EventStore(tmp_path / "events.db")
    store.append([FeedbackEvent(1, 10, 100)])
    raw = sqlite3.connect(tmp_path / "events.db")
    with raw:
        raw.execute(
            "INSERT INTO events (user_id, video_id, timestamp, event, received_at) "
            "VALUES (1.5, 10, 150, 'watch', 0)"
        )
    raw.close()
    assert [row["ref"] for row in store.invalid_rows()] == [2]
    assert store.interactions()["user_id"].tolist() == [1]


def test_the_directory_must_exist(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(StoreError, match=r"directory .*missing does not exist; create it"):
        EventStore(missing / "events.db")
    assert not missing.exists()
    with pytest.raises(DataError, match="synchronous must be FULL or NORMAL, got 'OFF'"):
        EventStore(tmp_path / "events.db", synchronous="OFF")


def test_an_older_sqlite_store_is_migrated_in_place_and_a_plain_path_is_sqlite(tmp_path):
    # The tables as vidrec wrote them before the schema version was recorded.
    path = tmp_path / "events.db"
    old = sqlite3.connect(path)
    old.executescript(sql.SQLITE_TABLES)
    with old:
        _insert_event(old, 5, 7, 100, "watch", 9.0, None)
        old.execute("INSERT INTO takedowns (video_id, removed_at) VALUES (3, 0)")
    old.close()
    for location in (str(path), f"sqlite:///{path}"):  # sqlite:/// + an absolute path
        store = EventStore(location)
        assert type(store).__name__ == "SQLiteEventStore"
        assert store.schema_version() == sql.SCHEMA_VERSION == 2
        assert _plain(store.user_events(5, after_id=0, limit=10)) == [(7, 100, 9.0, None)]
        assert store.taken_down() == {3}


def test_a_store_newer_than_the_code_is_refused(store_backend):
    store_backend.open().close()
    with store_backend.raw() as raw:
        raw.execute("UPDATE store_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(
        StoreError, match=r"schema version 99, newer than this vidrec knows \(2\): upgrade vidrec"
    ):
        store_backend.open()


def test_a_user_s_events_are_read_through_the_index(store_backend):
    store = store_backend.open()
    with store_backend.raw() as raw:
        if store_backend.name == "postgresql":
            # Enough rows (2,000 users) that the planner prefers the index to a scan.
            raw.execute(
                "INSERT INTO events (user_id, video_id, timestamp, event, received_at) "
                "SELECT mod(g, 2000), g, g, 'watch', 0 FROM generate_series(1, 20000) AS g"
            )
            raw.execute("ANALYZE events")
            explain = "EXPLAIN "
        else:
            explain = "EXPLAIN QUERY PLAN "
        plan = raw.execute(explain + sql.USER_EVENTS, (42, 0, 50)).fetchall()
    assert "events_by_user" in " ".join(str(line) for line in plan), plan
    expected = 10 if store_backend.name == "postgresql" else 0
    assert len(store.user_events(42, after_id=0, limit=50)) == expected


def test_store_urls_and_which_one_a_command_uses(tmp_path):
    env = {"VIDREC_EVENTS_URL": "postgresql://vidrec@db:5432/vidrec"}
    configured = "sqlite:////srv/vidrec/events.db"
    assert resolve_events_url("flag.db", configured, "art", env) == "flag.db"
    assert resolve_events_url(None, configured, "art", env) == env["VIDREC_EVENTS_URL"]
    assert resolve_events_url(None, configured, "art", {}) == configured
    assert resolve_events_url(None, None, "art", {}) == str(Path("art") / "events.db")
    assert sqlite_path(configured) == Path("/srv/vidrec/events.db")
    assert sqlite_path("sqlite:///relative/events.db") == Path("relative/events.db")
    assert backend_of("postgres://h/db") == backend_of("postgresql://h/db") == "postgresql"
    with pytest.raises(ConfigError, match=r"unknown scheme 'mysql'; use a file path"):
        resolve_events_url("mysql://u:secret@h/db", None, "art", {})
    with pytest.raises(ConfigError, match=r"write sqlite:///relative/path.db"):
        sqlite_path("sqlite://host/events.db")
    assert redact("postgresql://u:secret@h:5/db?password=x&a=1") == (
        "postgresql://u:***@h:5/db?password=***&a=1"
    )
    with pytest.raises(ConfigError, match=r"serving.events_url: must be a file path"):
        ServingConfig(events_url="redis://u:secret@x")
    with pytest.raises(ConfigError, match=r"serving.events_pool_size: must be in \[1, 1000\]"):
        ServingConfig(events_pool_size=0)


def test_events_commands_use_the_store_the_config_names(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIDREC_EVENTS_URL", raising=False)
    configured = tmp_path / "configured.db"
    EventStore(configured).append([FeedbackEvent(1, 10, 100)])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"serving": {"events_url": f"sqlite:///{configured}"}}))
    assert main(["events", "check", "--config", str(config), "--artifacts", "nowhere"]) == 0
    assert capsys.readouterr().out.startswith(f"event store {configured}: 1 events")


def test_an_acknowledged_append_survives_its_process(store_backend):
    # The writer dies right after append returns: no close, no checkpoint of the WAL, no
    # connection closed.
    writer = textwrap.dedent(
        f"""
        import os
        from pipelines.serving.events import EventStore, FeedbackEvent
        store = EventStore({store_backend.url!r})
        store.upsert_video({{"video_id": 7}})
        written = store.append([FeedbackEvent(5, 7, 100, watch_seconds=9.0)])
        print(written, flush=True)
        os._exit(0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", writer], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    reopened = store_backend.open()
    assert (reopened.count(), reopened.last_id(), reopened.catalogue_version()) == (1, 1, 1)
    assert _plain(reopened.user_events(5, after_id=0, limit=10)) == [(7, 100, 9.0, None)]
    # And within a process: closed and opened again.
    reopened.append([FeedbackEvent(5, 7, 200)])
    reopened.close()
    assert _plain(store_backend.open().user_events(5, after_id=1, limit=10)) == [
        (7, 200, None, None)
    ]
