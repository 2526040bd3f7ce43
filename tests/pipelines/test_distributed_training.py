"""Two workers under MultiWorkerMirroredStrategy follow the single-worker loss curve.

Runs ``benchmarks/distributed.py`` small (about two minutes on 2 cores: most of it is the
one-off tracing of the distributed step in both worker processes).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_workers_follow_the_single_worker_loss_curve(tmp_path):
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "distributed.py"),
        "--out",
        str(tmp_path),
        "--users",
        "300",
        "--videos",
        "200",
        "--events",
        "8000",
        "--epochs",
        "3",
        "--timeout",
        "900",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1_200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(results["checks"].values()), results["checks"]
    single, workers = results["single"], results["workers"]
    assert len(single["loss"]) == 3 and [len(w["loss"]) for w in workers] == [3, 3]
    assert [w["replicas"] for w in workers] == [2, 2] and single["replicas"] == 1
    assert results["final_loss_relative_difference"] < 0.05
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000
    assert "final loss relative difference" in done.stdout
