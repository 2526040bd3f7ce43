"""Training: features -> sources -> retrieval -> index -> ranker on the merged candidates ->
stage gate -> bundle.

`train_stages` is the training both jobs share; `write_bundle` stages, writes and commits a
bundle from its result. `train_job` (``vidrec train``) runs them on a leave-one-out split: the
model trains on the split's training events and stops early on its validation events, so
`pipelines.jobs.evaluate` can score it on the held-out test events of the same data; the manifest
records which data and split that was, and evaluation refuses any other. The nightly retrain
(`pipelines.jobs.retrain`) runs them on a time cut with warm-started weights.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from candidates import CandidateSources
from candidates.recency import fit_recency_decay
from candidates.sources import RETRIEVAL, TWO_STAGE
from core.bundle import BundleStore, data_fingerprint
from core.config import RankingConfig, RetrievalConfig, VidrecConfig
from core.features import FeatureSpace, engagement_labels
from core.metrics import list_metrics
from core.schema import Dataset
from core.splits import EvalCases, leave_one_out
from core.vocab import FIRST_ID_ROW
from index import VideoIndex
from pipelines import artifacts, tensorboard
from pipelines.jobs import index_stage
from pipelines.jobs.distribute import (
    barrier,
    chief_consensus,
    describe_task,
    is_chief,
    make_strategy,
)
from pipelines.jobs.index_queries import validation_queries
from pipelines.jobs.optimizers import sparse_aware
from pipelines.jobs.ranking_data import Retriever, case_lists, list_scores, training_lists
from pipelines.jobs.weights import save_weights
from pipelines.serving.metadata import METADATA_FILE, write_video_metadata
from pipelines.serving.state import build_serving_state
from ranking.inputs import CandidateLists
from ranking.train import TrainedRanker, train_ranker
from retrieval.encoders import RetrievalEncoders
from retrieval.train import TrainedRetrieval, train_retrieval

logger = logging.getLogger(__name__)

SPLIT_LEAVE_ONE_OUT = "leave_one_out"
MAX_RANKER_VALIDATION_CASES = 2_000
# Validation cases the sources' recency decay is chosen on (each choice reads them all).
MAX_RECENCY_CASES = 20_000


@dataclasses.dataclass
class TrainedStages:
    """Both trained models and the index, ready to be written into a bundle.

    Attributes:
        features: The feature space both models read.
        retrieval: Trained two-tower model.
        ranker: Trained ranker.
        encoders: The retrieval towers as fixed-signature functions.
        catalogue: ``[num_rows, d] float32`` video embeddings by row.
        index: The tuned and verified index.
        sources: The item-to-item candidate sources.
        recency: How the sources' recency decay was chosen (`fit_recency_decay`'s record).
        gate: The stage gate's verdict (`stage_gate`).
        validation: Validation metrics of the kept epochs (``retrieval/...``, ``ranking/...``).
        seconds: Wall time by stage.
        training_events: Events the models trained on.
    """

    features: FeatureSpace
    retrieval: TrainedRetrieval
    ranker: TrainedRanker
    encoders: RetrievalEncoders
    catalogue: np.ndarray
    index: index_stage.IndexBuild
    sources: CandidateSources
    recency: dict[str, Any]
    gate: dict[str, Any]
    validation: dict[str, float]
    seconds: dict[str, float]
    training_events: int


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of a training run.

    Attributes:
        bundle_id: The new bundle (empty on the workers other than the chief of a
            multi-worker run: only the chief writes).
        bundle_dir: Its directory (None where ``bundle_id`` is empty).
        validation: Validation metrics of the kept epochs (``retrieval/...``, ``ranking/...``).
        seconds: Wall time by stage.
    """

    bundle_id: str
    bundle_dir: Path | None
    validation: dict[str, float]
    seconds: dict[str, float]


def data_record(dataset: Dataset, split: str) -> dict[str, object]:
    """What a manifest says about the data a bundle was trained on."""
    return {
        **dataset.summary(),
        "fingerprint": data_fingerprint(dataset.interactions),
        "split": split,
    }


def index_retriever(index: VideoIndex, features: FeatureSpace) -> Retriever:
    """Candidates from the serving index: the hard negatives the ranker will meet online."""
    vocab = features.video_vocab

    def retrieve(
        queries: np.ndarray, k: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        exclude = [vocab.id_of(rows[rows >= FIRST_ID_ROW]) for rows in excluded]
        scores, ids = index.search(queries, k, exclude=exclude)
        rows = np.where(ids >= 0, vocab.lookup(ids), 0)
        return rows, scores

    return retrieve


def _optimizer_factory(
    config: RetrievalConfig | RankingConfig,
) -> functools.partial[Any]:
    """`sparse_aware` (model -> optimizer) with one stage's learning rates."""
    return functools.partial(
        sparse_aware,
        learning_rate=config.learning_rate,
        sparse_rows=config.sparse_table_rows,
        sparse_learning_rate=config.sparse_learning_rate,
    )


def stage_gate(
    lists: CandidateLists, ranker: TrainedRanker, sources: CandidateSources
) -> dict[str, Any]:
    """Which order the bundle serves: the two-stage order, unless retrieval alone or one
    source alone orders the validation cases' merged candidates better (NDCG@10).

    A ranker that cannot beat the signals it reads has not learnt to use them (too little
    data or time); serving the better order instead costs nothing, and the manifest says so.

    Returns:
        ``{"order", "reason", "validation_ndcg@10": {order: value}, "cases"}``.
    """
    scorer = ranker.scorer()
    figures = {}
    for order in (TWO_STAGE, RETRIEVAL, *sources.graphs):
        scores = list_scores(lists, order, scorer, ranker.config.engagement_weight)
        figures[order] = round(list_metrics(scores, lists.target)["ndcg@10"], 5)
    best = max(figures, key=lambda order: figures[order])
    if figures[TWO_STAGE] >= figures[best]:
        order, reason = TWO_STAGE, "the ranker's order is the best on validation"
    else:
        order = best
        reason = (
            f"validation NDCG@10 of {best} ({figures[best]:.4f}) is above the two-stage order's "
            f"({figures[TWO_STAGE]:.4f}); serving {best}'s order of the merged candidates"
        )
    logger.info(
        "stage gate: serving %s (%s)", order, ", ".join(f"{k} {v:.4f}" for k, v in figures.items())
    )
    return {"order": order, "reason": reason, "validation_ndcg@10": figures, "cases": len(lists)}


def train_stages(
    train: pd.DataFrame,
    validation: EvalCases,
    features: FeatureSpace,
    videos: pd.DataFrame,
    config: VidrecConfig,
    initial_weights: dict[str, list[np.ndarray]] | None = None,
    progress: bool = False,
    gate: dict[str, Any] | None = None,
    recency: dict[str, Any] | None = None,
) -> TrainedStages:
    """Trains retrieval, builds the index, then trains the ranker on the merged candidates.

    Args:
        train: Validated training interactions.
        validation: Cases for early stopping (and for tuning the index on real queries).
        features: Feature space covering the catalogue and the training users.
        videos: The catalogue (for engagement labels: durations).
        config: Full configuration.
        initial_weights: ``{"retrieval": [...], "ranking": [...]}`` to warm start from.
        progress: Show progress bars.
        gate: A stage gate verdict to keep instead of judging again (the retrain's fold-in
            trains on its validation events, so they cannot judge it).
        recency: A recency decay record to keep instead of fitting one on ``validation``
            (`fit_recency_decay`; the fold-in again).

    Raises:
        IndexBuildError: The index cannot reach its recall target.
    """
    initial_weights = initial_weights or {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    sources = CandidateSources.build(train, videos, features.video_vocab, config.candidates)
    if recency is None:
        sources, recency = _fit_recency(sources, validation, features, config)
    else:
        sources = sources.with_recency_decay(recency["recency_decay"])
    seconds["candidate_sources"] = time.perf_counter() - started
    strategy = make_strategy()
    consensus = chief_consensus(strategy)
    started = time.perf_counter()
    retrieval = train_retrieval(
        train,
        features,
        config.retrieval,
        validation=validation,
        strategy=strategy,
        initial_weights=initial_weights.get("retrieval"),
        consensus=consensus,
        make_optimizer=_optimizer_factory(config.retrieval),
        progress=progress,
    )
    seconds["train_retrieval"] = time.perf_counter() - started

    started = time.perf_counter()
    encoders = retrieval.encoders()
    catalogue = encoders.catalogue_embeddings(progress=progress)
    index = index_stage.build_and_verify(
        catalogue[FIRST_ID_ROW:],
        features.video_vocab.ids,
        config.index,
        validation_queries(encoders, catalogue, validation, config.index),
    )
    seconds["build_index"] = time.perf_counter() - started

    started = time.perf_counter()
    lists = training_lists(
        train,
        engagement_labels(train, videos),
        features,
        encoders,
        catalogue,
        config.ranking,
        sources,
        # A flat index is exact search: numpy does it for a whole batch of examples at once.
        retrieve=None if index.index.kind == "flat" else index_retriever(index.index, features),
        progress=progress,
    )
    sample = np.random.default_rng(config.ranking.seed).permutation(len(validation))
    validation_lists, _ = case_lists(
        validation.subset(np.sort(sample[:MAX_RANKER_VALIDATION_CASES])),
        features,
        encoders,
        catalogue,
        config.ranking.candidates,
        config.ranking.history_length,
        sources,
    )
    seconds["ranker_lists"] = time.perf_counter() - started
    started = time.perf_counter()
    ranker = train_ranker(
        lists,
        features,
        catalogue,
        config.ranking,
        validation_lists,
        strategy=strategy,
        initial_weights=initial_weights.get("ranking"),
        consensus=consensus,
        make_optimizer=_optimizer_factory(config.ranking),
        progress=progress,
    )
    seconds["train_ranker"] = time.perf_counter() - started
    gate = gate or stage_gate(validation_lists, ranker, sources)
    scores = {f"retrieval/{k}": v for k, v in retrieval.history.best.validation.items()}
    scores.update({f"ranking/{k}": v for k, v in ranker.history.best.validation.items()})
    return TrainedStages(
        features,
        retrieval,
        ranker,
        encoders,
        catalogue,
        index,
        sources,
        recency,
        gate,
        scores,
        seconds,
        len(train),
    )


def _fit_recency(
    sources: CandidateSources,
    validation: EvalCases,
    features: FeatureSpace,
    config: VidrecConfig,
) -> tuple[CandidateSources, dict[str, Any]]:
    """`fit_recency_decay` on (a sample of) the validation cases, each with its first target."""
    sample = np.random.default_rng(config.ranking.seed).permutation(len(validation))
    cases = validation.subset(np.sort(sample[:MAX_RECENCY_CASES]))
    vocab = features.video_vocab
    histories = [vocab.lookup(cases.history(i)) for i in range(len(cases))]
    has_target = np.diff(cases.target_indptr) > 0
    targets = np.zeros(len(cases), dtype=np.int64)
    targets[has_target] = vocab.lookup(cases.target_video_ids[cases.target_indptr[:-1][has_target]])
    known = np.flatnonzero(targets >= FIRST_ID_ROW)
    return fit_recency_decay(
        sources,
        [histories[i][histories[i] >= FIRST_ID_ROW] for i in known],
        targets[known],
        config.candidates.recency_decay_choices,
    )


def write_bundle(
    store: BundleStore,
    stages: TrainedStages,
    dataset: Dataset,
    config: VidrecConfig,
    data: dict[str, Any],
    metrics: dict[str, Any],
    events_until_id: int = 0,
    extra_reports: Callable[[Path], None] | None = None,
) -> tuple[str, Path]:
    """Stages, writes and commits a bundle (not published).

    Args:
        store: Bundle store (the serving bundle becomes the parent).
        stages: Trained models and index.
        dataset: Everything known at build time, for the serving state (histories, popularity).
        config: Configuration written as ``config.json``.
        data: The manifest's data record.
        metrics: The manifest's metrics (the index summary is added).
        events_until_id: Largest event-store id included in ``dataset``.
        extra_reports: Writes more reports into the staged ``reports/`` directory.

    Returns:
        ``(bundle id, bundle directory)``.
    """
    with store.stage(parent=store.current_id()) as staged:
        path = staged.path
        artifacts.write_config(path, config)
        artifacts.write_retrieval(path, stages.retrieval, catalogue=stages.catalogue)
        save_weights(path / "retrieval", stages.retrieval.model.get_weights())
        artifacts.write_ranking(path, stages.ranker)
        if config.serving.request_runtime == "litert":
            artifacts.write_request_models(path, config, stages.features)
        artifacts.write_candidates(path, stages.sources)
        save_weights(path / "ranking", stages.ranker.model.get_weights())
        index_stage.write_index(path, stages.index)
        build_serving_state(
            dataset, stages.features, config.serving.popularity_days, events_until_id
        ).save(path / "serving")
        write_video_metadata(dataset.videos, path / "serving" / METADATA_FILE)
        write_tensorboard(path, stages, config, dataset, metrics)
        if extra_reports is not None:
            extra_reports(path / "reports")
        bundle_dir = staged.commit(
            data=data,
            embedding_dim=config.retrieval.embedding_dim,
            counts={
                "videos": stages.features.video_vocab.num_ids,
                "users": stages.features.user_vocab.num_ids,
                "training_events": stages.training_events,
                "indexed_videos": stages.index.index.count,
            },
            metrics={
                **metrics,
                "index": stages.index.summary,
                "stage_gate": stages.gate,
                "recency": stages.recency,
            },
        )
        return staged.bundle_id, bundle_dir


def write_tensorboard(
    bundle_dir: Path,
    stages: TrainedStages,
    config: VidrecConfig,
    dataset: Dataset,
    metrics: dict[str, Any],
) -> None:
    """The bundle's TensorBoard runs (`pipelines.tensorboard`): both stages' epochs, the
    index's tuning, the retrain gate when ``metrics`` holds one, the video embeddings."""
    for stage, history, section in (
        ("retrieval", stages.retrieval.history, config.retrieval),
        ("ranking", stages.ranker.history, config.ranking),
    ):
        tensorboard.write_training(
            bundle_dir, stage, history, section.learning_rate, section.max_train_seconds
        )
    tensorboard.write_index(bundle_dir, stages.index.summary, stages.index.index.report)
    gate = metrics.get("gate")
    if isinstance(gate, dict) and "new" in gate:
        tensorboard.write_gate(bundle_dir, gate)
    tensorboard.write_projector(
        bundle_dir,
        stages.catalogue[FIRST_ID_ROW:],
        stages.features.video_vocab.ids,
        dataset.videos,
        seed=config.index.seed,
    )


def train_job(
    dataset: Dataset,
    config: VidrecConfig,
    store: BundleStore,
    publish: bool = True,
    progress: bool = False,
) -> TrainResult:
    """Trains both stages on a leave-one-out split; writes (and publishes) a bundle.

    Args:
        dataset: Validated data.
        config: Full configuration.
        store: Where the bundle goes.
        publish: Move ``CURRENT`` to the new bundle.
        progress: Show progress bars.

    Returns:
        The new bundle and its validation metrics.
    """
    started = time.perf_counter()
    split = leave_one_out(dataset.interactions)
    features = FeatureSpace.fit(config.features, dataset.videos, split.train, dataset.users)
    prepare = time.perf_counter() - started
    logger.info(
        "training on %s: %d training events, %d validation users",
        dataset.name,
        len(split.train),
        len(split.validation),
    )
    stages = train_stages(
        split.train, split.validation, features, dataset.videos, config, progress=progress
    )
    seconds = {"prepare": prepare, **stages.seconds}
    strategy = make_strategy()
    if not is_chief():
        # Under several workers every worker trains, only the chief writes artifacts (two
        # writers would race on the bundle store); the others wait here until it has.
        logger.info("%s: training done; the chief writes the bundle", describe_task())
        barrier(strategy)
        return TrainResult("", None, stages.validation, seconds)
    started = time.perf_counter()
    bundle_id, bundle_dir = write_bundle(
        store,
        stages,
        dataset,
        config,
        data=data_record(dataset, SPLIT_LEAVE_ONE_OUT),
        metrics={"validation": stages.validation, "seconds": seconds},
    )
    seconds["write_bundle"] = time.perf_counter() - started
    if publish:
        store.publish(bundle_id)
    barrier(strategy)  # the other workers exit once the chief has written
    return TrainResult(bundle_id, bundle_dir, stages.validation, seconds)
