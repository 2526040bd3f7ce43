"""Training the two-tower model: windows in, early stopping on validation Recall@N.

The same loop runs on one worker or on several under `tf.distribute.MultiWorkerMirroredStrategy`
(docs/design.md §10). Under several workers:

- ``batch_size`` is the *global* batch: Keras splits each batch of the input pipeline across the
  replicas, so N workers take the same optimizer steps on the same batches as one worker would.
- Every worker builds the same input pipeline (same windows, same shuffle seed) and tf.data
  auto-sharding by element (``AutoShardPolicy.DATA``) gives each its part of every batch; that is
  a partition only because the order is deterministic, hence the fixed shuffle seed.
- The loss is scaled for the cross-replica gradient sum and each query sees every replica's
  targets as negatives (`TwoTowerModel.compute_loss`).
- Every worker validates, and `EarlyStopping` decides on the chief's figures, broadcast to all
  (the ``consensus`` argument), so all workers stop after the same epoch and keep the same weights.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from core.config import RetrievalConfig
from core.errors import DataError
from core.features import FeatureSpace
from core.metrics import evaluate_scorer
from core.sequences import Windows, training_windows
from core.splits import EvalCases
from core.training import TrainingHistory
from modeling.training import TrainingLoop
from retrieval.encoders import RetrievalEncoders
from retrieval.model import TwoTowerModel

logger = logging.getLogger(__name__)

MAX_VALIDATION_CASES = 3_000


@dataclasses.dataclass
class TrainedRetrieval:
    """A trained two-tower model with the feature space it reads.

    Attributes:
        model: The `tfrs.Model`.
        features: Feature space (vocabularies, catalogue features).
        config: Hyper-parameters it was trained with.
        history: Training curve.
    """

    model: TwoTowerModel
    features: FeatureSpace
    config: RetrievalConfig
    history: TrainingHistory

    _encoders: RetrievalEncoders | None = dataclasses.field(default=None, repr=False)

    def encoders(self) -> RetrievalEncoders:
        """Fixed-signature `tf.function`s of both towers (what serving and export use)."""
        if self._encoders is None:
            self._encoders = RetrievalEncoders.from_model(self.model, self.features)
        return self._encoders


def window_dataset(
    windows: Windows, features: FeatureSpace, batch_size: int, seed: int
) -> tf.data.Dataset:
    """Shuffled, batched ``tf.data`` pipeline over training windows."""
    tensors = {
        "history_rows": windows.inputs,
        "target_rows": windows.targets,
        "owned": windows.owned,
        "user_rows": windows.user_rows,
        "user_attributes": features.user_attribute_matrix(windows.user_rows),
    }
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    # Under several workers each one keeps its share of every batch (sharding by element); the
    # seeded shuffle gives every worker the same order, which makes the shares a partition.
    dataset = dataset.shuffle(len(windows), seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def evaluate_retrieval(
    encoders: RetrievalEncoders,
    cases: EvalCases,
    ks: tuple[int, ...] = (10,),
    ns: tuple[int, ...] = (100,),
) -> dict[str, float]:
    """Full-catalogue metrics of the exact inner-product ranking (seen videos filtered)."""
    catalogue = encoders.catalogue_embeddings()
    return evaluate_scorer(
        lambda batch: encoders.case_scores(batch, catalogue),
        cases,
        encoders.features.video_vocab,
        ks=ks,
        ns=ns,
    ).metrics


def train_retrieval(
    train_interactions: pd.DataFrame,
    features: FeatureSpace,
    config: RetrievalConfig,
    validation: EvalCases | None = None,
    strategy: tf.distribute.Strategy | None = None,
    initial_weights: Sequence[np.ndarray] | None = None,
    consensus: Callable[[Sequence[float]], Sequence[float]] | None = None,
    make_optimizer: Callable[[tf.keras.Model], tf.keras.optimizers.Optimizer] | None = None,
    progress: bool = False,
) -> TrainedRetrieval:
    """Trains the two-tower model on (history before t, video at t) pairs.

    Args:
        train_interactions: Validated training interactions.
        features: Feature space fitted on the catalogue (and at least these interactions).
        config: Hyper-parameters.
        validation: Cases for early stopping on Recall@N; without them the training loss is
            the stopping signal.
        strategy: Distribution strategy; the default (single device) when None.
        initial_weights: A previous model's weights to warm start from (same code, tables
            possibly grown: see `core.warm_start.grow_weights`).
        consensus: Under several workers, maps this worker's epoch figures to the chief's so
            every worker stops at the same epoch (`pipelines.jobs.distribute.chief_consensus`).
        make_optimizer: Builds the optimizer for the model (default: Adam at
            ``config.learning_rate``); `pipelines.jobs.optimizers.sparse_aware` for large tables.
        progress: Report every epoch's steps with their rate and time left.

    Returns:
        The trained model, with the best epoch's weights restored.

    Raises:
        DataError: Nothing to train on.
    """
    tf.keras.utils.set_random_seed(config.seed)
    length = features.config.history_length
    windows = training_windows(
        train_interactions, features, length, stride=min(config.window_stride, length)
    )
    if windows.num_examples == 0:
        raise DataError("no training examples: every user has a single event")
    frequency = np.bincount(
        windows.targets[windows.owned], minlength=features.video_vocab.num_rows
    ).astype(np.float64)
    logger.info(
        "retrieval: %d windows, %d examples, %d videos, %d users",
        len(windows),
        windows.num_examples,
        features.video_vocab.num_ids,
        features.user_vocab.num_ids,
    )
    if validation is not None and len(validation) > MAX_VALIDATION_CASES:
        picked = np.random.default_rng(config.seed).choice(
            len(validation), MAX_VALIDATION_CASES, replace=False
        )
        validation = validation.subset(np.sort(picked))
    loop = TrainingLoop(
        "retrieval",
        f"recall@{config.validation_recall_at}",
        lambda: TwoTowerModel(features, config, frequency),
        config,
        windows.num_examples,
        strategy,
        consensus,
        make_optimizer,
        progress=progress,
    )
    trained = TrainedRetrieval(loop.model, features, config, loop.history)

    def validate() -> dict[str, float]:
        if validation is None:
            return {}
        return evaluate_retrieval(trained.encoders(), validation, ns=(config.validation_recall_at,))

    loop.run(
        window_dataset(windows, features, config.batch_size, config.seed), validate, initial_weights
    )
    return trained
