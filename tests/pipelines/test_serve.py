"""The serving orchestrator and its HTTP API, on a tiny trained bundle, through real HTTP."""

import collections
import dataclasses
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from candidates import EVIDENCE_WIDTH
from core.bundle import BundleStore, read_manifest
from core.config import ServingConfig
from core.errors import BundleError
from core.schema import validate_upload
from modeling.request_runtime import stored_conversion
from pipelines import artifacts
from pipelines.artifacts import load_bundle
from pipelines.serve import RecommenderService, _videos_table
from pipelines.serving.app import create_app
from pipelines.serving.auth import KeyRing
from pipelines.serving.events import EventStore
from ranking.request import packed_score_function
from tests.tiny import ADMIN_KEY, INGEST_KEY, KEY_ENV, SMALL_BODIES

API_KEY = ADMIN_KEY
INGEST = {"X-API-Key": INGEST_KEY}


@pytest.fixture()
def platform(serving_platform):
    return serving_platform


@pytest.fixture()
def served(platform, tmp_path):
    data, config, root, _ = platform
    events = EventStore(tmp_path / "events.db")
    service = RecommenderService(root / "artifacts", events, config.serving)
    service.reload()
    keys = KeyRing(config.serving, environ=KEY_ENV)
    client = TestClient(create_app(service, config.serving, keys))
    return data, service, client, events


def _user_with_history(data):
    counts = data.interactions["user_id"].value_counts()
    return int(counts.index[0])


def test_recommend_for_a_known_user(served):
    data, service, client, _ = served
    user = _user_with_history(data)
    response = client.post("/recommend", json={"user_id": user, "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "personalized" and body["bundle_id"] == service.current.bundle_id
    ids = [item["video_id"] for item in body["items"]]
    assert len(ids) == 5 == len(set(ids))
    watched = set(data.interactions.loc[data.interactions["user_id"] == user, "video_id"])
    assert not watched & set(ids)
    scores = [item["score"] for item in body["items"]]
    assert all(np.isfinite(scores))
    assert all(set(item["because"]) <= watched for item in body["items"])
    assert all(item["source"] in item["sources"] for item in body["items"])
    stages = {"history", "user_tower", "index", "sources", "ranker", "rerank"}
    assert set(body["timings_ms"]) >= stages
    explained = service.current.recommend(user_id=user, k=5, explain=True).attention
    weights = np.asarray(explained["weights"])
    assert weights.shape == (5, len(explained["history"]))
    assert set(explained["history"]) <= watched
    assert (weights >= 0).all() and (weights.sum(axis=1) <= 1.0 + 1e-3).all()


def test_litert_models_stored_in_the_bundle_serve_the_same_answers(
    platform, served, tmp_path, caplog
):
    """A bundle written with LiteRT conversions is served from those files, converting
    nothing at load, with the answers of TensorFlow; another shape is not taken for them."""
    data, config, root, _ = platform
    _, graph, _, events = served
    source = BundleStore(root / "artifacts")
    source_dir = source.path(source.current_id())
    manifest = read_manifest(source_dir)
    store = BundleStore(tmp_path / "artifacts")
    with store.stage() as staged:
        for name in manifest.files:
            (staged.path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_dir / name, staged.path / name)
        litert_config = dataclasses.replace(
            config, serving=dataclasses.replace(config.serving, request_runtime="litert")
        )
        artifacts.write_request_models(staged.path, litert_config, graph.current.features)
        staged.commit(
            data=manifest.data,
            embedding_dim=manifest.embedding_dim,
            counts=manifest.counts,
            metrics=manifest.metrics,
        )
    store.publish(staged.bundle_id)
    bundle_dir = store.path(staged.bundle_id)
    assert (bundle_dir / "retrieval" / "request" / "query.tflite").is_file()
    assert (bundle_dir / "ranking" / "request" / "score.tflite").is_file()

    caplog.set_level(logging.INFO, logger="modeling")
    litert = RecommenderService(store.root, events, litert_config.serving)
    litert.reload()
    loaded = [r.getMessage() for r in caplog.records if r.name == "modeling.request_runtime"]
    assert loaded == [
        "user tower: LiteRT model from the bundle (query.tflite)",
        "ranker: LiteRT model from the bundle (score.tflite)",
    ]
    for user in data.interactions["user_id"].unique()[:5]:
        expected = graph.current.recommend(user_id=int(user), k=10, now=1e9)
        answer = litert.current.recommend(user_id=int(user), k=10, now=1e9)
        assert [i["video_id"] for i in answer.items] == [i["video_id"] for i in expected.items]
        np.testing.assert_allclose(
            [i["score"] for i in answer.items], [i["score"] for i in expected.items], atol=1e-4
        )
    # TensorFlow's copies of the models stayed on disk; an upload loads the video tower alone.
    assert not [r for r in caplog.records if r.name == "modeling.deferred"]
    upload = {"video_id": 987_001, "title": "Deferred", "categories": ["nature"]}
    litert.current.upsert_videos([upload])
    assert [
        r.getMessage().split(" in ")[0] for r in caplog.records if r.name == "modeling.deferred"
    ] == ["loaded the retrieval towers on first use"]
    row = litert.current.catalogue.rows(np.array([987_001]))
    same_upload = graph.current.catalogue.embed(
        _videos_table([validate_upload(upload)]), graph.current._embed
    )[1]
    np.testing.assert_allclose(litert.current.catalogue.embeddings[row], same_upload, atol=1e-6)
    # A server configured for more candidate slots needs another conversion.
    saved_model = bundle_dir / "ranking" / "ranker"
    shape = (
        config.ranking.history_length,
        config.serving.candidates,
        config.retrieval.embedding_dim,
        graph.current.features.config.max_categories,
        len(graph.current.features.user_attributes),
        EVIDENCE_WIDTH,
    )
    found = stored_conversion(saved_model, "score", packed_score_function, shape)
    assert found == bundle_dir / "ranking" / "request" / "score.tflite"
    wider = (shape[0], shape[1] + 1, *shape[2:])
    assert stored_conversion(saved_model, "score", packed_score_function, wider) is None
    # A model converted from it is a bundle file like any other: altered, the bundle is refused.
    with (bundle_dir / "ranking" / "request" / "score.tflite").open("r+b") as model:
        model.seek(100)
        model.write(b"\x00\x01")
    with pytest.raises(BundleError, match=r"score\.tflite does not match its checksum"):
        load_bundle(bundle_dir)


def test_anonymous_history_and_cold_start(served):
    data, _, client, _ = served
    history = data.interactions["video_id"].iloc[:5].tolist()
    body = client.post("/recommend", json={"history": history + [10**12], "k": 4}).json()
    assert body["source"] == "personalized"
    assert body["ignored_history"] == [10**12]
    assert not set(history) & {i["video_id"] for i in body["items"]}
    cold = client.post("/recommend", json={"k": 3}).json()
    assert cold["source"] == "popular" and len(cold["items"]) == 3
    category = data.videos["categories"].iloc[0][0]
    by_category = client.post("/recommend", json={"k": 3, "category": category}).json()
    in_category = set(
        data.videos.loc[data.videos["categories"].map(lambda c: category in c), "video_id"]
    )
    assert {i["video_id"] for i in by_category["items"]} <= in_category


def test_feedback_changes_the_next_recommendation(served):
    data, _, client, events = served
    user = _user_with_history(data)
    before = client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]
    first = before[0]["video_id"]
    stored = client.post(
        "/feedback", json={"user_id": user, "video_id": first, "watch_seconds": 30}, headers=INGEST
    )
    assert stored.status_code == 200 and stored.json() == {"stored": 1}
    after = client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]
    assert first not in {i["video_id"] for i in after}  # watched now, so filtered
    assert events.count() == 1


def test_takedown_is_never_returned_and_upload_is_searchable(served):
    data, service, client, _ = served
    user = _user_with_history(data)
    top = client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"][0]["video_id"]
    assert client.delete(f"/videos/{top}", headers={"X-API-Key": API_KEY}).status_code == 200
    for _ in range(3):
        items = client.post("/recommend", json={"user_id": user, "k": 50}).json()["items"]
        assert top not in {i["video_id"] for i in items}
    assert top not in {
        i["video_id"] for i in client.post("/recommend", json={"k": 50}).json()["items"]
    }
    # A new upload is embedded from its metadata and found next to its twin at once.
    twin = data.videos.iloc[3]
    new = {
        "video_id": 10**9,
        "title": twin["title"],
        "categories": list(twin["categories"]),
        "tags": list(twin["tags"]),
        "duration": float(twin["duration"]),
        "creator": twin["creator"],
    }
    assert client.post("/videos", json=new, headers={"X-API-Key": API_KEY}).status_code == 200
    similar = client.get("/similar", params={"video_id": 10**9, "k": 20}).json()["items"]
    assert len(similar) == 20
    assert service.current.index.contains([10**9])[0]


def test_catalogue_changes_reach_every_server_process(platform, served, tmp_path):
    """Two services over one event store stand for two worker processes of `vidrec serve`."""
    data, config, root, _ = platform
    _, _, client, _ = served
    other = RecommenderService(
        root / "artifacts", EventStore(tmp_path / "events.db"), config.serving
    )
    other.reload()
    user = _user_with_history(data)
    top = other.current.recommend(user_id=user, k=10).items[0]["video_id"]
    # The takedown goes through the first process; the second never returns the video again.
    assert client.delete(f"/videos/{top}", headers={"X-API-Key": API_KEY}).status_code == 200
    items = other.current.recommend(user_id=user, k=50).items
    assert top not in {i["video_id"] for i in items}
    assert not other.current.index.contains([top])[0]
    # An upload through the first process is searchable in the second at once.
    twin = data.videos.iloc[3]
    new = {
        "video_id": 10**9 + 1,
        "title": twin["title"],
        "categories": list(twin["categories"]),
        "duration": float(twin["duration"]),
        "creator": twin["creator"],
    }
    assert client.post("/videos", json=new, headers={"X-API-Key": API_KEY}).status_code == 200
    assert len(other.current.similar(10**9 + 1, k=5)) == 5
    # Re-uploading lifts the takedown everywhere, in the order the store committed the changes.
    restored = data.videos[data.videos["video_id"] == top].iloc[0]
    again = {
        "video_id": top,
        "title": restored["title"],
        "categories": list(restored["categories"]),
        "creator": restored["creator"],
    }
    assert client.post("/videos", json=again, headers={"X-API-Key": API_KEY}).status_code == 200
    other.current.similar(10**9 + 1, k=1)  # any request syncs
    assert other.current.index.contains([top])[0]


def test_bad_requests_are_clear_4xx(served):
    _, _, client, _ = served
    cases = [
        (
            client.post(
                "/recommend", content=b"{not json", headers={"content-type": "application/json"}
            ),
            422,
            "malformed JSON",
        ),
        (client.post("/recommend", json={"user_id": "abc"}), 422, "user_id"),
        (client.post("/recommend", json={"user_id": 1, "k": 0}), 422, "k: Input should be greater"),
        (
            client.post("/recommend", json={"user_id": 1, "k": 101}),
            422,
            "less than or equal to 100",
        ),
        (client.post("/recommend", json={"history": list(range(31))}), 422, "at most 30 items"),
        (client.post("/recommend", json={"usr": 1}), 422, "usr"),
        (
            client.post(
                "/recommend", content=b"x" * 5000, headers={"content-type": "application/json"}
            ),
            413,
            "exceeds 4096",
        ),
        (client.post("/feedback", json={"user_id": 1}, headers=INGEST), 422, "video_id"),
        (
            client.post(
                "/feedback", json={"user_id": 1, "video_id": 2, "event": "explode"}, headers=INGEST
            ),
            422,
            "event: Input should be 'like', 'rating', 'skip' or 'watch'",
        ),
        (
            client.post(
                "/feedback", json={"user_id": 1, "video_id": 2, "watch_seconds": -3}, headers=INGEST
            ),
            422,
            "watch_seconds: Input should be greater than or equal to 0",
        ),
        (client.get("/similar", params={"video_id": 10**15}), 422, "unknown video_id"),
        (client.get("/similar", params={"video_id": "x"}), 422, "video_id"),
        (client.post("/recommend", json={"k": 3, "category": "nope"}), 422, "unknown category"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (response.status_code, response.text)
        assert message in response.json()["error"], response.text


def test_api_key_is_enforced_on_writes(served):
    _, _, client, _ = served
    assert client.delete("/videos/1").status_code == 401
    assert client.delete("/videos/1", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200


def test_health_readiness_metrics_and_openapi(served):
    _, service, client, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["bundle_id"] == service.current.bundle_id
    client.post("/recommend", json={"k": 2})
    text = client.get("/metrics").text
    assert f'vidrec_bundle_info{{bundle_id="{service.current.bundle_id}"}} 1.0' in text
    assert 'vidrec_requests_total{endpoint="/recommend",status="200"}' in text
    assert "vidrec_stage_seconds_bucket" in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/recommend",
        "/similar",
        "/feedback",
        "/videos",
        "/videos/{video_id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/reload",
    } <= set(paths)


def test_corrupted_bundle_is_refused_while_the_old_one_serves(platform, served, tmp_path):
    _, _, root, bundle_id = platform
    _, service, client, _ = served
    store = BundleStore(root / "artifacts")
    # Publish a damaged copy: same content, one altered file.
    bad_id = "29990101T000000Z-bad000"
    bad = store.bundles_dir / bad_id
    shutil.copytree(store.path(bundle_id), bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["bundle_id"] = bad_id
    (bad / "manifest.json").write_text(json.dumps(manifest))
    embeddings = bad / "retrieval" / "video_embedding_rows.npy"
    embeddings.write_bytes(embeddings.read_bytes()[:-8])
    (root / "artifacts" / "CURRENT").write_text(bad_id + "\n")
    try:
        response = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        assert response.status_code == 503
        assert "does not match its checksum" in response.json()["error"]
        assert service.current.bundle_id == bundle_id
        assert client.post("/recommend", json={"k": 2}).json()["bundle_id"] == bundle_id
        assert "checksum" in client.get("/readyz").json()["last_refused"]
    finally:
        (root / "artifacts" / "CURRENT").write_text(bundle_id + "\n")
        shutil.rmtree(bad)


def test_serving_config_is_validated():
    with pytest.raises(Exception, match=r"serving.diversity: must be one of"):
        ServingConfig(diversity="random")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    text = raw.decode()
    return status, json.loads(text) if text.startswith(("{", "[")) else text


def test_two_worker_processes_share_the_port_and_the_catalogue(platform, tmp_path):
    data, _, root, bundle_id = platform
    port = _free_port()
    settings = tmp_path / "config.json"
    # Plain TensorFlow: this test is about the workers sharing a port and the catalogue; the
    # lifecycle tests run real servers on LiteRT.
    settings.write_text(json.dumps({"serving": {"request_runtime": "graph", **SMALL_BODIES}}))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "serve",
            "--artifacts",
            str(root / "artifacts"),
            "--events",
            str(tmp_path / "events.db"),
            "--config",
            str(settings),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env={**os.environ, "VIDREC_API_KEY": API_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        workers: set[int] = set()
        deadline = time.time() + 300
        while len(workers) < 2 and time.time() < deadline:
            assert server.poll() is None, server.stderr.read()
            try:
                status, ready = _call(port, "GET", "/readyz")
            except OSError:
                time.sleep(0.5)
                continue
            if status == 200:
                assert ready["bundle_id"] == bundle_id
                workers.add(ready["worker"])
        assert len(workers) == 2, "both workers should answer /readyz"
        user = _user_with_history(data)
        _, first = _call(port, "POST", "/recommend", {"user_id": user, "k": 10})
        top = first["items"][0]["video_id"]
        assert _call(port, "DELETE", f"/videos/{top}")[0] == 200
        # Connections land on either worker: none may return the video again.
        for _ in range(20):
            status, answer = _call(port, "POST", "/recommend", {"user_id": user, "k": 50})
            assert status == 200
            assert top not in {i["video_id"] for i in answer["items"]}
        status, text = _call(port, "GET", "/metrics")
        assert status == 200
        counted = re.search(
            r'vidrec_requests_total\{endpoint="/recommend",status="200"\} (\d+\.\d+)', text
        )
        assert counted is not None and float(counted.group(1)) == 21.0  # summed over workers
        # Four keep-alive connections end up two on each worker, wherever the kernel put them
        # (pipelines/serving/balance.py; test_balance.py checks the rule itself).
        connections = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(4)]
        for _ in range(40):
            served_by = []
            for connection in connections:
                connection.request("GET", "/readyz")
                response = connection.getresponse()
                served_by.append(json.loads(response.read())["worker"])
            if sorted(collections.Counter(served_by).values()) == [2, 2]:
                break
        assert sorted(collections.Counter(served_by).values()) == [2, 2], served_by
        for connection in connections:
            connection.close()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def test_items_name_their_source_and_the_watch_they_follow(served):
    data, service, _, _ = served
    recommender = service.current
    user = _user_with_history(data)
    watched = data.interactions.loc[data.interactions["user_id"] == user, "video_id"]
    result = recommender.recommend(user_id=user, k=10, now=recommender.state.data_until)
    sources = recommender.sources
    catalogue = recommender.catalogue
    # The user's latest watches as the sources read them, newest first.
    known = catalogue.rows(watched.to_numpy(np.int64))
    recent = sources.recent(known[known >= 2][None])[0]
    for item in result.items:
        assert item["source"] in item["sources"] and set(item["sources"]) <= {
            "retrieval",
            "transition",
            "covisit",
            "creator",
        }
        if item["source"] == "retrieval":
            continue
        # A source's item names first the latest watch with the largest count / total.
        graph = sources.graphs[item["source"]]
        row = catalogue.rows(np.array([item["video_id"]]))
        pull = graph.counts_between(recent[None], row[None])[0, :, 0] / np.maximum(
            graph.row_totals(recent), 1.0
        )
        assert pull.max() > 0
        assert item["because"][0] == int(catalogue.ids(recent[[int(np.argmax(pull))]])[0])
    assert any(item["source"] != "retrieval" for item in result.items)


def test_a_gated_order_serves_without_the_ranker(served):
    data, service, _, _ = served
    recommender = service.current
    user = _user_with_history(data)
    now = recommender.state.data_until
    two_stage = recommender.recommend(user_id=user, k=10, now=now)
    config = recommender.config
    recommender.order = "transition"
    recommender.config = dataclasses.replace(config, diversity="none")
    try:
        gated = recommender.recommend(user_id=user, k=10, now=now, explain=True)
    finally:
        recommender.order, recommender.config = "two_stage", config
    assert "ranker" in two_stage.timings_ms and "ranker" not in gated.timings_ms
    assert gated.attention is None
    scores = [item["score"] for item in gated.items]
    assert scores == sorted(scores, reverse=True)
    # The score is the transition score by hand (sum over the latest watches of decay^j *
    # count / total), the retrieval score a millionth behind.
    watched = data.interactions.loc[data.interactions["user_id"] == user, "video_id"]
    rows = recommender.catalogue.rows(watched.to_numpy(np.int64))
    recent = recommender.sources.recent(rows[rows >= 2][None])[0]
    graph = recommender.sources.graphs["transition"]
    top = recommender.catalogue.rows(np.array([gated.items[0]["video_id"]]))
    probability = graph.counts_between(recent[None], top[None])[0, :, 0] / np.maximum(
        graph.row_totals(recent), 1.0
    )
    expected = float((recommender.sources.recency_weights * probability).sum())
    assert expected > 0 and gated.items[0]["source"] == "transition"
    assert gated.items[0]["score"] == pytest.approx(expected, abs=1e-4)
