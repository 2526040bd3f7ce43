"""The training job: leave-one-out split -> features -> retrieval -> ranker -> index -> bundle.

The model is trained on the split's training events and stopped early on its validation
events, so `pipelines.evaluate` can score it on the held-out test events of the same data;
the manifest records which data and split that was, and evaluation refuses any other.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from core.bundle import BundleStore, data_fingerprint
from core.config import VidrecConfig
from core.features import FeatureSpace, engagement_labels
from core.schema import Dataset
from core.splits import leave_one_out
from core.vocab import FIRST_ID_ROW
from pipelines import artifacts, build_index
from pipelines.distribute import barrier, describe_task, is_chief, make_strategy
from pipelines.ranking_data import case_lists, training_lists
from ranking.train import train_ranker
from retrieval.train import train_retrieval

logger = logging.getLogger(__name__)

SPLIT_LEAVE_ONE_OUT = "leave_one_out"
MAX_RANKER_VALIDATION_CASES = 2_000


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


def train_job(
    dataset: Dataset,
    config: VidrecConfig,
    store: BundleStore,
    publish: bool = True,
    progress: bool = False,
) -> TrainResult:
    """Trains retrieval then the ranker on a leave-one-out split; writes (and publishes) a bundle.

    Args:
        dataset: Validated data.
        config: Full configuration.
        store: Where the bundle goes.
        publish: Move ``CURRENT`` to the new bundle.
        progress: Show progress bars.

    Returns:
        The new bundle and its validation metrics.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    split = leave_one_out(dataset.interactions)
    features = FeatureSpace.fit(config.features, dataset.videos, split.train, dataset.users)
    train_engagement = engagement_labels(split.train, dataset.videos)
    seconds["prepare"] = time.perf_counter() - started
    logger.info(
        "training on %s: %d training events, %d validation users",
        dataset.name,
        len(split.train),
        len(split.validation),
    )
    strategy = make_strategy()
    started = time.perf_counter()
    retrieval = train_retrieval(
        split.train, features, config.retrieval, validation=split.validation, strategy=strategy
    )
    seconds["train_retrieval"] = time.perf_counter() - started

    started = time.perf_counter()
    encoders = retrieval.encoders()
    catalogue = encoders.catalogue_embeddings(progress=progress)
    lists = training_lists(
        split.train, train_engagement, features, encoders, catalogue, config.ranking
    )
    sample = np.random.default_rng(config.ranking.seed).permutation(len(split.validation))
    validation_lists, _ = case_lists(
        split.validation.subset(np.sort(sample[:MAX_RANKER_VALIDATION_CASES])),
        features,
        encoders,
        catalogue,
        config.ranking.candidates,
        config.ranking.history_length,
    )
    seconds["ranker_lists"] = time.perf_counter() - started
    started = time.perf_counter()
    ranker = train_ranker(
        lists, features, catalogue, config.ranking, validation_lists, strategy=strategy
    )
    seconds["train_ranker"] = time.perf_counter() - started
    validation = {f"retrieval/{k}": v for k, v in retrieval.history.best.validation.items()}
    validation.update({f"ranking/{k}": v for k, v in ranker.history.best.validation.items()})
    if not is_chief():
        # Under several workers every worker trains, only the chief writes artifacts (two
        # writers would race on the bundle store); the others wait here until it has.
        logger.info("%s: training done; the chief writes the bundle", describe_task())
        barrier(strategy)
        return TrainResult("", None, validation, seconds)

    # Every published bundle is servable: build the index before anything is staged, so a build
    # that misses the recall target fails the job and leaves no bundle behind.
    started = time.perf_counter()
    index = build_index.build_and_verify(
        catalogue[FIRST_ID_ROW:],
        features.video_vocab.ids,
        config.index,
        build_index.validation_queries(encoders, catalogue, split.validation, config.index),
    )
    seconds["build_index"] = time.perf_counter() - started
    started = time.perf_counter()
    with store.stage(parent=store.current_id()) as staged:
        artifacts.write_config(staged.path, config)
        artifacts.write_retrieval(staged.path, retrieval, progress=progress, catalogue=catalogue)
        artifacts.write_ranking(staged.path, ranker)
        build_index.write_index(staged.path, index)
        bundle_dir = staged.commit(
            data=data_record(dataset, SPLIT_LEAVE_ONE_OUT),
            embedding_dim=config.retrieval.embedding_dim,
            counts={
                "videos": features.video_vocab.num_ids,
                "users": features.user_vocab.num_ids,
                "training_events": len(split.train),
                "indexed_videos": index.index.count,
            },
            metrics={"validation": validation, "seconds": seconds, "index": index.summary},
        )
        bundle_id = staged.bundle_id
    seconds["write_bundle"] = time.perf_counter() - started
    if publish:
        store.publish(bundle_id)
    barrier(strategy)  # the other workers exit once the chief has written
    return TrainResult(bundle_id, bundle_dir, validation, seconds)
