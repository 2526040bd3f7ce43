"""``vidrec demo``: the whole life of a model on the synthetic platform, in a few minutes.

Generate the platform -> train retrieval (leave-one-out, early stopping) -> write and publish a
bundle -> evaluate next to the baselines -> show one user's history and recommendations.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from core.bundle import BundleStore
from core.config import SyntheticConfig, VidrecConfig
from core.schema import Dataset
from pipelines.artifacts import RetrievalBundle, load_retrieval
from pipelines.evaluate import evaluate_dataset, format_table, write_result
from pipelines.synthetic import generate_platform, write_dataset
from pipelines.train import train_job

logger = logging.getLogger(__name__)


def demo_config(budget_seconds: float, seed: int) -> VidrecConfig:
    """Defaults with the training time capped to fit the demo's budget."""
    config = VidrecConfig()
    retrieval = dataclasses.replace(
        config.retrieval, max_train_seconds=0.35 * budget_seconds, seed=seed
    )
    ranking = dataclasses.replace(config.ranking, max_train_seconds=0.2 * budget_seconds, seed=seed)
    return dataclasses.replace(config, retrieval=retrieval, ranking=ranking)


def recommend_for_user(
    bundle: RetrievalBundle, history: np.ndarray, user_id: int, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` unseen videos for a history by exact search; ``(ids [k] int64, scores [k])``."""
    catalogue = bundle.catalogue_rows()
    query = bundle.encoders.query_embeddings(catalogue, [history], np.array([user_id]))[0]
    scores = bundle.video_embeddings @ query
    scores[np.isin(bundle.video_ids, history)] = -np.inf
    top = np.argsort(-scores)[:k]
    return bundle.video_ids[top], scores[top]


def describe_user(dataset: Dataset, bundle: RetrievalBundle, user_id: int) -> str:
    """A user's recent history and recommendations, with titles and categories."""
    videos = dataset.videos.set_index("video_id")
    watched = dataset.interactions.loc[dataset.interactions["user_id"] == user_id, "video_id"]
    history = watched.to_numpy(np.int64)
    ids, scores = recommend_for_user(bundle, history, user_id)

    def line(video_id: int, prefix: str) -> str:
        row = videos.loc[video_id]
        return f"  {prefix} {row['title'][:60]:<60} [{', '.join(row['categories'])}]"

    lines = [f"user {user_id}: {len(history)} watches, the 8 most recent:"]
    lines += [line(int(v), "·") for v in history[-8:]]
    lines.append("recommended next:")
    lines += [line(int(v), f"{s:+.3f}") for v, s in zip(ids, scores, strict=True)]
    return "\n".join(lines)


def run_demo(workdir: Path, seed: int = 0, budget_seconds: float = 240.0) -> None:
    """Runs the demo in ``workdir`` (data/, artifacts/, reports/) and prints what it did."""
    started = time.perf_counter()
    data_dir = workdir / "data"
    print(f"[1/4] generating the synthetic platform into {data_dir}")
    dataset = generate_platform(dataclasses.replace(SyntheticConfig(), seed=seed))
    write_dataset(dataset, data_dir)
    summary = dataset.summary()
    print(
        f"      {summary['users']} users, {summary['videos']} videos, "
        f"{summary['interactions']} watch events ({time.perf_counter() - started:.0f} s)"
    )

    print("[2/4] training two-tower retrieval, then the ranker on retrieval's own candidates")
    store = BundleStore(workdir / "artifacts")
    result = train_job(dataset, demo_config(budget_seconds, seed), store, progress=False)
    print(
        f"      bundle {result.bundle_id} published; validation "
        + "  ".join(f"{k} {v:.3f}" for k, v in sorted(result.validation.items()))
        + f" ({time.perf_counter() - started:.0f} s)"
    )

    print("[3/4] evaluating on the held-out last watch of every user, next to the baselines")
    evaluation = evaluate_dataset(dataset, VidrecConfig().evaluation, result.bundle_dir)
    print(format_table(evaluation))
    report = workdir / "reports" / "evaluation.json"
    write_result(evaluation, report)
    print(f"      report: {report}; training curve: {result.bundle_dir}/reports/")

    print("[4/4] recommendations")
    bundle = load_retrieval(result.bundle_dir)
    counts = dataset.interactions["user_id"].value_counts()
    user_id = int(counts.index[len(counts) // 3])
    print(describe_user(dataset, bundle, user_id))
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
