"""Training the two-tower model: windows in, early stopping on validation Recall@N."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from core.config import RetrievalConfig
from core.errors import DataError
from core.features import FeatureSpace
from core.metrics import metrics_from_ranks, target_ranks
from core.sequences import Windows, training_windows
from core.splits import EvalCases
from core.training import EarlyStopping, TrainingHistory
from core.vocab import FIRST_ID_ROW
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
    dataset = dataset.shuffle(len(windows), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def evaluate_retrieval(
    encoders: RetrievalEncoders,
    cases: EvalCases,
    ks: tuple[int, ...] = (10,),
    ns: tuple[int, ...] = (100,),
) -> dict[str, float]:
    """Full-catalogue metrics of the exact inner-product ranking (seen videos filtered)."""
    catalogue = encoders.catalogue_embeddings()
    scores = encoders.case_scores(cases, catalogue)
    vocab = encoders.features.video_vocab
    seen = [vocab.lookup(cases.history(i)) - FIRST_ID_ROW for i in range(len(cases))]
    targets = [vocab.lookup(cases.targets(i)) - FIRST_ID_ROW for i in range(len(cases))]
    seen = [s[s >= 0] for s in seen]
    targets = [np.setdiff1d(t[t >= 0], s) for t, s in zip(targets, seen, strict=True)]
    keep = [i for i, t in enumerate(targets) if len(t)]
    ranks = target_ranks(scores[keep], [seen[i] for i in keep], [targets[i] for i in keep])
    return metrics_from_ranks(ranks, ks, ns)


def train_retrieval(
    train_interactions: pd.DataFrame,
    features: FeatureSpace,
    config: RetrievalConfig,
    validation: EvalCases | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainedRetrieval:
    """Trains the two-tower model on (history before t, video at t) pairs.

    Args:
        train_interactions: Validated training interactions.
        features: Feature space fitted on the catalogue (and at least these interactions).
        config: Hyper-parameters.
        validation: Cases for early stopping on Recall@N; without them the training loss is
            the stopping signal.
        strategy: Distribution strategy; the default (single device) when None.

    Returns:
        The trained model, with the best epoch's weights restored.

    Raises:
        DataError: Nothing to train on.
    """
    strategy = strategy or tf.distribute.get_strategy()
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
    with strategy.scope():
        model = TwoTowerModel(features, config, frequency)
        model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    stopping = EarlyStopping(
        "retrieval",
        f"recall@{config.validation_recall_at}",
        config.patience,
        config.max_epochs,
        config.max_train_seconds,
        num_examples=windows.num_examples,
    )
    trained = TrainedRetrieval(model, features, config, stopping.history)
    dataset = window_dataset(windows, features, config.batch_size, config.seed)
    while True:
        started = time.perf_counter()
        logs = model.fit(dataset, epochs=1, verbose=0).history
        metrics = (
            evaluate_retrieval(
                trained.encoders(), validation, ns=(config.validation_recall_at,)
            )
            if validation is not None
            else {}
        )
        if not stopping.record(
            float(logs["epoch_loss"][-1]),
            metrics,
            time.perf_counter() - started,
            model.get_weights,
        ):
            break
    model.set_weights(stopping.best_snapshot)
    return trained
