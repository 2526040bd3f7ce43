"""The write path: nothing a client sends, and no row already stored, can stop serving.

Every case of issue 11 through the HTTP app; stored rows that an older store or a bug let in
are written with the database's driver directly, as such a store would hold them. The parts
about the store itself (what it refuses, rows it cannot serve, a busy store) run on both
backends (`store_backend`).
"""

import contextlib
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.errors import AuthError, ConfigError, DataError
from core.schema import validate_upload
from pipelines.cli.main import main
from pipelines.serve import RecommenderService
from pipelines.serving.app import create_app
from pipelines.serving.auth import KeyRing, Scope, parse_keys_file
from pipelines.serving.events import EventStore, FeedbackEvent
from tests.stores import SQLITE
from tests.tiny import ADMIN_KEY, INGEST_KEY, KEY_ENV

ADMIN = {"X-API-Key": ADMIN_KEY}
INGEST = {"X-API-Key": INGEST_KEY}
TOO_BIG = 2**63


@pytest.fixture(scope="module")
def service(load_tiny_service):
    """One loaded service over its own event store (a load costs seconds: share it)."""
    return load_tiny_service("write-path")


@pytest.fixture(scope="module")
def client(service, serving_platform):
    _, config, _, _ = serving_platform
    return TestClient(create_app(service, config.serving, KeyRing(config.serving, KEY_ENV)))


def _user(data) -> int:
    return int(data.interactions["user_id"].value_counts().index[0])


def _still_serving(client, data) -> None:
    user = _user(data)
    answer = client.post("/recommend", json={"user_id": user, "k": 5})
    assert answer.status_code == 200, answer.text
    assert all(np.isfinite(item["score"]) for item in answer.json()["items"])
    video = int(data.videos["video_id"].iloc[0])
    assert client.get("/similar", params={"video_id": video, "k": 3}).status_code == 200


BAD_UPLOADS = [
    ({"video_id": -1}, "video_id: Input should be greater than or equal to 0"),
    ({"video_id": TOO_BIG}, "video_id: Input should be less than or equal to 9223372036854775807"),
    ({"video_id": 1e20}, "video_id: Input should be a valid integer"),
    ({"video_id": True}, "video_id: Input should be a valid integer"),
    ({"video_id": 7, "upload_time": 1e300}, "upload_time: Input should be less than or equal"),
    ({"video_id": 7, "duration": 0}, "duration: Input should be greater than 0"),
    ({"video_id": 7, "year": -5}, "year: Input should be greater than or equal to 1800"),
    ({"video_id": 7, "categories": "drama"}, "categories: Input should be a valid list"),
    ({"video_id": 7, "tags": [""]}, "tags.0: String should have at least 1 character"),
    ({"video_id": 7, "title": "x" * 1001}, "title: String should have at most 1000 characters"),
]


@pytest.mark.parametrize(("body", "message"), BAD_UPLOADS)
def test_a_bad_upload_is_refused_and_nothing_is_stored(
    client, service, serving_platform, body, message
):
    data = serving_platform[0]
    before = service.events.catalogue_version()
    answer = client.post("/videos", json=body, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["error"]
    assert service.events.catalogue_version() == before
    assert service.events.upload_rows() == []
    _still_serving(client, data)


def test_values_json_allows_but_no_store_can_hold_are_refused(client, service):
    # Python's JSON reader takes 1e999 (inf), NaN and lone surrogates; the store must not.
    cases = [
        (b'{"video_id": 7, "year": 1e999}', "year: Input should be a finite number"),
        (b'{"video_id": 7, "duration": NaN}', "duration: Input should be a finite number"),
        (b'{"video_id": 7, "title": "a\\ud800"}', "title: Input should be a valid string"),
    ]
    for raw, message in cases:
        answer = client.post(
            "/videos", content=raw, headers={**ADMIN, "content-type": "application/json"}
        )
        assert answer.status_code == 422, answer.text
        assert message in answer.json()["error"]
    assert service.events.catalogue_version() == 0


def test_a_restart_after_refused_uploads_comes_up_ready(client, service, serving_platform):
    _, config, root, bundle_id = serving_platform
    for body, _ in BAD_UPLOADS:
        client.post("/videos", json=body, headers=ADMIN)
    restarted = RecommenderService(root / "artifacts", service.events, config.serving)
    assert restarted.reload() == bundle_id
    assert restarted.current.skipped_rows == 0
    after_restart = TestClient(
        create_app(restarted, config.serving, KeyRing(config.serving, KEY_ENV))
    )
    ready = after_restart.get("/readyz").json()
    assert ready["status"] == "ready" and ready["skipped_rows"] == 0
    assert after_restart.post("/recommend", json={"k": 3}).status_code == 200


def test_integers_outside_int64_are_a_4xx_never_a_500(client):
    cases = [
        client.post("/recommend", json={"user_id": TOO_BIG}),
        client.post("/recommend", json={"history": [1, TOO_BIG]}),
        client.post("/recommend", json={"user_id": 1, "exclude": [TOO_BIG]}),
        client.post("/recommend", json={"user_id": 1, "exclude": [False]}),
        client.get("/similar", params={"video_id": "1e20"}),
        client.get("/similar", params={"video_id": str(TOO_BIG)}),
        client.post("/feedback", json={"user_id": TOO_BIG, "video_id": 1}, headers=INGEST),
        client.post("/feedback", json={"user_id": 1, "video_id": TOO_BIG}, headers=INGEST),
        client.post(
            "/feedback", json={"user_id": 1, "video_id": 1, "timestamp": TOO_BIG}, headers=INGEST
        ),
        client.post(
            "/feedback", json={"user_id": 1, "video_id": 1, "timestamp": False}, headers=INGEST
        ),
        client.delete(f"/videos/{TOO_BIG}", headers=ADMIN),
    ]
    for answer in cases:
        assert answer.status_code == 422, (answer.request.url, answer.text)
        assert answer.json()["error"]


def test_feedback_needs_an_ingest_key_and_finite_values(client, service):
    event = {"user_id": 5, "video_id": 1, "watch_seconds": 30}
    stored = service.events.count()
    assert client.post("/feedback", json=event).status_code == 401
    wrong = client.post("/feedback", json=event, headers={"X-API-Key": "x" * 20})
    assert wrong.status_code == 401 and "unknown API key" in wrong.json()["error"]
    assert client.post("/feedback", json=event, headers=INGEST).json() == {"stored": 1}
    assert client.post("/feedback", json=event, headers=ADMIN).json() == {"stored": 1}
    # An ingest key does not reach the catalogue or the admin endpoints.
    upload = client.post("/videos", json={"video_id": 9}, headers=INGEST)
    assert upload.status_code == 403 and "needs an admin key" in upload.json()["error"]
    assert client.delete("/videos/9", headers=INGEST).status_code == 403
    assert client.post("/admin/reload", headers=INGEST).status_code == 403
    for raw, message in [
        (b'{"user_id": 5, "video_id": 1, "rating": 1e999}', "rating: Input should be a finite"),
        (b'{"user_id": 5, "video_id": 1, "rating": -1e308}', "rating: Input should be greater"),
        (b'{"user_id": 5, "video_id": 1, "rating": 6}', "rating: Input should be less than"),
        (b'{"user_id": 5, "video_id": 1, "watch_seconds": NaN}', "watch_seconds: Input should"),
    ]:
        answer = client.post(
            "/feedback", content=raw, headers={**INGEST, "content-type": "application/json"}
        )
        assert answer.status_code == 422 and message in answer.json()["error"], answer.text
    # One event or a batch: the error names the fields of the form the client sent.
    single = client.post(
        "/feedback",
        content=b'{"user_id": 5, "video_id": 1, "rating": 1e999}',
        headers={**INGEST, "content-type": "application/json"},
    )
    assert single.json() == {"error": "rating: Input should be a finite number"}
    batch = client.post("/feedback", json={"events": [{"user_id": 5}]}, headers=INGEST)
    assert batch.json() == {"error": "events.0.video_id: Field required"}
    future = int(time.time()) + 3 * 86_400
    ahead = client.post("/feedback", json={**event, "timestamp": future}, headers=INGEST)
    assert ahead.status_code == 422 and "more than a day ahead" in ahead.json()["error"]
    assert service.events.count() == stored + 2


def test_a_keyless_request_is_refused_before_its_body_is_read(client):
    garbage = {"content-type": "application/json"}
    assert client.post("/feedback", content=b"{not json", headers=garbage).status_code == 401
    assert client.post("/videos", content=b"[1, 2", headers=garbage).status_code == 401
    assert client.delete("/videos/abc").status_code == 401


def test_wrong_content_type_is_415_and_the_batch_limit_fits_the_body_limit(
    client, serving_platform
):
    config = serving_platform[1].serving
    text = client.post("/recommend", content=b'{"k": 2}', headers={"content-type": "text/plain"})
    assert text.status_code == 415 and "application/json" in text.json()["error"]
    assert client.post("/recommend", content=b'{"k": 2}').status_code == 415
    assert client.post("/recommend", json={"k": 2}).status_code == 200
    # The largest batch the schema allows, every field at its widest, is never a 413.
    widest = {
        "user_id": 2**63 - 1,
        "video_id": 2**63 - 1,
        "event": "rating",
        "watch_seconds": 123456.78901234567,
        "rating": 1.2345678901234567,
        "timestamp": int(time.time()),
    }
    batch = {"events": [widest] * config.max_feedback_batch}
    assert len(json.dumps(batch, indent=1)) <= config.max_body_bytes
    assert client.post("/feedback", json=batch, headers=INGEST).status_code == 200

    # A body streamed without a length is cut off at the limit with the same 413.
    def streamed():
        yield b'{"events": ['
        for _ in range(200):
            yield json.dumps(widest).encode() + b","
        yield json.dumps(widest).encode() + b"]}"

    chunked = client.post(
        "/feedback", content=streamed(), headers={**INGEST, "content-type": "application/json"}
    )
    assert chunked.status_code == 413
    assert chunked.json() == {"error": f"body exceeds {config.max_body_bytes} bytes"}
    over = client.post(
        "/feedback", json={"events": [widest] * (config.max_feedback_batch + 1)}, headers=INGEST
    )
    assert over.status_code == 422
    assert f"at most {config.max_feedback_batch} items" in over.json()["error"]


def test_openapi_states_the_limits_and_every_status(client, serving_platform):
    config = serving_platform[1].serving
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/feedback"]["post"]["responses"]) == {
        "200",
        "400",
        "401",
        "403",
        "413",
        "415",
        "422",
        "503",
    }
    assert set(paths["/recommend"]["post"]["responses"]) == {
        "200",
        "400",
        "413",
        "415",
        "422",
        "503",
    }
    assert paths["/videos"]["post"]["x-required-scope"] == "admin"
    assert paths["/feedback"]["post"]["x-required-scope"] == "ingest"
    schemas = spec["components"]["schemas"]
    recommend = schemas["RecommendRequest"]["properties"]
    assert recommend["k"]["anyOf"][0]["maximum"] == config.max_k
    assert recommend["history"]["anyOf"][0]["maxItems"] == config.max_request_history
    assert schemas["FeedbackRequest"]["properties"]["events"]["maxItems"] == 12
    assert schemas["FeedbackItem"]["properties"]["event"]["enum"] == [
        "like",
        "rating",
        "skip",
        "watch",
    ]
    assert schemas["FeedbackItem"]["properties"]["user_id"]["maximum"] == 2**63 - 1


def _store_rows_an_old_store_could_hold(store_backend, user: int, video: int) -> None:
    """Rows the write path now refuses, written as an older vidrec (or a bug) stored them."""
    bad = json.dumps({"video_id": 424242, "upload_time": 1e300, "title": "broken"})
    with store_backend.raw() as connection:
        connection.execute(
            "INSERT INTO videos (video_id, metadata, updated_at) VALUES (424242, ?, 1)", (bad,)
        )
        connection.execute(
            "INSERT INTO catalogue_changes (video_id, change, metadata) "
            "VALUES (424242, 'upsert', ?)",
            (bad,),
        )
        connection.execute(
            "INSERT INTO events (user_id, video_id, timestamp, event, watch_seconds, rating, "
            "received_at) VALUES (?, ?, ?, 'rating', NULL, ?, 0)",
            (user, video, int(time.time()), float("inf")),
        )


def test_stored_rows_that_cannot_be_served_are_skipped_shown_and_repaired(
    serving_platform, store_backend, capsys
):
    data, config, root, bundle_id = serving_platform
    store_backend.open().close()
    user, video = _user(data), int(data.videos["video_id"].iloc[5])
    _store_rows_an_old_store_could_hold(store_backend, user, video)

    # Start-up skips the bad upload instead of refusing to serve.
    service = RecommenderService(root / "artifacts", store_backend.open(), config.serving)
    assert service.reload() == bundle_id
    assert service.current.skipped_rows == 1
    client = TestClient(create_app(service, config.serving, KeyRing(config.serving, {})))
    ready = client.get("/readyz").json()
    assert ready["status"] == "degraded" and ready["skipped_rows"] == 1
    assert "vidrec_skipped_stored_rows 1.0" in client.get("/metrics").text
    # The infinite rating is never read: every score stays a number.
    _still_serving(client, data)
    assert not service.current.index.contains([424242])[0]

    # A bad change committed while serving is skipped by the next answer.
    with store_backend.raw() as connection:
        connection.execute(
            "INSERT INTO catalogue_changes (video_id, change, metadata) VALUES (5, 'upsert', '{x')"
        )
    _still_serving(client, data)
    assert service.current.skipped_rows == 2

    # In-process: the command line's code and output, without a new interpreter per call.
    def vidrec(*args: str) -> tuple[int, str]:
        code = main([*args, "--events", store_backend.url])
        return code, capsys.readouterr().out

    code, out = vidrec("events", "check")
    assert code == 2, out
    assert "invalid live rows: 4" in out  # the upload, its change, the bad JSON, the event
    assert "rows servers skipped: 2" in out
    assert "upload_time" in out and "rating" in out
    code, out = vidrec("events", "repair")
    assert code == 0 and "set aside 4 invalid row(s)" in out
    code, out = vidrec("events", "check")
    assert code == 0, out
    assert "rows set aside by repair: 4" in out
    set_aside = store_backend.open().quarantined("set_aside")
    assert {row["source"] for row in set_aside} == {"video", "catalogue_change", "event"}

    restarted = RecommenderService(root / "artifacts", store_backend.open(), config.serving)
    restarted.reload()
    assert restarted.current.skipped_rows == 0
    assert client.get("/readyz").json()["status"] == "ready"


def test_the_store_itself_refuses_what_the_api_refuses(store_backend, tmp_path):
    events = store_backend.open()
    with pytest.raises(DataError, match=r"upload_time.*finite number in \[0, 4102444800\]"):
        events.upsert_video({"video_id": 3, "upload_time": 1e300})
    with pytest.raises(DataError, match=r"video_id.*must be in \[0, 2\*\*63 - 1\], got -1"):
        events.take_down(-1)
    with pytest.raises(DataError, match=r"rating must be a finite number in \[0, 5\]"):
        FeedbackEvent(user_id=1, video_id=2, timestamp=10, rating=float("inf"))
    with pytest.raises(DataError, match=r"user_id must be an integer, got True"):
        FeedbackEvent(user_id=True, video_id=2, timestamp=10)
    with pytest.raises(DataError, match=r"timestamp must be seconds .* \(milliseconds\?\)"):
        FeedbackEvent(user_id=1, video_id=2, timestamp=1_700_000_000_000)
    assert events.catalogue_version() == 0 and events.count() == 0
    assert events.upsert_video({"video_id": 3, "title": "ok", "year": 2001}) == 3
    assert validate_upload({"video_id": 3, "tags": ["a"]})["tags"] == ["a"]
    if store_backend.name == SQLITE:
        with pytest.raises(Exception, match=r"directory .*missing does not exist"):
            EventStore(tmp_path / "missing" / "events.db")
        assert not (tmp_path / "missing").exists()


def test_keys_have_scopes_rotate_from_a_file_and_are_checked(tmp_path, serving_platform):
    config = serving_platform[1].serving
    ring = KeyRing(config, {"VIDREC_API_KEY": "a" * 16 + ",b" + "b" * 15})
    ring.authorize("a" * 16, Scope.ADMIN)
    ring.authorize("b" * 16, Scope.ADMIN)  # two admin keys while one is rotated out
    with pytest.raises(AuthError, match="needs an API key with the ingest scope"):
        ring.authorize(None, Scope.INGEST)
    with pytest.raises(ConfigError, match="at least 16 printable ASCII characters"):
        KeyRing(config, {"VIDREC_INGEST_KEY": "short"})
    with pytest.raises(ConfigError, match=r"line 2: expected '<admin\|ingest> <key>'"):
        parse_keys_file("# keys\nroot " + "k" * 20 + "\n", "keys.txt")
    assert not KeyRing(config, {}).configured

    keys = tmp_path / "keys.txt"
    old, new = "o" * 20, "n" * 24
    keys.write_text(f"admin {old}\n")
    import dataclasses

    ring = KeyRing(dataclasses.replace(config, api_keys_file=str(keys)), {})
    ring.authorize(old, Scope.ADMIN)
    keys.write_text(f"admin {new}  # rotated\ningest {old}\n")
    ring._checked_at = 0.0  # skip the once-a-second recheck wait
    ring.authorize(new, Scope.ADMIN)
    with pytest.raises(AuthError, match="needs an admin key") as refused:
        ring.authorize(old, Scope.ADMIN)
    assert refused.value.status == 403
    ring.authorize(old, Scope.INGEST)
    # A file emptied while serving (the last key removed, or a rewrite caught half-written)
    # never opens the server: the last keys stay in force.
    keys.write_text("# nothing here\n")
    ring._checked_at = 0.0
    ring.authorize(new, Scope.ADMIN)
    with pytest.raises(AuthError, match="needs an API key"):
        ring.authorize(None, Scope.INGEST)
    assert ring.configured
    with pytest.raises(ConfigError, match="holds no key"):
        KeyRing(dataclasses.replace(config, api_keys_file=str(keys)), {})
    # A '#' inside a key is part of it; a comment starts a line or follows white space.
    keys.write_text("admin abc#defghijklmnopq  # the deploy key\n")
    assert parse_keys_file(keys.read_text(), "keys").admin == ("abc#defghijklmnopq",)
    with pytest.raises(ConfigError, match="printable ASCII"):
        KeyRing(config, {"VIDREC_API_KEY": "ключ-ключ-ключ-ключ"})


@contextlib.contextmanager
def _another_writer_that_does_not_let_go(store_backend):
    with store_backend.raw() as holder:
        if store_backend.name == SQLITE:
            holder.execute("BEGIN EXCLUSIVE")
        else:  # readers go on, writers of events wait
            holder.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        yield


def test_a_busy_store_answers_503_with_retry_after_and_recommendations_go_on(
    serving_platform, store_backend
):
    data, config, root, _ = serving_platform
    # How long a write may wait for another writer: SQLite's busy timeout, PostgreSQL's
    # statement timeout (a lock wait counts). PostgreSQL's also bounds the reads the
    # recommendations make meanwhile: 0.2 s failed one of them once on a machine busy with
    # other work, which counted a fallback and turned /readyz "degraded".
    wait = {"busy_timeout_seconds": 0.2} if store_backend.name == SQLITE else {}
    if not wait:
        wait = {"statement_timeout_seconds": 1.0}
    service = RecommenderService(root / "artifacts", store_backend.open(**wait), config.serving)
    service.reload()
    client = TestClient(create_app(service, config.serving, KeyRing(config.serving, {})))
    event = {"user_id": _user(data), "video_id": 1}
    with _another_writer_that_does_not_let_go(store_backend):
        busy = client.post("/feedback", json=event)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "cannot take a write now" in busy.json()["error"]
        _still_serving(client, data)
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["store"]["state"] == "ok"
    assert client.post("/feedback", json=event).json() == {"stored": 1}
    assert service.events.count() == 1
