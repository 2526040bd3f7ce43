"""Recommendation quality on real data: the model next to the baselines, in one run.

For each data set (default: MovieLens 100k and latest-small from ``../shared/data``): train a
bundle on the leave-one-out split exactly as ``vidrec train`` does, then evaluate it with the
four baselines on the held-out last watch of every user (full catalogue, seen filtered).

    .venv/bin/python benchmarks/quality.py --out artifacts/bench/quality

Writes ``quality.json`` and ``quality.md`` (the tables) under ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.bundle import BundleStore  # noqa: E402
from core.config import VidrecConfig, config_from_dict  # noqa: E402
from core.io import atomic_write_json, atomic_write_text  # noqa: E402
from pipelines.data.datasets import load_dataset  # noqa: E402
from pipelines.jobs.evaluate import evaluate_dataset, format_table  # noqa: E402
from pipelines.jobs.train import train_job  # noqa: E402

DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-latest-small"])
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "quality"))
    parser.add_argument("--config", help="JSON config sections applied to every data set")
    parser.add_argument("--max-train-seconds", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    payload = json.loads(Path(args.config).read_text()) if args.config else {}
    config = config_from_dict(VidrecConfig, payload)
    if args.max_train_seconds:
        config = dataclasses.replace(
            config,
            retrieval=dataclasses.replace(
                config.retrieval, max_train_seconds=args.max_train_seconds
            ),
        )
    out = Path(args.out)
    results, tables = {}, []
    for name in args.datasets:
        path = Path(args.data_dir) / name
        if not path.exists():
            print(f"skipping {name}: {path} not found")
            continue
        dataset = load_dataset(path)
        started = time.perf_counter()
        trained = train_job(dataset, config, BundleStore(out / name), publish=True)
        train_seconds = time.perf_counter() - started
        result = evaluate_dataset(dataset, config.evaluation, trained.bundle_dir)
        result.seconds["two_tower"] += train_seconds
        results[name] = {
            **result.as_dict(),
            "train_seconds": trained.seconds,
            "bundle": str(trained.bundle_dir),
        }
        tables.append(format_table(result))
        print(tables[-1], flush=True)
    atomic_write_json(out / "quality.json", {"config": payload, "results": results})
    atomic_write_text(out / "quality.md", "\n\n".join(f"```\n{t}\n```" for t in tables) + "\n")
    print(f"wrote {out / 'quality.json'} and {out / 'quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
