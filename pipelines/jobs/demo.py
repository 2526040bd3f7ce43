"""``vidrec demo``: the whole life of a model on the synthetic platform, in a few minutes.

Generate the platform -> count the item-to-item sources, train retrieval, then the ranker on
the merged candidates (leave-one-out, early stopping) -> build the index -> publish the bundle
-> evaluate both stages next to the baselines -> serve one user through the full request path,
with the list and the watch each result comes from.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from core.bundle import BundleStore
from core.config import ServingConfig, SyntheticConfig, VidrecConfig
from core.schema import Dataset
from pipelines import plots, tensorboard
from pipelines.data.synthetic import generate_platform, write_dataset
from pipelines.jobs.evaluate import evaluate_dataset, format_table, write_result
from pipelines.jobs.train import train_job
from pipelines.serve import Recommender, RecommenderService
from pipelines.serving.events import EventStore

logger = logging.getLogger(__name__)

# How the demo says which list brought an item.
SOURCE_WORDS = {
    "retrieval": "similar taste",
    "transition": "watched next by others",
    "covisit": "watched nearby by others",
    "creator": "the creator's next upload",
}


def demo_config(budget_seconds: float, seed: int) -> VidrecConfig:
    """Defaults with the training time capped to fit the demo's budget.

    Retrieval gets half the budget: its first epoch costs about 50 s on 2 cores (tracing
    included) and leaves it far from trained (validation NDCG@10 0.128 after one epoch, 0.185
    after three), and its embeddings are what the ranker reads too. The ranker, on each user's
    latest watches, needs far less (an epoch of about 25 s).
    """
    config = VidrecConfig()
    retrieval = dataclasses.replace(
        config.retrieval, max_train_seconds=0.5 * budget_seconds, seed=seed
    )
    # The most recent 60k watches are plenty for the ranker at this size and keep it quick.
    ranking = dataclasses.replace(
        config.ranking, max_train_seconds=0.15 * budget_seconds, max_examples=60_000, seed=seed
    )
    return dataclasses.replace(config, retrieval=retrieval, ranking=ranking)


def describe_user(
    dataset: Dataset, recommender: Recommender, user_id: int, attention_png: Path | None = None
) -> str:
    """A user's recent history and served recommendations, with titles and the "because".

    With ``attention_png``, also plots the ranker's attention over the history per item.
    """
    videos = dataset.videos.set_index("video_id")
    watched = dataset.interactions.loc[dataset.interactions["user_id"] == user_id, "video_id"]
    history = watched.to_numpy(np.int64)
    result = recommender.recommend(user_id=user_id, now=recommender.state.data_until, explain=True)

    def title(video_id: int) -> str:
        row = videos.loc[video_id]
        return f"{row['title'][:48]:<48} [{', '.join(row['categories'])}]"

    lines = [f"user {user_id}: {len(history)} watches, the 6 most recent:"]
    lines += [f"  · {title(int(v))}" for v in history[-6:]]
    lines.append(
        f"recommended next ({result.source}, bundle {result.bundle_id}, "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in result.timings_ms.items())
        + "):"
    )
    if attention_png is not None and result.attention is not None:
        plots.attention_heatmap(
            attention_png,
            f"ranker attention, user {user_id}",
            result.attention["weights"],
            [videos.loc[v, "title"][:28] for v in result.attention["history"]],
            [videos.loc[i["video_id"], "title"][:28] for i in result.items],
        )
        lines.append(f"attention over the history: {attention_png}")
    for item in result.items:
        lines.append(f"  {item['score']:+7.3f} {title(item['video_id'])}")
        if item["because"]:
            lines.append(
                f"           because you watched: {title(item['because'][0]).strip()} "
                f"({SOURCE_WORDS.get(item['source'], item['source'])})"
            )
    return "\n".join(lines)


def next_steps(
    workdir: Path, store: BundleStore, bundle_dir: Path, config: ServingConfig, user_id: int
) -> str:
    """How to serve the demo's bundle, open its inspector and its TensorBoard."""
    vidrec = Path(sys.executable).with_name("vidrec")
    serve = [
        str(vidrec), "serve", "--artifacts", str(store.root),
        "--events", str(workdir / "events.db"), "--port", str(config.port),
    ]  # fmt: skip
    return "\n".join(
        [
            "next: serve the bundle and look inside it",
            f"      {shlex.join(serve)}",
            f"      inspector: http://{config.host}:{config.port}/ui (try user {user_id}; "
            "the Bundle tab has the metrics and training curves)",
            f"      TensorBoard: {shlex.join(tensorboard.command(bundle_dir))}",
            f"      (then http://localhost:{tensorboard.DEFAULT_PORT}/)",
        ]
    )


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

    print(
        "[2/4] counting item-to-item sources, training two-tower retrieval, then the ranker on "
        "the merged candidates"
    )
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
    write_result(evaluation, store.evaluation_path(result.bundle_id))
    print(f"      report: {report}; training curve: {result.bundle_dir}/reports/")

    print("[4/4] serving: the published bundle answers through the full request path")
    config = VidrecConfig().serving
    service = RecommenderService(store.root, EventStore(workdir / "events.db"), config)
    service.reload()
    counts = dataset.interactions["user_id"].value_counts()
    user_id = int(counts.index[len(counts) // 3])
    png = workdir / "reports" / "attention.png"
    print(describe_user(dataset, service.current, user_id, attention_png=png))
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    print(next_steps(workdir, store, result.bundle_dir, config, user_id))
