"""Offline build benchmark: `vidrec build-index` over a 1M-video catalogue on this machine.

Three processes, so that each figure is the build's own:

1. ``setup`` (cached in ``--workdir``): a synthetic platform of ``--videos`` videos and
   ``--events`` watch events, a `FeatureSpace` over the whole catalogue, and a two-tower model
   trained briefly (one epoch over the training events of a sample of users, ``--train-events``):
   the point is a real video tower and user tower, not quality. It is written as a published
   bundle with no index (``vocab/``, ``retrieval/``, ``config.json``).
2. ``build``: `pipelines.jobs.build_index.build_index_job` on that bundle with the data set, timed
   stage by stage: read the data set; load the bundle and grow its feature space with the data
   set's catalogue (``load``); embed every video with the video tower (``embed``); user-tower
   queries of users' recent histories (``queries``); build, tune and verify the Faiss index
   (``index``); write and publish the new bundle (``write``). A thread samples the process'
   resident memory every 50 ms to attribute peaks to stages.
3. this process, which waits for the build with ``os.wait4`` and reports the child's max RSS
   (``ru_maxrss``: the build alone, not the setup or training).

docs/design.md §9 targets embed + index + verify (``embed`` + ``queries`` + ``index``) within
3 minutes and a peak below 3 GB. ``OMP_WAIT_POLICY=PASSIVE`` is set before Faiss is imported,
as the ``vidrec`` CLI does.

    .venv/bin/python benchmarks/build.py                      # 1M videos, 2M events
    .venv/bin/python benchmarks/build.py --videos 100000 --events 400000 --users 10000

Writes ``results.json`` and ``results.md`` under ``--out`` (default artifacts/bench/build).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_SECONDS = 180.0
TARGET_PEAK_MB = 3 * 1024.0
TARGET_STAGES = ("embed", "queries", "index")
STAGES = ("read_data", "load", "embed", "queries", "index", "write")


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (from /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class MemorySampler:
    """Samples `rss_mb` and `cpu_seconds` every ``interval`` seconds in a daemon thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_mb(), cpu_seconds()))
            self._stop.wait(self.interval)

    def cpu_between(self, start: float, stop: float) -> float:
        """CPU seconds used in ``[start, stop]`` (to the sampling interval)."""
        inside = [cpu for t, _, cpu in self.samples if start <= t <= stop]
        before = [cpu for t, _, cpu in self.samples if t < start]
        if not inside:
            return float("nan")
        return round(inside[-1] - (before[-1] if before else inside[0]), 1)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_between(self, start: float, stop: float) -> float:
        """Largest sample taken in ``[start, stop]`` (MiB)."""
        values = [mb for t, mb, _ in self.samples if start <= t <= stop]
        return round(max(values), 1) if values else float("nan")


# ------------------------------------------------------------------------------ setup


def run_setup(args: argparse.Namespace) -> None:
    """Generates the platform and trains a bundle (no index) under ``--workdir``."""
    import numpy as np

    from core.bundle import BundleStore, data_fingerprint
    from core.config import FeatureConfig, RetrievalConfig, SyntheticConfig, VidrecConfig
    from core.features import FeatureSpace
    from core.splits import leave_one_out
    from pipelines import artifacts
    from pipelines.data.synthetic import generate_platform, write_dataset
    from retrieval.train import train_retrieval

    workdir = Path(args.workdir)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    dataset = generate_platform(
        SyntheticConfig(
            num_users=args.users,
            num_videos=args.videos,
            num_events=args.events,
            num_creators=max(1, args.videos // 50),
            seed=args.seed,
        )
    )
    write_dataset(dataset, workdir / "data")
    seconds["generate"] = time.perf_counter() - started

    started = time.perf_counter()
    split = leave_one_out(dataset.interactions)
    features = FeatureSpace.fit(FeatureConfig(), dataset.videos, split.train, dataset.users)
    seconds["features"] = time.perf_counter() - started

    started = time.perf_counter()
    users = split.train["user_id"].to_numpy(np.int64)
    per_user = max(1.0, len(users) / max(1, len(np.unique(users))))
    sample = np.random.default_rng(args.seed).permutation(np.unique(users))
    sample = sample[: max(1, int(args.train_events / per_user))]
    train = split.train.loc[np.isin(users, sample)].reset_index(drop=True)
    retrieval_config = RetrievalConfig(max_epochs=1, batch_size=args.batch_size, seed=args.seed)
    retrieval = train_retrieval(train, features, retrieval_config)
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    config = VidrecConfig(retrieval=retrieval_config)
    store = BundleStore(workdir / "artifacts")
    with store.stage() as staged:
        artifacts.write_config(staged.path, config)
        artifacts.write_retrieval(staged.path, retrieval, progress=True)
        staged.commit(
            data={
                **dataset.summary(),
                "fingerprint": data_fingerprint(dataset.interactions),
                "split": "leave_one_out",
                "trained_on_events": len(train),
            },
            embedding_dim=retrieval_config.embedding_dim,
            counts={
                "videos": features.video_vocab.num_ids,
                "users": features.user_vocab.num_ids,
                "training_events": len(train),
            },
            metrics={"seconds": seconds},
        )
        bundle_id = staged.bundle_id
    store.publish(bundle_id)
    seconds["write_bundle"] = time.perf_counter() - started
    (workdir / "setup.json").write_text(
        json.dumps(
            {
                "key": setup_key(args),
                "bundle_id": bundle_id,
                "training_events": len(train),
                "seconds": {k: round(v, 1) for k, v in seconds.items()},
            },
            indent=2,
        )
    )


def setup_key(args: argparse.Namespace) -> dict[str, int]:
    """What the cached setup depends on."""
    return {
        "videos": args.videos,
        "events": args.events,
        "users": args.users,
        "train_events": args.train_events,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }


# ------------------------------------------------------------------------------ build


def run_build(args: argparse.Namespace) -> None:
    """The measured build (child process); writes its timings to ``--result``."""
    with MemorySampler() as sampler:
        begin = time.perf_counter()
        imports_mb = rss_mb()
        from core.bundle import BundleStore
        from pipelines.data.datasets import load_dataset
        from pipelines.jobs.build_index import build_index_job

        imported = time.perf_counter()
        datasets = [load_dataset(Path(args.workdir) / "data")]
        loaded = time.perf_counter()
        override = json.loads(Path(args.index_config).read_text()) if args.index_config else None
        store = BundleStore(Path(args.workdir) / "artifacts")
        source = store.current_id()
        job_started = time.perf_counter()
        result = build_index_job(  # handed over without a reference here, as the CLI does
            store, bundle=source, dataset=datasets.pop(), config_override=override, progress=True
        )
        done = time.perf_counter()
    boundaries = {"imports": (begin, imported), "read_data": (imported, loaded)}
    cursor = job_started
    for stage in ("load", "embed", "queries", "index", "write"):
        boundaries[stage] = (cursor, cursor + result.seconds[stage])
        cursor += result.seconds[stage]
    payload = {
        "source_bundle": source,
        "bundle_id": result.bundle_id,
        "videos": result.videos,
        "added_videos": result.added_videos,
        "seconds": {
            "imports": round(imported - begin, 3),
            "read_data": round(loaded - imported, 3),
            **result.seconds,
            "job_total": round(done - job_started, 3),
        },
        "peak_rss_mb_by_stage": {
            stage: sampler.peak_between(start, stop) for stage, (start, stop) in boundaries.items()
        },
        "cpu_seconds_by_stage": {
            stage: sampler.cpu_between(start, stop) for stage, (start, stop) in boundaries.items()
        },
        "rss_mb_before_imports": round(imports_mb, 1),
        "index": result.index,
    }
    Path(args.result).write_text(json.dumps(payload, indent=2))


# ------------------------------------------------------------------------------ report


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per stage, then the target lines and the index."""
    build = results["build"]
    seconds, peaks = build["seconds"], build["peak_rss_mb_by_stage"]
    cpu = build["cpu_seconds_by_stage"]
    lines = [
        "| stage | wall s | CPU s | peak RSS MiB (sampled) |",
        "|---|---|---|---|",
    ]
    for stage in STAGES:
        lines.append(
            f"| {stage} | {seconds[stage]:.1f} | {cpu.get(stage, float('nan')):.1f} | "
            f"{peaks.get(stage, float('nan')):.0f} |"
        )
    target = sum(seconds[s] for s in TARGET_STAGES)
    target_cpu = sum(cpu[s] for s in TARGET_STAGES)
    peak = results["peak_rss_mb"]
    lines += [
        f"| **embed + index + verify** ({' + '.join(TARGET_STAGES)}) | **{target:.1f}** "
        f"(target ≤ {TARGET_SECONDS:.0f}: {'met' if target <= TARGET_SECONDS else 'MISSED'}) | "
        f"{target_cpu:.1f} | |",
        f"| whole build process (imports + read + job) | "
        f"{seconds['imports'] + seconds['read_data'] + seconds['job_total']:.1f} | "
        f"{results['build_process_cpu_seconds']:.1f} | |",
        f"| **peak memory of the build process** (ru_maxrss) | | | **{peak:.0f}** "
        f"(target ≤ {TARGET_PEAK_MB:.0f}: {'met' if peak <= TARGET_PEAK_MB else 'MISSED'}) |",
    ]
    index = build["index"]
    verification, tuning = index["verification"], index["tuning"]
    lines += [
        "",
        f"Index: {index['kind']} `{index['factory']}` over {index['count']:,} videos, "
        f"operating point {json.dumps(index['operating_point'])}; build "
        f"{index['seconds']['build']:.1f} s, tune {index['seconds']['tune']:.1f} s, verify "
        f"{index['seconds']['verify']:.1f} s.",
        f"Recall@{verification['k']} vs exact: {tuning['at_k']:.4f} on {tuning['queries']} tuning "
        f"queries, {verification['at_k']:.4f} (± {verification['at_k_stderr']:.4f}) on "
        f"{verification['queries']} held-out {index['query_source']} queries "
        f"(target {index['target_recall']}); recall@10 {verification['at_10']}.",
        f"Single-query latency p50 {index['latency_ms']['p50']:.3f} ms, "
        f"p99 {index['latency_ms']['p99']:.3f} ms; batch {index['batch_qps']:.0f} queries/s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument(
        "--train-events",
        type=int,
        default=300_000,
        help="training events of the brief retrieval training (a sample of users)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="retrieval.batch_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index-config", help="JSON file: config sections for build-index")
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "build"))
    parser.add_argument("--workdir", help="data and bundles (default <out>/work, reused)")
    parser.add_argument("--stage", choices=("all", "setup", "build"), default="all")
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    args.workdir = args.workdir or str(out / "work")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s"
    )
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.stage == "setup":
        run_setup(args)
        return 0
    if args.stage == "build":
        run_build(args)
        return 0

    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir)
    setup_file = workdir / "setup.json"
    cached = json.loads(setup_file.read_text()) if setup_file.is_file() else None
    child = [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])]
    if cached is None or cached.get("key") != setup_key(args):
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        print(f"setup: generating and training under {workdir} (cached for later runs)")
        subprocess.run([*child, "--stage", "setup", "--workdir", str(workdir)], check=True)
        cached = json.loads(setup_file.read_text())
    else:
        print(f"setup: reusing {workdir} (bundle {cached['bundle_id']})")
        _reset_store(workdir / "artifacts", cached["bundle_id"])

    result_file = out / "build_child.json"
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*child, "--stage", "build", "--workdir", str(workdir), "--result", str(result_file)]
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"build failed with exit code {proc.returncode}", file=sys.stderr)
        return 1
    results = {
        "command": "python benchmarks/build.py " + " ".join(argv or sys.argv[1:]),
        "setup": cached,
        "build": json.loads(result_file.read_text()),
        "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        "build_process_wall_seconds": round(wall, 1),
        "build_process_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
    }
    results["embed_index_verify_seconds"] = round(
        sum(results["build"]["seconds"][s] for s in TARGET_STAGES), 1
    )
    markdown = (
        f"`{results['command']}` — {args.videos:,} videos, {args.events:,} events, "
        f"{os.cpu_count()} cores; load average {results['load_average_before']} before, "
        f"{results['load_average_after']} after\n\n{table(results)}\n"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown)
    print(markdown)
    return 0


def _reset_store(root: Path, bundle_id: str) -> None:
    """Serves the setup's bundle again and drops earlier build outputs (a rerun is comparable)."""
    import shutil

    for path in (root / "bundles").iterdir():
        if path.name != bundle_id:
            shutil.rmtree(path)
    (root / "CURRENT").write_text(bundle_id + "\n")


if __name__ == "__main__":
    sys.exit(main())
