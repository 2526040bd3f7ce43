"""The event store under a real ``vidrec serve``, on SQLite and on PostgreSQL in one run.

For each backend (``--backends``), against one ``vidrec serve`` on loopback:

1. **Ingestion**: ``--clients`` clients post ``--batches`` batches of ``--batch-size`` watch
   events each to ``POST /feedback`` (keep-alive connections); events/s acknowledged.
2. **Recommend with live history**: ``--recommends`` sequential ``POST /recommend`` calls for
   users who have events in the store, so every answer reads the store: client p50/p99 and the
   server's ``history`` stage.
3. **Outage** (PostgreSQL only): the clients of (1) and a recommend client run for
   ``--load-seconds``; PostgreSQL is stopped (``pg_ctl stop -m fast``) for
   ``--outage-seconds`` in the middle and started again. Reported: events acknowledged
   against events stored (must be equal: a 503 is retried by the client, an acknowledged event
   is never lost), failed recommend calls (must be 0; answers during the outage come from the
   bundle alone), and the time from PostgreSQL's restart to ``/readyz`` showing the store
   again and to the first acknowledged write.

PostgreSQL is a throwaway server started here from Debian's ``postgresql`` package
(tests/pg_cluster.py), with ``fsync`` on. The bundle is trained on a small synthetic platform
unless ``--artifacts`` names a trained artifacts root.

    .venv/bin/python benchmarks/events.py --out artifacts/bench/events

Writes ``events.json`` under ``--out`` and prints the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VIDREC = [sys.executable, "-m", "pipelines.cli"]

import numpy as np  # noqa: E402

RETRY_PAUSE_SECONDS = 0.2  # a client's pause after a 503 or a refused connection


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"n": 0}
    values = np.asarray(samples_ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values.max()), 2),
        "n": len(values),
    }


class Client:
    """One keep-alive HTTP connection to the server (reconnects after an error)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, parsed body)``; status 0 when the connection failed."""
        payload = None if body is None else json.dumps(body).encode()
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.connection.request(
                method, path, payload, headers={"Content-Type": "application/json"}
            )
            response = self.connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw
        except (OSError, http.client.HTTPException) as error:
            if self.connection is not None:
                self.connection.close()
            self.connection = None
            return 0, str(error)


def build_bundle(args: argparse.Namespace, out: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A trained artifacts root, and the platform's user and video ids."""
    from pipelines.data.datasets import load_dataset

    if args.artifacts:
        if not args.data:
            raise SystemExit("--artifacts needs --data (the data set it was trained on)")
        data = load_dataset(args.data)
        return (
            Path(args.artifacts),
            data.interactions["user_id"].unique(),
            data.videos["video_id"].to_numpy(),
        )
    root = out / "platform"
    artifacts, data_dir = root / "artifacts", root / "data"
    if not (artifacts / "CURRENT").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        generate = [*VIDREC, "generate", "--out", str(data_dir), "--users", str(args.users)]
        generate += ["--videos", str(args.videos), "--events", str(args.platform_events)]
        subprocess.run([*generate, "--days", "30", "--seed", "0"], check=True)
        config = root / "config.json"
        config.write_text(
            json.dumps(
                {
                    "retrieval": {"embedding_dim": 32, "max_epochs": 2, "patience": 1},
                    "ranking": {"max_epochs": 1, "max_examples": 30_000},
                }
            )
        )
        started = time.perf_counter()
        train = [*VIDREC, "train", "--data", str(data_dir), "--artifacts", str(artifacts)]
        subprocess.run([*train, "--config", str(config)], check=True)
        print(f"trained the bundle in {time.perf_counter() - started:.0f} s", flush=True)
    data = load_dataset(data_dir)
    return artifacts, data.interactions["user_id"].unique(), data.videos["video_id"].to_numpy()


class Server:
    """``vidrec serve`` over one event store."""

    def __init__(self, args: argparse.Namespace, artifacts: Path, events: str, home: Path) -> None:
        self.port = _free_port()
        home.mkdir(parents=True, exist_ok=True)
        config = home / "serve.json"
        serving = {
            "request_runtime": args.request_runtime,
            "workers": args.workers,
            "events_retry_seconds": 0.5,
            "reload_poll_seconds": 0,
        }
        config.write_text(json.dumps({"serving": serving}))
        self.log = home / "server.log"
        command = [*VIDREC, "serve", "--artifacts", str(artifacts), "--events", events]
        command += ["--config", str(config), "--port", str(self.port)]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log
            )
        client, deadline = Client(self.port), time.monotonic() + 600
        while client.call("GET", "/readyz")[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vidrec serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Ingest(threading.Thread):
    """Posts batches of watch events; a refused batch (503, no connection) is sent again."""

    def __init__(
        self,
        port: int,
        users: np.ndarray,
        videos: np.ndarray,
        batch_size: int,
        batches: int | None,
        seed: int,
    ) -> None:
        super().__init__(daemon=True)
        self.client = Client(port)
        self.rng = np.random.default_rng(seed)
        self.users, self.videos, self.batch_size, self.batches = users, videos, batch_size, batches
        self.acknowledged = self.refused = 0
        self.first_ack_after: dict[str, float] = {}
        self.stop = threading.Event()

    def _batch(self) -> dict[str, Any]:
        now = int(time.time())
        users = self.rng.choice(self.users, self.batch_size)
        videos = self.rng.choice(self.videos, self.batch_size)
        return {
            "events": [
                {
                    "user_id": int(u),
                    "video_id": int(v),
                    "timestamp": now - int(self.rng.integers(0, 3600)),
                    "watch_seconds": float(self.rng.uniform(5, 600)),
                }
                for u, v in zip(users, videos, strict=True)
            ]
        }

    def run(self) -> None:
        sent = 0
        while not self.stop.is_set() and (self.batches is None or sent < self.batches):
            batch = self._batch()
            while not self.stop.is_set():
                status, body = self.client.call("POST", "/feedback", batch)
                if status == 200:
                    self.acknowledged += int(body["stored"])
                    self.first_ack_after.setdefault("time", time.monotonic())
                    break
                self.refused += 1
                time.sleep(RETRY_PAUSE_SECONDS)
            sent += 1


class Recommends(threading.Thread):
    """Recommend calls for known users, back to back, until stopped; counts every failure."""

    def __init__(self, port: int, users: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.client, self.users = Client(port), users
        self.latencies_ms: list[float] = []
        self.sources: dict[str, int] = {}
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(1)
        while not self.stop.is_set():
            started = time.perf_counter()
            status, body = self.client.call(
                "POST", "/recommend", {"user_id": int(rng.choice(self.users)), "k": 10}
            )
            self.latencies_ms.append((time.perf_counter() - started) * 1e3)
            if status != 200:
                self.failed.append(f"{status}: {str(body)[:200]}")
                continue
            source = body["history_source"]
            self.sources[source] = self.sources.get(source, 0) + 1


def ingestion(args: argparse.Namespace, port: int, users, videos) -> dict[str, Any]:
    clients = [
        Ingest(port, users, videos, args.batch_size, args.batches, seed)
        for seed in range(args.clients)
    ]
    started = time.perf_counter()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    seconds = time.perf_counter() - started
    acknowledged = sum(c.acknowledged for c in clients)
    return {
        "clients": args.clients,
        "batch_size": args.batch_size,
        "events": acknowledged,
        "seconds": round(seconds, 2),
        "events_per_second": round(acknowledged / seconds),
        "refused_batches": sum(c.refused for c in clients),
    }


def recommend_latency(args: argparse.Namespace, port: int, users: np.ndarray) -> dict[str, Any]:
    client, rng = Client(port), np.random.default_rng(2)
    client_ms, history_ms, sources = [], [], {}
    for _ in range(20):  # warm the connection and the server's caches
        client.call("POST", "/recommend", {"user_id": int(rng.choice(users)), "k": 10})
    for _ in range(args.recommends):
        started = time.perf_counter()
        status, body = client.call(
            "POST", "/recommend", {"user_id": int(rng.choice(users)), "k": 10}
        )
        client_ms.append((time.perf_counter() - started) * 1e3)
        if status != 200:
            raise RuntimeError(f"recommend failed: {status} {body}")
        history_ms.append(body["timings_ms"]["history"])
        sources[body["history_source"]] = sources.get(body["history_source"], 0) + 1
    return {
        "client": _percentiles(client_ms),
        "server_history_stage": _percentiles(history_ms),
        "history_source": sources,
    }


def _stored_events(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def outage(args: argparse.Namespace, port: int, users, videos, cluster, url) -> dict[str, Any]:
    before = _stored_events(url)
    ingest = [Ingest(port, users, videos, args.batch_size, None, 10 + i) for i in range(2)]
    recommends = Recommends(port, users)
    threads = [*ingest, recommends]
    for thread in threads:
        thread.start()
    time.sleep(args.load_seconds / 2)
    stopped = time.monotonic()
    cluster.stop()
    time.sleep(args.outage_seconds)
    for thread in ingest:
        thread.first_ack_after.clear()
    cluster.start()
    restarted = time.monotonic()
    probe, store_back = Client(port), None
    while store_back is None and time.monotonic() - restarted < 60:
        status, ready = probe.call("GET", "/readyz")
        if status == 200 and ready["store"]["state"] == "ok":
            store_back = time.monotonic() - restarted
        else:
            time.sleep(0.02)
    time.sleep(max(0.0, args.load_seconds / 2 - (time.monotonic() - restarted)))
    for thread in threads:
        thread.stop.set()
    for thread in threads:
        thread.join()
    acknowledged = sum(t.acknowledged for t in ingest)
    stored = _stored_events(url) - before
    first_write = min((t.first_ack_after.get("time", np.inf) for t in ingest), default=np.inf)
    return {
        "load_seconds": args.load_seconds,
        "stopped_seconds": round(restarted - stopped, 2),
        "events_acknowledged": acknowledged,
        "events_stored": stored,
        "lost_or_duplicated": stored - acknowledged,
        "refused_writes_503": sum(t.refused for t in ingest),
        "recommend_calls": len(recommends.latencies_ms),
        "recommend_failed": len(recommends.failed),
        "recommend_failures": recommends.failed[:5],
        "recommend_history_source": recommends.sources,
        "recommend_latency": _percentiles(recommends.latencies_ms),
        "readyz_store_ok_after_restart_s": None if store_back is None else round(store_back, 2),
        "first_acknowledged_write_after_restart_s": (
            None if not np.isfinite(first_write) else round(first_write - restarted, 2)
        ),
    }


def run_backend(
    args: argparse.Namespace, backend: str, artifacts: Path, users, videos, out: Path
) -> dict[str, Any]:
    from tests.pg_cluster import Cluster

    home = out / backend
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cluster = None
    if backend == "postgresql":
        cluster = Cluster(fsync=True)
        url = cluster.url()
    else:
        url = f"sqlite:///{(home / 'events.db').resolve()}"
    try:
        server = Server(args, artifacts, url, home)
        try:
            result: dict[str, Any] = {"events_url": url}
            result["ingestion"] = ingestion(args, server.port, users, videos)
            print(backend, "ingestion", json.dumps(result["ingestion"]), flush=True)
            result["recommend"] = recommend_latency(args, server.port, users)
            print(backend, "recommend", json.dumps(result["recommend"]), flush=True)
            if cluster is not None and args.outage_seconds > 0:
                result["outage"] = outage(args, server.port, users, videos, cluster, url)
                print(backend, "outage", json.dumps(result["outage"]), flush=True)
        finally:
            server.stop()
    finally:
        if cluster is not None:
            cluster.remove()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--clients", type=int, default=2, help="ingestion clients")
    parser.add_argument("--batch-size", type=int, default=100, help="events per POST /feedback")
    parser.add_argument("--batches", type=int, default=1000, help="batches per ingestion client")
    parser.add_argument("--recommends", type=int, default=2000, help="timed recommend calls")
    parser.add_argument("--load-seconds", type=float, default=30.0, help="outage phase length")
    parser.add_argument("--outage-seconds", type=float, default=8.0, help="PostgreSQL stopped")
    parser.add_argument("--workers", type=int, default=1, help="vidrec serve --workers")
    parser.add_argument("--request-runtime", default="litert", help="serving.request_runtime")
    parser.add_argument("--users", type=int, default=2_000, help="synthetic platform users")
    parser.add_argument("--videos", type=int, default=1_000, help="synthetic platform videos")
    parser.add_argument("--platform-events", type=int, default=60_000, help="platform events")
    parser.add_argument("--artifacts", help="a trained artifacts root to serve instead")
    parser.add_argument("--data", help="the data set --artifacts was trained on")
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "events"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts, users, videos = build_bundle(args, out)
    results: dict[str, Any] = {"command": " ".join(sys.argv), "cores": os.cpu_count()}
    for backend in args.backends:
        results[backend] = run_backend(args, backend, artifacts, users, videos, out)
        (out / "events.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    failed = [
        backend
        for backend in args.backends
        if "outage" in results[backend]
        and (
            results[backend]["outage"]["lost_or_duplicated"] != 0
            or results[backend]["outage"]["recommend_failed"] != 0
        )
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
