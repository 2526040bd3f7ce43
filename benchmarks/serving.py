"""Serving latency and throughput at catalogue scale (docs/design.md §9).

1. Builds (or reuses) a bundle over a synthetic platform of ``--videos`` videos with
   ``vidrec train``'s job at short training budgets: the point is the request path, not quality.
2. In-process: p50/p99 of `Recommender.recommend` (``--candidates`` candidates, users with at
   least ``history_length`` watches), per stage, next to a naive pipeline built the way a first
   prototype is - ``model.predict`` for both towers and the ranker, exact search with numpy -
   measured in the same run.
3. HTTP: ``vidrec serve`` on loopback under ``wrk`` (Debian package ``wrk``) for
   ``--http-seconds``: sustained req/s, latency p50/p99, errors, and how the connections were
   split over the workers halfway through (``ss -tnp``; `pipelines.serving.balance`).
4. Hot swap under load: a new bundle is published while ``wrk`` runs; the server must swap
   without a failed request.

    .venv/bin/python benchmarks/serving.py --videos 1000000 --out artifacts/bench/serving

Writes ``serving.json`` and ``serving.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "mean_ms": round(float(values.mean()), 3),
        "n": len(values),
    }


def build_bundle(args: argparse.Namespace, root: Path) -> None:
    """Synthetic platform + short training into ``root/artifacts`` (skipped when present)."""
    from core.bundle import BundleStore
    from core.config import (
        RankingConfig,
        RetrievalConfig,
        SyntheticConfig,
        VidrecConfig,
    )
    from pipelines.data.synthetic import generate_platform, write_dataset
    from pipelines.jobs.train import train_job

    store = BundleStore(root / "artifacts")
    if store.current_id() is not None and (root / "data").exists():
        print(f"reusing bundle {store.current_id()} in {root}")
        return
    started = time.perf_counter()
    dataset = generate_platform(
        SyntheticConfig(
            num_users=args.users,
            num_videos=args.videos,
            num_events=args.events,
            num_categories=24,
            num_creators=max(1, args.videos // 40),
            days=30,
            seed=0,
        )
    )
    write_dataset(dataset, root / "data")
    print(
        f"generated {args.videos} videos, {args.events} events in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    config = VidrecConfig(
        retrieval=RetrievalConfig(max_epochs=2, max_train_seconds=args.train_seconds),
        ranking=RankingConfig(
            max_epochs=2, max_train_seconds=args.train_seconds, max_examples=100_000
        ),
    )
    started = time.perf_counter()
    result = train_job(dataset, config, store, progress=True)
    print(f"bundle {result.bundle_id} in {time.perf_counter() - started:.0f} s", flush=True)


def in_process(args: argparse.Namespace, root: Path, scratch: Path) -> dict[str, object]:
    """p50/p99 of the real request path and of the naive one, same bundle, same users
    (``scratch``: a directory for this run's empty event stores)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from core.bundle import BundleStore
    from core.config import ServingConfig
    from pipelines.serve import RecommenderService
    from pipelines.serving.events import EventStore

    def load(runtime: str) -> tuple[object, float]:
        config = ServingConfig(candidates=args.candidates, request_runtime=runtime)
        service = RecommenderService(
            root / "artifacts",
            EventStore(Path(tempfile.mkdtemp(dir=scratch)) / "events.db"),
            config,
        )
        started = time.perf_counter()
        service.reload()
        return service.current, time.perf_counter() - started

    def measure(recommender, users: np.ndarray) -> tuple[dict, dict[str, list[float]]]:
        for user in users[:50]:
            recommender.recommend(user_id=int(user), now=now)
        total, stages = [], {}
        for user in users:
            t = time.perf_counter()
            result = recommender.recommend(user_id=int(user), now=now)
            total.append((time.perf_counter() - t) * 1e3)
            for stage, ms in result.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
        return _percentiles(total), stages

    recommender, load_seconds = load(args.runtime)
    state = recommender.state
    lengths = np.diff(state.history_indptr)
    users = state.history_user_ids[lengths >= recommender.history_length]
    rng = np.random.default_rng(0)
    users = rng.choice(users, size=min(args.requests, len(users)), replace=False)
    now = state.data_until
    fast, stages = measure(recommender, users)
    naive = naive_pipeline(recommender, users[: args.naive_requests], now)
    others = {}
    for runtime in args.compare_runtimes:
        if runtime != args.runtime:
            other, _ = load(runtime)
            others[runtime] = measure(other, users)[0]
            del other
    store = BundleStore(root / "artifacts")
    return {
        "bundle": store.current_id(),
        "videos": int(recommender.catalogue.num_rows - 2),
        "index": recommender.index.kind,
        "candidates": args.candidates,
        "history_length": recommender.history_length,
        "runtime": args.runtime,
        "load_seconds": round(load_seconds, 1),
        "recommend": fast,
        "stages_p50_ms": {k: round(float(np.median(v)), 3) for k, v in stages.items()},
        "stages_p99_ms": {k: round(float(np.percentile(v, 99)), 3) for k, v in stages.items()},
        "naive": naive,
        "speedup_p50": round(naive["p50_ms"] / fast["p50_ms"], 1),
        "other_runtimes": others,
    }


def naive_pipeline(recommender, users: np.ndarray, now: float) -> dict[str, float]:
    """The same request path on ``model.predict`` and exact numpy search."""
    import tensorflow as tf

    from ranking.blend import blend_scores

    class Wrapped(tf.keras.Model):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def call(self, inputs):
            return self.fn(*inputs) if isinstance(inputs, (list, tuple)) else self.fn(inputs)

    retrieval = recommender.bundle.retrieval
    user_model = Wrapped(retrieval.encoders.query_fn)
    ranker_model = Wrapped(recommender.ranker.score_fn)
    embeddings = recommender.catalogue.embeddings
    videos = embeddings[2:]
    samples = []
    for user in users:
        t = time.perf_counter()
        rows, ages, engagement, watched, *_ = recommender._history(int(user), None, now)
        padded = np.zeros((1, recommender.history_length), np.int64)
        padded[0, -len(rows) :] = rows
        user_row = recommender.features.user_rows(np.array([user]))
        attributes = recommender.features.user_attribute_matrix(user_row)
        query = user_model.predict([embeddings[padded], user_row, attributes], verbose=0)
        scores = videos @ query[0]
        scores[recommender.catalogue.rows(watched) - 2] = -np.inf
        top = np.argpartition(-scores, 300)[:300]
        top = top[np.argsort(-scores[top])] + 2
        # The same merge with the item-to-item sources and the same evidence as the fast path.
        merged, evidence = recommender._merge_sources(query, rows, top, watched, now, embeddings)
        candidates = merged.rows
        h = recommender.ranker_history
        recent_engagement = np.full((1, h), 0.5, np.float32)
        recent_ages = np.zeros((1, h), np.float32)
        n = min(h, len(rows))
        recent_engagement[0, h - n :] = np.nan_to_num(engagement[-n:], nan=0.5)
        recent_ages[0, h - n :] = ages[-n:]
        inputs = recommender.ranker.inputs(
            padded[:, -h:],
            recent_engagement,
            recent_ages,
            candidates[None],
            evidence[None],
            attributes,
            videos=recommender.catalogue.videos,
            embeddings=embeddings,
        )
        out = ranker_model.predict(inputs, verbose=0)
        blend_scores(out["watch_logits"], out["engagement"], 0.2)
        samples.append((time.perf_counter() - t) * 1e3)
    return _percentiles(samples)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _readyz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _wait_workers(port: int, workers: int, bundle_id: str | None, timeout: float) -> dict:
    """Seconds until each of ``workers`` processes reports ``bundle_id`` (any id if None)."""
    started = time.time()
    seen: dict[int, float] = {}
    while len(seen) < workers and time.time() - started < timeout:
        ready = _readyz(port)
        if (
            ready
            and ready.get("status") == "ready"
            and (bundle_id is None or ready["bundle_id"] == bundle_id)
        ):
            seen.setdefault(ready["worker"], round(time.time() - started, 1))
        time.sleep(0.2)
    return seen


def _memory_mb(pid: int) -> dict[str, float]:
    """Memory of a process and all its descendants (the uvicorn workers), in MB: ``pss``
    (proportional set size: a page shared by k processes counts 1/k in each, so the sum is
    what they hold together), ``rss`` (which counts shared pages in every process) and
    ``anonymous`` (private heap, counted proportionally)."""
    pids, frontier = {pid}, [pid]
    while frontier:
        children = _children(frontier.pop())
        frontier += children
        pids.update(children)
    fields = {"pss": "Pss", "rss": "Rss", "anonymous": "Pss_Anon"}
    total = dict.fromkeys(fields, 0.0)
    for candidate in pids:
        try:
            text = Path(f"/proc/{candidate}/smaps_rollup").read_text()
        except OSError:  # exited meanwhile
            continue
        for key, field in fields.items():
            match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
            total[key] += int(match.group(1)) / 1024 if match else 0.0
    return {key: round(value, 1) for key, value in total.items()}


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = task / "children"
        if children.exists():
            out += [int(c) for c in children.read_text().split()]
    return out + [g for c in out for g in _children(c)]


def _connections_per_worker(port: int) -> list[int]:
    """How the server's established connections on ``port`` are split over its processes
    (``ss -tnp``), largest first; empty when ``ss`` is missing."""
    if shutil.which("ss") is None:
        return []
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sorted(collections.Counter(re.findall(r"pid=(\d+)", out)).values(), reverse=True)


def _wrk(
    port: int, seconds: int, users: np.ndarray, connections: int, scratch: Path
) -> dict[str, object]:
    script = Path(tempfile.mkdtemp(dir=scratch)) / "recommend.lua"
    script.write_text(
        "local users = {" + ",".join(str(int(u)) for u in users) + "}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  local body = '{\"user_id\": ' .. users[(i % #users) + 1] .. ', \"k\": 10}'\n"
        "  return wrk.format('POST', '/recommend', {['Content-Type']='application/json'}, body)\n"
        "end\n"
    )
    split: list[int] = []
    # Sampled halfway, when the workers have had time to even out their connections.
    sampler = threading.Timer(seconds / 2, lambda: split.extend(_connections_per_worker(port)))
    sampler.start()
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sampler.join()

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1e3 if unit == "us" else value * 1e3 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "seconds": seconds,
        "connections": connections,
        "requests": requests,
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
        "connections_per_worker": split,
    }


def http(args: argparse.Namespace, root: Path, scratch: Path) -> dict[str, object]:
    """Sustained load on loopback, then a hot swap under load (``scratch``: a directory for
    the server's config and event store and wrk's script)."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not found: apt-get install wrk"}
    from core.bundle import BundleStore
    from pipelines.serving.state import ServingState

    store = BundleStore(root / "artifacts")
    state = ServingState.load(store.path(store.current_id()) / "serving")
    users = np.random.default_rng(1).choice(state.history_user_ids, 2_000, replace=False)
    port = _free_port()
    config = scratch / "config.json"
    config.write_text(
        json.dumps(
            {
                "serving": {
                    "candidates": args.candidates,
                    "reload_poll_seconds": 1.0,
                    "workers": args.workers,
                    "request_runtime": args.runtime,
                }
            }
        )
    )
    events = scratch / "events.db"
    server_log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "vidrec"),
            "serve",
            "--artifacts",
            str(root / "artifacts"),
            "--config",
            str(config),
            "--port",
            str(port),
            "--events",
            str(events),
        ],
        stdout=subprocess.DEVNULL,
        # A file, not a pipe nobody reads: a full pipe would block the server's logging.
        stderr=server_log,
    )
    before = store.current_id()
    try:
        if len(_wait_workers(port, args.workers, before, timeout=900)) < args.workers:
            raise RuntimeError(f"{args.workers} workers did not all become ready")
        _wrk(port, 5, users, args.connections[0], scratch)  # warm up
        sustained = []
        for connections in args.connections:
            run = _wrk(port, args.http_seconds, users, connections, scratch)
            print("sustained:", run, flush=True)
            sustained.append(run)
        memory_mb = _memory_mb(server.pid)
        copy_id = _republish(store, before)
        swapped: dict[int, float] = {}

        def publish_and_watch() -> None:
            time.sleep(5)
            store.publish(copy_id)
            swapped.update(_wait_workers(port, args.workers, copy_id, args.swap_seconds - 5))

        watcher = threading.Thread(target=publish_and_watch)
        watcher.start()
        swap = _wrk(port, args.swap_seconds, users, args.connections[0], scratch)
        watcher.join()
        swap["before"], swap["after"] = before, copy_id
        swap["workers_swapped"] = len(swapped)
        swap["swap_seconds_after_publish"] = sorted(swapped.values())
        swap["swapped"] = len(swapped) == args.workers
        print("hot swap:", swap, flush=True)
        store.publish(before)
        return {
            "workers": args.workers,
            "memory_mb": memory_mb,
            "sustained": sustained,
            "hot_swap": swap,
        }
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()


def _republish(store, bundle_id: str) -> str:
    """A second valid bundle with the same content (a stand-in for tonight's retrain)."""
    from core.bundle import new_bundle_id

    copy_id = new_bundle_id()
    source = store.path(bundle_id)
    target = store.bundles_dir / copy_id
    shutil.copytree(source, target, copy_function=os.link)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["bundle_id"] = copy_id
    manifest["parent"] = bundle_id
    (target / "manifest.json").unlink()
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy_id


def _split(run: dict) -> str:
    return "/".join(map(str, run.get("connections_per_worker", []))) or "?"


def markdown(result: dict) -> str:
    """The result as the tables quoted in the README."""
    fast = result["in_process"]
    lines = [
        f"In-process, {fast['videos']:,} videos ({fast['index']}), {fast['candidates']} "
        f"candidates, history {fast['history_length']}:",
        "",
        "| pipeline | p50 ms | p99 ms | requests |",
        "|---|---|---|---|",
        f"| vidrec ({fast['runtime']} request functions, Faiss) | {fast['recommend']['p50_ms']} | "
        f"{fast['recommend']['p99_ms']} | {fast['recommend']['n']} |",
        *(
            f"| vidrec ({runtime} request functions, Faiss) | {other['p50_ms']} | "
            f"{other['p99_ms']} | {other['n']} |"
            for runtime, other in fast.get("other_runtimes", {}).items()
        ),
        f"| naive (model.predict, exact search) | {fast['naive']['p50_ms']} | "
        f"{fast['naive']['p99_ms']} | {fast['naive']['n']} |",
        "",
        f"Speed-up at p50: {fast['speedup_p50']}x.",
        "",
        "| stage | p50 ms | p99 ms |",
        "|---|---|---|",
        *(f"| {k} | {v} | {fast['stages_p99_ms'][k]} |" for k, v in fast["stages_p50_ms"].items()),
    ]
    web = result.get("http", {})
    if "sustained" in web:
        h = web["hot_swap"]
        lines += [
            "",
            f"HTTP on loopback (wrk, `vidrec serve` with {web['workers']} workers; after the "
            f"sustained runs they held {web['memory_mb']['pss']:,.0f} MB PSS together, "
            f"{web['memory_mb']['anonymous']:,.0f} MB of it private heap; "
            f"{web['memory_mb']['rss']:,.0f} MB RSS summed):",
            "",
            "| run | req/s | p50 ms | p99 ms | non-2xx | socket errors | connections per worker |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| sustained {s['seconds']} s, {s['connections']} connections | "
                f"{s['req_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['non_2xx']} | "
                f"{s['socket_errors']} | {_split(s)} |"
                for s in web["sustained"]
            ),
            f"| hot swap {h['before']} -> {h['after']}, {h['seconds']} s, "
            f"{h['connections']} connections | {h['req_per_s']} | {h['p50_ms']} | "
            f"{h['p99_ms']} | {h['non_2xx']} | {h['socket_errors']} | {_split(h)} |",
            "",
            f"Hot swap: {h['workers_swapped']} of {web['workers']} workers serving the new "
            f"bundle, at {h['swap_seconds_after_publish']} s after it was published.",
        ]
    elif web:
        lines += ["", f"HTTP: {web}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--naive-requests", type=int, default=100)
    parser.add_argument("--http-seconds", type=int, default=60)
    parser.add_argument(
        "--swap-seconds", type=int, default=90, help="load during the hot swap (published at 5 s)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[4, 8],
        help="wrk connections per sustained run; the first also loads the hot swap",
    )
    parser.add_argument("--workers", type=int, default=2, help="serving.workers")
    parser.add_argument(
        "--runtime", default="litert", help="serving.request_runtime of the measured path"
    )
    parser.add_argument(
        "--compare-runtimes",
        nargs="*",
        default=["xla"],
        help="request runtimes also measured in-process on the same users",
    )
    parser.add_argument(
        "--skip-in-process", action="store_true", help="only the HTTP part (bundle must exist)"
    )
    parser.add_argument(
        "--skip-http",
        action="store_true",
        help="only the in-process part (pin it to one core with taskset; the HTTP part needs both)",
    )
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "serving"))
    parser.add_argument(
        "--build-only", action="store_true", help="make the bundle and stop (measure later)"
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    out = Path(args.out)
    root = out / f"platform-{args.videos}"
    if args.build_only:
        build_bundle(args, root)
        return 0
    # The measurement pins TensorFlow to one thread, which TensorFlow only allows before it
    # runs anything: a missing bundle is built in a child process first.
    built = subprocess.run([sys.executable, *sys.argv, "--build-only"], check=False)
    if built.returncode != 0:
        return built.returncode
    result: dict[str, object] = {}
    previous = out / "serving.json"
    with tempfile.TemporaryDirectory(prefix="vidrec-serving-") as scratch:
        if args.skip_in_process and previous.exists():
            result["in_process"] = json.loads(previous.read_text())["in_process"]
        else:
            result["in_process"] = in_process(args, root, Path(scratch))
        print(json.dumps(result["in_process"], indent=2), flush=True)
        skipped = {"skipped": "--skip-http"}
        result["http"] = skipped if args.skip_http else http(args, root, Path(scratch))
    from core.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "serving.json", result)
    atomic_write_text(out / "serving.md", markdown(result))
    print(markdown(result))
    print(f"wrote {out / 'serving.json'} and {out / 'serving.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
