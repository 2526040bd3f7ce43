"""Two `vidrec serve` processes standing in for two machines, sharing nothing but a PostgreSQL
event store (and a copy each of the bundle): writes through one are in force in the other's
next answer, and when PostgreSQL goes away both keep answering and come back by themselves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pg_cluster import free_port
from tests.tiny import ADMIN_KEY, INGEST_KEY, SMALL_BODIES

REPO_ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 300


class Machine:
    """A real ``vidrec serve`` in a directory of its own, with its own copy of the artifacts."""

    def __init__(self, name: str, root: Path, artifacts: Path, url: str, by_env: bool) -> None:
        self.name = name
        self.home = root / name
        self.home.mkdir()
        shutil.copytree(artifacts, self.home / "artifacts")
        self.port = free_port()
        self.log_path = self.home / "server.log"
        settings = {"request_runtime": "graph", "events_retry_seconds": 0.2, **SMALL_BODIES}
        (self.home / "config.json").write_text(json.dumps({"serving": settings}))
        env = {**os.environ, "VIDREC_API_KEY": ADMIN_KEY, "VIDREC_INGEST_KEY": INGEST_KEY}
        command = [
            sys.executable, "-m", "pipelines.cli", "serve", "--artifacts", "artifacts",
            "--config", "config.json", "--port", str(self.port),
        ]  # fmt: skip
        # One machine names the store on the command line, the other in its environment.
        if by_env:
            env["VIDREC_EVENTS_URL"] = url
        else:
            command += ["--events", url]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.home,
                env={**env, "PYTHONPATH": str(REPO_ROOT)},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def call(self, method: str, path: str, body: Any = None, key: str = ADMIN_KEY) -> Any:
        """``(status, headers, JSON or text)`` of one request."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json", "X-API-Key": key},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, headers, raw = error.code, error.headers, error.read()
        text = raw.decode()
        return status, headers, json.loads(text) if text.startswith(("{", "[")) else text

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited ({self.process.returncode}):\n{self.log()[-3000:]}")
        try:
            return self.call("GET", "/readyz")[0] == 200
        except OSError:
            return False

    def recommend(self, **body: Any) -> dict[str, Any]:
        status, _, answer = self.call("POST", "/recommend", body)
        assert status == 200, (self.name, status, answer)
        return answer

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Ends the server at once: its graceful stop is tested elsewhere (tests/pipelines/
        test_lifecycle.py), and with the graph runtime it has no child process to leave."""
        self.process.kill()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def machines(serving_platform, pg_cluster, tmp_path_factory):
    """``(data, a, b, url)``: machines A and B serving the session's bundle over one schema."""
    data, _, root, _ = serving_platform
    schema = f"shared_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    url = pg_cluster.url(search_path=schema)
    home = tmp_path_factory.mktemp("machines")
    started: list[Machine] = []
    try:
        for name, by_env in (("a", False), ("b", True)):
            started.append(Machine(name, home, root / "artifacts", url, by_env))
        a, b = started
        deadline = time.monotonic() + START_SECONDS
        while not (a.ready() and b.ready()):
            assert time.monotonic() < deadline, "the two servers did not come up"
            time.sleep(0.2)
        yield data, a, b, url
    finally:
        for machine in started:
            machine.stop()
        if not pg_cluster.running():
            pg_cluster.start()
        with psycopg.connect(pg_cluster.url(), autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


def _heavy_user(data) -> int:
    return int(data.interactions["user_id"].value_counts().index[0])


def _twin_of(data, row: int, video_id: int) -> dict[str, Any]:
    twin = data.videos.iloc[row]
    return {
        "video_id": video_id,
        "title": twin["title"],
        "categories": list(twin["categories"]),
        "tags": list(twin["tags"]),
        "duration": float(twin["duration"]),
        "creator": twin["creator"],
    }


def test_a_watch_posted_to_one_machine_changes_the_other_s_next_answer(machines):
    data, a, b, _ = machines
    user = _heavy_user(data)
    before = b.recommend(user_id=user, k=10)
    assert before["history_source"] == "bundle_and_store"
    first = before["items"][0]["video_id"]
    event = {"user_id": user, "video_id": first, "watch_seconds": 30}
    status, _, stored = a.call("POST", "/feedback", event, key=INGEST_KEY)
    assert (status, stored) == (200, {"stored": 1})
    after = b.recommend(user_id=user, k=10)
    assert first not in {item["video_id"] for item in after["items"]}  # watched now


def test_uploads_and_takedowns_through_either_machine_reach_the_other(machines):
    data, a, b, _ = machines
    new = _twin_of(data, 3, 10**9 + 7)
    assert a.call("POST", "/videos", new)[0] == 200
    status, _, similar = b.call("GET", f"/similar?video_id={new['video_id']}&k=5")
    assert status == 200 and len(similar["items"]) == 5  # embedded and searchable on B
    user = _heavy_user(data)
    top = a.recommend(user_id=user, k=10)["items"][0]["video_id"]
    assert b.call("DELETE", f"/videos/{top}")[0] == 200
    for machine in (a, b):
        assert top not in {i["video_id"] for i in machine.recommend(user_id=user, k=50)["items"]}
        assert top not in {i["video_id"] for i in machine.recommend(k=50)["items"]}
    status, _, refused = a.call("GET", f"/similar?video_id={top}&k=5")
    assert status == 422 and "unknown video_id" in refused["error"]


def _counter(text: str, what: str) -> float:
    found = re.search(rf'vidrec_store_fallbacks_total{{what="{what}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_without_postgresql_answers_go_on_writes_wait_and_both_recover(machines, pg_cluster):
    data, a, b, url = machines
    user = _heavy_user(data)
    event = {"user_id": user, "video_id": int(data.videos["video_id"].iloc[7])}
    assert a.call("POST", "/feedback", event, key=INGEST_KEY)[0] == 200
    with psycopg.connect(url) as connection:
        acknowledged = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    with pg_cluster.stopped():
        for machine in (a, b):
            # Answers still come, from the bundle's history, and say so.
            answer = machine.recommend(user_id=user, k=10)
            assert answer["history_source"] == "bundle_only" and len(answer["items"]) == 10
            assert machine.recommend(k=3)["history_source"] == "none"
            status, headers, refused = machine.call("POST", "/feedback", event, key=INGEST_KEY)
            assert status == 503 and headers["Retry-After"] == "1", refused
            assert "cannot take a write now" in refused["error"]
            assert machine.call("POST", "/videos", _twin_of(data, 4, 10**9 + 8))[0] == 503
            status, _, ready = machine.call("GET", "/readyz")
            assert status == 200 and ready["status"] == "degraded"
            assert ready["store"]["backend"] == "postgresql"
            assert ready["store"]["state"] == "unavailable"
            metrics = machine.call("GET", "/metrics")[2]
            assert _counter(metrics, "history") >= 1
            assert _counter(metrics, "catalogue_sync") >= 1
        stopped_at = time.monotonic()
    # Back without restarting either server.
    deadline = time.monotonic() + 30
    for machine in (a, b):
        while machine.call("GET", "/readyz")[2]["store"]["state"] != "ok":
            assert time.monotonic() < deadline, machine.log()[-3000:]
            time.sleep(0.05)
    recovered_seconds = time.monotonic() - stopped_at
    assert recovered_seconds < 10
    assert a.call("POST", "/feedback", event, key=INGEST_KEY)[2] == {"stored": 1}
    assert b.recommend(user_id=user, k=10)["history_source"] == "bundle_and_store"
    with psycopg.connect(url) as connection:  # nothing acknowledged was lost
        stored = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert stored == acknowledged + 1
