"""Two-tower training on several workers (MultiWorkerMirroredStrategy) against one worker.

Generates a small synthetic platform, then trains the two-tower model on it for a fixed number
of epochs twice with the same configuration and data: once as a single worker (no
``TF_CONFIG``), once as ``--workers`` processes on loopback ports, each with its own
``TF_CONFIG``, exactly as a cluster or Ray Train would start them. Both runs go through
`retrieval.train.train_retrieval`, the code ``vidrec train`` uses.

Checks (the exit status is 1 when one fails):

- both loss curves decrease monotonically, epoch after epoch;
- the final epoch's losses differ by at most ``--tolerance`` (relative);
- every worker ends with bit-identical weights and the same history (same stopping decision);
- only the chief writes (it exports the towers; the others write nothing).

    .venv/bin/python benchmarks/distributed.py --out artifacts/bench/distributed

Writes ``results.json`` and ``loss_curves.png`` under ``--out`` and prints both curves. The
workers share this machine's cores, so the wall times say nothing about speed-up on a cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.config import FeatureConfig, RetrievalConfig, SyntheticConfig  # noqa: E402
from core.io import atomic_write_json  # noqa: E402

logger = logging.getLogger("benchmarks.distributed")


@dataclasses.dataclass(frozen=True)
class Setup:
    """What both runs share."""

    users: int = 1_000
    videos: int = 500
    events: int = 40_000
    days: int = 20
    epochs: int = 6
    batch_size: int = 64
    embedding_dim: int = 32
    history_length: int = 20
    extra_negatives: int = 128
    seed: int = 0

    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(history_length=self.history_length, max_tokens=8)

    def retrieval_config(self) -> RetrievalConfig:
        return RetrievalConfig(
            embedding_dim=self.embedding_dim,
            num_heads=2,
            batch_size=self.batch_size,
            max_epochs=self.epochs,
            patience=self.epochs,  # run every epoch: the curves have the same length
            extra_negatives=self.extra_negatives,
            window_stride=self.history_length,
            validation_recall_at=50,
            seed=self.seed,
        )


# -- one training process ----------------------------------------------------------------


def run_worker(data_dir: Path, setup: Setup, result_path: Path, export_dir: Path) -> None:
    """Trains once in this process (one worker of a cluster, or a single worker).

    The strategy is created first: a multi-worker strategy must configure TensorFlow's
    collective ops before any other TensorFlow work.
    """
    from pipelines.jobs.distribute import (
        barrier,
        chief_consensus,
        describe_task,
        is_chief,
        make_strategy,
    )

    strategy = make_strategy()
    started = time.perf_counter()

    from core.features import FeatureSpace
    from core.splits import leave_one_out
    from pipelines.data.datasets import load_dataset
    from retrieval.train import train_retrieval

    dataset = load_dataset(data_dir)
    split = leave_one_out(dataset.interactions)
    features = FeatureSpace.fit(setup.feature_config(), dataset.videos, split.train, dataset.users)
    trained = train_retrieval(
        split.train,
        features,
        setup.retrieval_config(),
        validation=split.validation,
        strategy=strategy,
        consensus=chief_consensus(strategy),
    )
    seconds = time.perf_counter() - started
    digest = hashlib.sha256()
    for array in trained.model.get_weights():
        digest.update(array.tobytes())
    chief = is_chief()
    if chief:
        # Only the chief writes; under MWMS this must not need the other workers.
        trained.encoders().save(export_dir)
    barrier(strategy)  # the others wait for the chief's write, as `vidrec train` does
    history = trained.history
    atomic_write_json(
        result_path,
        {
            "task": describe_task(),
            "chief": chief,
            "replicas": strategy.num_replicas_in_sync,
            "loss": [e.loss for e in history.epochs],
            "validation": [e.validation for e in history.epochs],
            "epoch_seconds": [e.seconds for e in history.epochs],
            "best_epoch": history.best_epoch,
            "stop_reason": history.stop_reason,
            "num_examples": history.num_examples,
            "weights_sha256": digest.hexdigest(),
            "seconds": seconds,
            "exported": chief,
        },
    )


# -- the driver ----------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now (bound and released; a tiny race is possible)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch(
    out: Path, setup: Setup, name: str, workers: int, timeout: float
) -> list[dict[str, Any]]:
    """Runs one training as ``workers`` processes; returns each worker's result."""
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(workers) if workers > 1 else []
    processes = []
    for index in range(workers):
        env = dict(os.environ)
        env.pop("TF_CONFIG", None)
        if workers > 1:
            # Workers of this benchmark share one machine: give each its share of the cores
            # (on a cluster each worker has its own machine and keeps TensorFlow's defaults).
            threads = str(max(1, (os.cpu_count() or 1) // workers))
            env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
            env.setdefault("TF_NUM_INTEROP_THREADS", threads)
            env["TF_CONFIG"] = json.dumps(
                {
                    "cluster": {"worker": [f"localhost:{port}" for port in ports]},
                    "task": {"type": "worker", "index": index},
                }
            )
        log = open(run_dir / f"worker{index}.log", "w")  # noqa: SIM115 (closed below)
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--data",
            str(out / "data"),
            "--setup",
            json.dumps(dataclasses.asdict(setup)),
            "--result",
            str(run_dir / f"worker{index}.json"),
            "--export",
            str(run_dir / f"export{index}"),
        ]
        processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=log), log))
    deadline = time.monotonic() + timeout
    failed = []
    for index, (process, log) in enumerate(processes):
        try:
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            failed.append((index, code))
        log.close()
    if failed:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        raise RuntimeError(
            f"{name}: workers {failed} failed (exit code, None = timeout after {timeout:.0f} s); "
            f"see {run_dir}/worker*.log"
        )
    return [json.loads((run_dir / f"worker{i}.json").read_text()) for i in range(workers)]


def compare(single: dict[str, Any], workers: list[dict[str, Any]], tolerance: float) -> dict:
    """The checks listed in the module docstring."""
    chief = next(w for w in workers if w["chief"])
    final_single, final_multi = single["loss"][-1], chief["loss"][-1]
    relative = abs(final_multi - final_single) / abs(final_single)

    def monotone(losses: list[float]) -> bool:
        return all(b < a for a, b in itertools.pairwise(losses))

    same_weights = len({w["weights_sha256"] for w in workers}) == 1
    same_history = all(
        (w["loss"], w["validation"], w["best_epoch"], w["stop_reason"])
        == (chief["loss"], chief["validation"], chief["best_epoch"], chief["stop_reason"])
        for w in workers
    )
    checks = {
        "single_worker_loss_decreases": monotone(single["loss"]),
        "multi_worker_loss_decreases": monotone(chief["loss"]),
        f"final_loss_within_{tolerance:.0%}": relative <= tolerance,
        "workers_hold_identical_weights": same_weights,
        "workers_took_identical_decisions": same_history,
        "only_the_chief_wrote": [w["exported"] for w in workers] == [w["chief"] for w in workers]
        and sum(w["chief"] for w in workers) == 1,
    }
    return {"final_loss_relative_difference": relative, "checks": checks}


def stopping_key(result: dict[str, Any]) -> str | None:
    """The validation Recall@N early stopping watches (the largest N)."""
    recalls = [k for k in result["validation"][0] if k.startswith("recall@")]
    return max(recalls, key=lambda k: int(k.split("@")[1]), default=None)


def plot(path: Path, single: dict[str, Any], chief: dict[str, Any], workers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(single["loss"]) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, single["loss"], "o-", label="1 worker")
    left.plot(epochs, chief["loss"], "s--", label=f"{workers} workers (MWMS)")
    left.set_xlabel("epoch")
    left.set_ylabel("mean training loss")
    left.set_title("two-tower training loss")
    left.legend()
    key = stopping_key(single)
    if key:
        right.plot(epochs, [v[key] for v in single["validation"]], "o-", label="1 worker")
        right.plot(epochs, [v[key] for v in chief["validation"]], "s--", label=f"{workers} workers")
        right.set_ylabel(f"validation {key}")
        right.legend()
    right.set_xlabel("epoch")
    right.set_title("validation (early-stopping signal)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "distributed"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=Setup.users)
    parser.add_argument("--videos", type=int, default=Setup.videos)
    parser.add_argument("--events", type=int, default=Setup.events)
    parser.add_argument("--epochs", type=int, default=Setup.epochs)
    parser.add_argument("--batch-size", type=int, default=Setup.batch_size, help="global batch")
    parser.add_argument("--seed", type=int, default=Setup.seed)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest relative difference of the final epoch's loss (default 0.05)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    # Internal: one training process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    if args.worker:
        run_worker(
            Path(args.data), Setup(**json.loads(args.setup)), Path(args.result), Path(args.export)
        )
        return 0

    from pipelines.data.synthetic import generate_platform, write_dataset

    setup = Setup(
        users=args.users,
        videos=args.videos,
        events=args.events,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    out = Path(args.out)
    synthetic = SyntheticConfig(
        num_users=setup.users,
        num_videos=setup.videos,
        num_events=setup.events,
        num_categories=min(12, setup.videos),
        num_creators=max(1, setup.videos // 8),
        days=setup.days,
        seed=setup.seed,
    )
    write_dataset(generate_platform(synthetic), out / "data")
    started = time.perf_counter()
    (single,) = launch(out, setup, "single", 1, args.timeout)
    single_seconds = time.perf_counter() - started
    started = time.perf_counter()
    workers = launch(out, setup, f"workers{args.workers}", args.workers, args.timeout)
    multi_seconds = time.perf_counter() - started
    chief = next(w for w in workers if w["chief"])
    comparison = compare(single, workers, args.tolerance)

    print(f"two-tower training, {setup.epochs} epochs, global batch {setup.batch_size}, ")
    print(
        f"{setup.users} users / {setup.videos} videos / {setup.events} events, "
        f"{single['num_examples']} training examples"
    )
    key = stopping_key(single) or "-"
    print(
        f"{'epoch':>5}  {'loss 1 worker':>13}  {f'loss {args.workers} workers':>15}  "
        f"{'val ' + key + ' 1w':>16}  {'val ' + key + f' {args.workers}w':>16}"
    )
    for epoch, (a, b) in enumerate(zip(single["loss"], chief["loss"], strict=True), start=1):
        va = single["validation"][epoch - 1].get(key, float("nan"))
        vb = chief["validation"][epoch - 1].get(key, float("nan"))
        print(f"{epoch:>5}  {a:>13.4f}  {b:>15.4f}  {va:>16.4f}  {vb:>16.4f}")
    print(
        f"final loss relative difference {comparison['final_loss_relative_difference']:.2%} "
        f"(tolerance {args.tolerance:.0%}); wall time {single_seconds:.0f} s (1 worker) vs "
        f"{multi_seconds:.0f} s ({args.workers} workers sharing this machine's cores)"
    )
    for name, ok in comparison["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")

    results = {
        "setup": dataclasses.asdict(setup),
        "single": single,
        "workers": workers,
        "wall_seconds": {"single": single_seconds, "multi": multi_seconds},
        **comparison,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    atomic_write_json(out / "results.json", results)
    plot(out / "loss_curves.png", single, chief, args.workers)
    print(f"wrote {out / 'results.json'} and {out / 'loss_curves.png'}")
    return 0 if all(comparison["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
