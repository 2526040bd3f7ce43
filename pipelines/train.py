"""The training job: data -> leave-one-out split -> features -> retrieval -> a new bundle.

The model is trained on the split's training events and stopped early on its validation
events, so `pipelines.evaluate` can score it on the held-out test events of the same data;
the manifest records which data and split that was, and evaluation refuses any other.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from core.bundle import BundleStore, data_fingerprint
from core.config import VidrecConfig
from core.features import FeatureSpace
from core.schema import Dataset
from core.splits import leave_one_out
from pipelines import artifacts
from pipelines.distribute import make_strategy
from retrieval.train import train_retrieval

logger = logging.getLogger(__name__)

SPLIT_LEAVE_ONE_OUT = "leave_one_out"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of a training run.

    Attributes:
        bundle_id: The new bundle.
        bundle_dir: Its directory.
        validation: Validation metrics of the kept epoch.
        seconds: Wall time by stage.
    """

    bundle_id: str
    bundle_dir: Path
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
    """Trains retrieval on a leave-one-out split and writes (and publishes) a bundle.

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
    seconds["prepare"] = time.perf_counter() - started
    logger.info(
        "training on %s: %d training events, %d validation users",
        dataset.name,
        len(split.train),
        len(split.validation),
    )
    started = time.perf_counter()
    trained = train_retrieval(
        split.train,
        features,
        config.retrieval,
        validation=split.validation,
        strategy=make_strategy(),
    )
    seconds["train_retrieval"] = time.perf_counter() - started
    best = trained.history.epochs[trained.history.best_epoch - 1].validation
    started = time.perf_counter()
    with store.stage(parent=store.current_id()) as staged:
        artifacts.write_config(staged.path, config)
        artifacts.write_retrieval(staged.path, trained, progress=progress)
        bundle_dir = staged.commit(
            data=data_record(dataset, SPLIT_LEAVE_ONE_OUT),
            embedding_dim=config.retrieval.embedding_dim,
            counts={
                "videos": features.video_vocab.num_ids,
                "users": features.user_vocab.num_ids,
                "training_events": len(split.train),
            },
            metrics={"retrieval_validation": best},
        )
        bundle_id = staged.bundle_id
    seconds["write_bundle"] = time.perf_counter() - started
    if publish:
        store.publish(bundle_id)
    return TrainResult(bundle_id, bundle_dir, best, seconds)
