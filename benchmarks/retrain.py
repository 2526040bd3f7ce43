"""The nightly retrain for real: simulated days through the API, kills, warm vs cold start.

``days``: a synthetic platform whose first days are the base data. ``vidrec serve`` runs on
loopback under a steady trickle of recommend calls; each simulated day, that day's watch
events are posted through ``POST /feedback``, then ``vidrec retrain --cutoff <end of day>``
runs; the server must pick the new bundle up by itself without a failed request. Every day's
gate metrics go in the report.

``kill``: ``vidrec retrain`` is SIGKILLed at several moments; after each kill the serving
bundle must verify, no half-written bundle may be visible, the lock must be free, and the next
run must succeed.

``warm``: the same retrain warm-started from the serving bundle and from scratch, wall time
and gate metrics side by side, on a synthetic platform (``--videos``/``--events``) and on
MovieLens latest-small.

``fold``: what folding the gate's window into the published models adds. The same nights run
twice from the same first bundle, with ``retrain.fold_in_epochs`` 0 and 1; each night's gate
scores the bundle published the night before on that night's window (the day it has not
seen), so the ``serving`` figures of nights 2.. compare the two policies on unseen days.

    .venv/bin/python benchmarks/retrain.py --parts days kill warm fold --out artifacts/bench/retrain

``--events-url postgresql://...`` runs ``days`` or ``kill`` against that event store instead of
a SQLite file: the server writes the posted events there and the retrain reads them back in
bulk. Each part expects it empty: one part per database.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VIDREC = str(REPO / ".venv" / "bin" / "vidrec")
DAY = 86_400

import numpy as np  # noqa: E402


def _post(port: int, path: str, payload: object, timeout: float = 30.0) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Traffic:
    """A steady trickle of recommend calls from a thread; counts every failure."""

    def __init__(self, port: int, users: np.ndarray, per_second: float) -> None:
        self.port, self.users, self.pause = port, users, 1.0 / per_second
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self.bundles: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            user = int(rng.choice(self.users))
            try:
                status, body = _post(self.port, "/recommend", {"user_id": user, "k": 10})
            except OSError as error:
                status, body = 0, {"error": str(error)}
            if status == 200:
                self.ok += 1
                self.bundles.add(body["bundle_id"])
            else:
                self.failed += 1
                self.failures.append(f"{status}: {body}")
            time.sleep(self.pause)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _config_file(root: Path, payload: dict) -> Path:
    path = root / "config.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def _small_config(window_days: float = 1.0) -> dict:
    return {
        "retrieval": {"max_epochs": 6, "patience": 2},
        "ranking": {"max_epochs": 3, "patience": 2, "max_examples": 100_000},
        "retrain": {"window_days": window_days},
        "serving": {"reload_poll_seconds": 1.0},
    }


def _platform(root: Path, users: int, videos: int, events: int, days: int, base_days: int):
    from core.config import SyntheticConfig
    from core.schema import Dataset
    from pipelines.data.synthetic import SPAN_START, generate_platform, write_dataset

    data = generate_platform(
        SyntheticConfig(
            num_users=users,
            num_videos=videos,
            num_events=events,
            days=days,
            num_creators=max(1, videos // 10),
            seed=0,
        )
    )
    cut = SPAN_START + base_days * DAY
    early = data.interactions["timestamp"] < cut
    base = Dataset("synthetic", data.interactions.loc[early], data.videos, data.users)
    write_dataset(base, root / "base")
    return data, base, SPAN_START


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[arg-type]


def initial_train(root: Path, artifacts: Path, config: Path) -> None:
    """``vidrec train`` on the base days: the bundle the simulated nights start from."""
    command = [VIDREC, "train", "--data", str(root / "base"), "--artifacts", str(artifacts)]
    trained = run([*command, "--config", str(config)])
    if trained.returncode != 0:
        raise RuntimeError(f"initial train failed: {trained.stderr[-2000:]}")


def days(args: argparse.Namespace, out: Path) -> dict:
    """Three (``--days``) simulated days through the serving API and the nightly job."""
    root = out / "days"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base_days = 7
    data, base, start = _platform(
        root, args.users, args.videos_small, args.events_small, base_days + args.days, base_days
    )
    config = _config_file(root, _small_config())
    artifacts, events = root / "artifacts", args.events_url or str(root / "events.db")
    started = time.perf_counter()
    initial_train(root, artifacts, config)
    print(f"initial bundle in {time.perf_counter() - started:.0f} s", flush=True)
    port = _free_port()
    server = subprocess.Popen(
        [
            VIDREC,
            "serve",
            "--artifacts",
            str(artifacts),
            "--events",
            str(events),
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "server.log", "w"),  # noqa: SIM115
    )
    rows = []
    try:
        deadline = time.time() + 300
        while True:
            try:
                ready = _get(port, "/readyz")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        users = base.interactions["user_id"].unique()
        with Traffic(port, users, per_second=args.traffic) as traffic:
            for day in range(base_days, base_days + args.days):
                day_start, day_end = start + day * DAY, start + (day + 1) * DAY
                mask = (data.interactions["timestamp"] >= day_start) & (
                    data.interactions["timestamp"] < day_end
                )
                todays = data.interactions.loc[mask]
                failed_before = traffic.failed
                posted = 0
                for batch in range(0, len(todays), 500):
                    chunk = todays.iloc[batch : batch + 500]
                    payload = {
                        "events": [
                            {
                                "user_id": int(r.user_id),
                                "video_id": int(r.video_id),
                                "timestamp": int(r.timestamp),
                                "watch_seconds": float(r.watch_seconds),
                            }
                            for r in chunk.itertuples()
                        ]
                    }
                    status, body = _post(port, "/feedback", payload)
                    if status != 200:
                        raise RuntimeError(f"feedback refused: {status} {body}")
                    posted += body["stored"]
                t = time.perf_counter()
                nightly = run(
                    [
                        VIDREC,
                        "retrain",
                        "--cutoff",
                        str(day_end),
                        "--data",
                        str(root / "base"),
                        "--artifacts",
                        str(artifacts),
                        "--events",
                        str(events),
                        "--config",
                        str(config),
                    ]
                )
                seconds = time.perf_counter() - t
                if nightly.returncode not in (0, 3):
                    raise RuntimeError(
                        f"retrain failed ({nightly.returncode}): {nightly.stderr[-3000:]}"
                    )
                current = (artifacts / "CURRENT").read_text().strip()
                deadline = time.time() + 120
                while _get(port, "/readyz").get("bundle_id") != current:
                    if time.time() > deadline:
                        raise RuntimeError("server did not pick up the new bundle")
                    time.sleep(0.5)
                gate = _latest_gate(artifacts)
                rows.append(
                    {
                        "day": day,
                        "events_posted": posted,
                        "cutoff": day_end,
                        "status": "published" if nightly.returncode == 0 else "gated_out",
                        "bundle": gate["bundle"],
                        "serving_after": current,
                        "new": gate["new"],
                        "serving": gate["serving"],
                        "retrain_seconds": round(seconds, 1),
                        "failed_requests": traffic.failed - failed_before,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        summary = {
            "requests_ok": traffic.ok,
            "requests_failed": traffic.failed,
            "failures": traffic.failures[:5],
            "bundles_seen": sorted(traffic.bundles),
            "initial_bundle": ready.get("bundle_id"),
        }
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    _plot_days(out / "days.png", rows)
    return {"days": rows, **summary}


def _latest_gate(artifacts: Path) -> dict:
    from core.bundle import BundleStore, read_manifest

    store = BundleStore(artifacts)
    newest = store.bundle_ids()[-1]
    gate = read_manifest(store.path(newest)).metrics.get("gate", {})
    return {"bundle": newest, "new": gate.get("new", {}), "serving": gate.get("serving", {})}


def _plot_days(path: Path, rows: list[dict]) -> None:
    from pipelines import plots

    if rows:
        plots.metric_comparison(
            path,
            "two-stage NDCG@10 on each day's window",
            {
                "new": {f"day {r['day']}": r["new"].get("ndcg@10", 0.0) for r in rows},
                "serving": {f"day {r['day']}": r["serving"].get("ndcg@10", 0.0) for r in rows},
            },
        )


def kill(args: argparse.Namespace, out: Path) -> dict:
    """SIGKILL a retrain at several moments; serving and the store must stay consistent."""
    from core.bundle import BundleStore, verify_bundle
    from core.lock import JobLock

    root = out / "kill"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data, _base, start = _platform(root, args.users, args.videos_small, args.events_small, 9, 7)
    config = _config_file(root, _small_config())
    artifacts = root / "artifacts"
    initial_train(root, artifacts, config)
    store = BundleStore(artifacts)
    serving = store.current_id()
    from pipelines.serving.events import EventStore, FeedbackEvent

    events = EventStore(args.events_url or root / "events.db")
    late = data.interactions.loc[data.interactions["timestamp"] >= start + 7 * DAY]
    events.append(
        [
            FeedbackEvent(
                int(r.user_id), int(r.video_id), int(r.timestamp), "watch", float(r.watch_seconds)
            )
            for r in late.itertuples()
        ]
    )
    command = [
        VIDREC,
        "retrain",
        "--cutoff",
        str(start + 9 * DAY),
        "--data",
        str(root / "base"),
        "--artifacts",
        str(artifacts),
        "--events",
        str(args.events_url or root / "events.db"),
        "--config",
        str(config),
    ]
    checks = []
    for after in args.kill_after:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(after)
        still_running = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait()
        verified = verify_bundle(store.path(store.current_id())).bundle_id
        committed_ok = all((store.path(b) / "manifest.json").is_file() for b in store.bundle_ids())
        with JobLock(artifacts, command="kill check"):
            lock_free = True
        checks.append(
            {
                "killed_after_s": after,
                "was_running": still_running,
                "current": store.current_id(),
                "current_verifies": verified == store.current_id(),
                "serving_unchanged": store.current_id() == serving,
                "committed_bundles_complete": committed_ok,
                "staging_leftovers": len(list((artifacts / "bundles").glob(".tmp-*"))),
                "lock_free": lock_free,
            }
        )
        print(json.dumps(checks[-1]), flush=True)
        serving = store.current_id()
    final = run(command)
    return {
        "kills": checks,
        "next_run_exit": final.returncode,
        "next_run_output": final.stdout.strip().splitlines()[-2:],
        "staging_leftovers_after": len(list((artifacts / "bundles").glob(".tmp-*"))),
    }


def warm(args: argparse.Namespace, out: Path) -> dict:
    """Warm against cold start: wall time and the gate's figures, same data, same cutoff."""
    from core.bundle import BundleStore
    from core.config import VidrecConfig, config_from_dict
    from pipelines.data.datasets import load_dataset
    from pipelines.jobs.retrain import retrain_job
    from pipelines.jobs.train import train_job
    from pipelines.serving.events import EventStore

    results = {}
    sources = []
    if args.videos_large:
        root = out / "warm-synthetic"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        _data, base, _start = _platform(
            root, args.users_large, args.videos_large, args.events_large, 30, 30
        )
        cutoff = int(base.interactions["timestamp"].max()) + 1
        sources.append(("synthetic", root, base, cutoff, 1.0))
    latest = REPO / ".." / "shared" / "data" / "ml-latest-small"
    if latest.exists():
        root = out / "warm-ml-latest-small"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        dataset = load_dataset(latest)
        cutoff = int(dataset.interactions["timestamp"].max()) + 1
        # Its last 90 days hold 14 active users, below retrain.min_window_users; a year holds 60.
        sources.append(("ml-latest-small", root, dataset, cutoff, 365.0))
    for name, root, dataset, cutoff, window_days in sources:
        from core.schema import Dataset

        payload = _small_config(window_days)
        config = config_from_dict(VidrecConfig, payload)
        # The serving bundle: trained on everything before the previous window.
        previous = cutoff - int(window_days * DAY)
        older = dataset.interactions["timestamp"] < previous
        first = Dataset(
            dataset.name, dataset.interactions.loc[older], dataset.videos, dataset.users
        )
        store_root = root / "artifacts"
        started = time.perf_counter()
        train_job(first, config, BundleStore(store_root))
        base_seconds = time.perf_counter() - started
        row = {"base_train_seconds": round(base_seconds, 1), "cutoff": cutoff}
        for mode in ("warm", "cold"):
            copy = root / f"artifacts-{mode}"
            shutil.copytree(store_root, copy)
            mode_config = config_from_dict(
                VidrecConfig,
                {**payload, "retrain": {**payload["retrain"], "warm_start": mode == "warm"}},
            )
            started = time.perf_counter()
            result = retrain_job(
                dataset,
                EventStore(root / f"events-{mode}.db"),
                BundleStore(copy),
                mode_config,
                cutoff,
            )
            row[mode] = {
                "seconds": round(time.perf_counter() - started, 1),
                "status": result.status,
                "new": result.new_metrics,
                "serving": result.serving_metrics,
            }
            print(name, mode, json.dumps(row[mode]), flush=True)
        results[name] = row
    return results


def fold(args: argparse.Namespace, out: Path) -> dict:
    """Nights with and without the fold-in; each judged by the next night's gate."""
    from core.bundle import BundleStore
    from core.config import VidrecConfig, config_from_dict
    from core.schema import Dataset
    from pipelines.jobs.retrain import retrain_job
    from pipelines.jobs.train import train_job
    from pipelines.serving.events import EventStore

    root = out / "fold"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base_days = 10
    data, base, start = _platform(
        root, args.users, args.videos_small, args.events_small, base_days + args.days, base_days
    )
    payload = _small_config()
    train_job(base, config_from_dict(VidrecConfig, payload), BundleStore(root / "first"))
    nights = {}
    for epochs in (0, 1):
        store_root = root / f"fold-{epochs}"
        shutil.copytree(root / "first", store_root)
        config = config_from_dict(
            VidrecConfig, {**payload, "retrain": {**payload["retrain"], "fold_in_epochs": epochs}}
        )
        rows = []
        for night in range(1, args.days + 1):
            cutoff = start + (base_days + night) * DAY
            known = data.interactions["timestamp"] < cutoff
            dataset = Dataset("synthetic", data.interactions.loc[known], data.videos, data.users)
            started = time.perf_counter()
            result = retrain_job(
                dataset,
                EventStore(root / f"events-{epochs}.db"),
                BundleStore(store_root),
                config,
                cutoff,
            )
            row = {
                "night": night,
                "status": result.status,
                "seconds": round(time.perf_counter() - started, 1),
                "new_ndcg@10": round(result.new_metrics.get("ndcg@10", 0.0), 4),
                # The bundle published the night before, on this night's (unseen) window.
                "serving_ndcg@10": round(result.serving_metrics.get("ndcg@10", 0.0), 4),
            }
            rows.append(row)
            print(f"fold-in epochs {epochs}", json.dumps(row), flush=True)
        nights[f"fold_in_epochs_{epochs}"] = rows
    return nights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["days", "kill", "warm", "fold"],
        choices=["days", "kill", "warm", "fold"],
    )
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--videos-small", type=int, default=2_000)
    parser.add_argument("--events-small", type=int, default=150_000)
    parser.add_argument("--traffic", type=float, default=10.0, help="recommend calls per second")
    parser.add_argument("--kill-after", type=float, nargs="+", default=[3, 15, 40, 70, 110])
    parser.add_argument("--users-large", type=int, default=60_000)
    parser.add_argument("--videos-large", type=int, default=100_000)
    parser.add_argument("--events-large", type=int, default=2_000_000)
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "retrain"))
    parser.add_argument(
        "--events-url",
        help="event store of `days` or `kill` (an empty PostgreSQL database, one part per "
        "database) instead of a SQLite file under --out",
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from core.io import atomic_write_json

    results = {}
    for part in args.parts:
        results[part] = {"days": days, "kill": kill, "warm": warm, "fold": fold}[part](args, out)
        atomic_write_json(out / "retrain.json", results)
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
