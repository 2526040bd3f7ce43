"""TensorBoard event files in a bundle (``reports/tensorboard/``), one run per concern.

::

    reports/tensorboard/
        retrieval/   per epoch: loss, every validation metric, learning rate, time budget used
        ranking/     the same for the ranker
        index/       per tuning trial: recall@K and ms per query; the verified operating point
        retrain/     new vs serving figures of the retrain gate (one step per metric)
        projector/   video embeddings (a sample) with titles and categories as metadata

The figures are the ones the jobs already record (`core.training.TrainingHistory`, the index
summary, the gate record); these files only show them, so a test reads them back and compares.
Written into the staged bundle before it is committed: they are checksummed like every file.
``vidrec tensorboard`` prints (or runs) the ``tensorboard --logdir`` line of a bundle.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from core.errors import BundleError
from core.io import atomic_write_text
from core.training import TrainingHistory

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "reports/tensorboard"
PROJECTOR_RUN = "projector"
DEFAULT_PORT = 6006
PROJECTOR_SAMPLE = 5_000  # TensorBoard's projector stays responsive up to a few thousand points
PROJECTOR_TENSOR = "video_embeddings"
# tf.train.Checkpoint's name for the variable below, which the projector config must name.
_CHECKPOINT_TENSOR = f"{PROJECTOR_TENSOR}/.ATTRIBUTES/VARIABLE_VALUE"


def write_training(
    bundle_dir: Path,
    stage: str,
    history: TrainingHistory,
    learning_rate: float,
    max_seconds: float,
) -> None:
    """Per-epoch scalars of one stage's training (run ``stage``).

    Args:
        bundle_dir: The staged bundle.
        stage: ``"retrieval"`` or ``"ranking"``.
        history: The stage's training history.
        learning_rate: The optimizer's (constant) learning rate.
        max_seconds: The stage's time budget (0: none; budget_used is then not written).
    """
    writer = tf.summary.create_file_writer(str(bundle_dir / TENSORBOARD_DIR / stage))
    elapsed = 0.0
    with writer.as_default():
        for epoch in history.epochs:
            elapsed += epoch.seconds
            step = epoch.epoch
            tf.summary.scalar("loss", epoch.loss, step=step)
            for name, value in epoch.validation.items():
                tf.summary.scalar(f"validation/{name}", value, step=step)
            tf.summary.scalar("learning_rate", learning_rate, step=step)
            tf.summary.scalar("seconds_elapsed", elapsed, step=step)
            if max_seconds > 0:
                tf.summary.scalar("budget_used", elapsed / max_seconds, step=step)
        tf.summary.text(
            "stop",
            f"best epoch {history.best_epoch} of {len(history.epochs)}: {history.stop_reason}",
            step=0,
        )
    writer.close()


def write_index(bundle_dir: Path, summary: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    """The index's tuning trials and verified operating point (run ``index``).

    Args:
        bundle_dir: The staged bundle.
        summary: The manifest's ``metrics["index"]``.
        report: ``VideoIndex.report`` (its ``tuning.trials``: params, recall, ms per query).
    """
    writer = tf.summary.create_file_writer(str(bundle_dir / TENSORBOARD_DIR / "index"))
    trials = report.get("tuning", {}).get("trials", [])
    with writer.as_default():
        for step, trial in enumerate(trials):
            tf.summary.scalar("tuning/recall_at_k", trial["recall"], step=step)
            tf.summary.scalar("tuning/ms_per_query", trial["ms_per_query"], step=step)
            for name, value in trial.get("params", {}).items():
                tf.summary.scalar(f"tuning/{name}", value, step=step)
        verification = summary.get("verification", {})
        if "at_k" in verification:
            tf.summary.scalar("verified/recall_at_k", verification["at_k"], step=0)
        for name, value in summary.get("latency_ms", {}).items():
            tf.summary.scalar(f"verified/latency_ms_{name}", value, step=0)
        point = ", ".join(f"{k}={v}" for k, v in summary.get("operating_point", {}).items())
        tf.summary.text("operating_point", f"{summary.get('factory')}: {point or 'exact'}", step=0)
    writer.close()


def write_gate(bundle_dir: Path, gate: Mapping[str, Any]) -> None:
    """The retrain gate: each metric of the new model and the serving one (run ``retrain``,
    tags ``gate/new/<metric>`` and ``gate/serving/<metric>``, step 0)."""
    writer = tf.summary.create_file_writer(str(bundle_dir / TENSORBOARD_DIR / "retrain"))
    with writer.as_default():
        for side in ("new", "serving"):
            for name, value in (gate.get(side) or {}).items():
                if isinstance(value, int | float) and np.isfinite(value):
                    tf.summary.scalar(f"gate/{side}/{name}", float(value), step=0)
        tf.summary.text("verdict", f"{gate.get('status')}: {gate.get('reason')}", step=0)
    writer.close()


def write_projector(
    bundle_dir: Path,
    embeddings: np.ndarray,
    video_ids: np.ndarray,
    videos: pd.DataFrame,
    sample: int = PROJECTOR_SAMPLE,
    seed: int = 0,
) -> int:
    """Video embeddings for TensorBoard's projector, titles and categories as metadata.

    Args:
        bundle_dir: The staged bundle.
        embeddings: ``[n, d] float32`` video embeddings.
        video_ids: ``[n] int64`` their ids.
        videos: A videos table (``video_id``, ``title``, ``categories``).
        sample: At most this many videos (drawn uniformly with ``seed`` when there are more).
        seed: Seed of the sample.

    Returns:
        How many videos were written.
    """
    directory = bundle_dir / TENSORBOARD_DIR / PROJECTOR_RUN
    directory.mkdir(parents=True, exist_ok=True)
    chosen = np.arange(len(video_ids))
    if len(chosen) > sample:
        chosen = np.sort(np.random.default_rng(seed).choice(len(chosen), sample, replace=False))
    table = videos.set_index("video_id")
    lines = ["video_id\ttitle\tcategories"]
    for video_id in video_ids[chosen].tolist():
        title, categories = "", ()
        if video_id in table.index:
            title, categories = table.at[video_id, "title"], table.at[video_id, "categories"]
        lines.append(f"{video_id}\t{_tsv(title)}\t{_tsv(', '.join(categories))}")
    atomic_write_text(directory / "metadata.tsv", "\n".join(lines) + "\n")
    variable = tf.Variable(np.asarray(embeddings[chosen], dtype=np.float32))
    tf.train.Checkpoint(**{PROJECTOR_TENSOR: variable}).save(str(directory / "embeddings.ckpt"))
    # An event file makes the directory a run: TensorBoard's projector reads the configs of
    # runs (and of the log directory itself), not of any directory below it.
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default():
        tf.summary.text("sample", f"{len(chosen)} of {len(video_ids)} videos (seed {seed})", step=0)
    writer.close()
    atomic_write_text(
        directory / "projector_config.pbtxt",
        "embeddings {\n"
        f'  tensor_name: "{_CHECKPOINT_TENSOR}"\n'
        '  metadata_path: "metadata.tsv"\n'
        "}\n",
    )
    return len(chosen)


def _tsv(text: str) -> str:
    """A metadata cell: tabs and line breaks would split the row."""
    return " ".join(str(text).split())


def command(bundle_dir: Path, port: int = DEFAULT_PORT) -> list[str]:
    """The ``tensorboard --logdir`` line of a bundle's event files (this environment's
    ``tensorboard``).

    Raises:
        BundleError: The bundle has no event files (built before they were written).
    """
    logdir = bundle_dir / TENSORBOARD_DIR
    if not logdir.is_dir():
        raise BundleError(
            f"{bundle_dir} has no TensorBoard event files ({TENSORBOARD_DIR}/): it was built "
            "before they were written; train, retrain or build-index writes them"
        )
    executable = Path(sys.executable).with_name("tensorboard")
    return [str(executable), "--logdir", str(logdir.resolve()), "--port", str(port)]
