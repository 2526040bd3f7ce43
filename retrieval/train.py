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
from core.vocab import FIRST_ID_ROW
from retrieval.encoders import RetrievalEncoders
from retrieval.model import TwoTowerModel

logger = logging.getLogger(__name__)

MAX_VALIDATION_CASES = 3_000


@dataclasses.dataclass
class EpochRecord:
    """One epoch of training: mean loss, validation metrics and wall time."""

    epoch: int
    loss: float
    validation: dict[str, float]
    seconds: float


@dataclasses.dataclass
class TrainingHistory:
    """What happened during training, for reports and plots."""

    epochs: list[EpochRecord] = dataclasses.field(default_factory=list)
    best_epoch: int = 0
    stop_reason: str = ""
    num_examples: int = 0
    num_windows: int = 0

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


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


class _ValidationCallback(tf.keras.callbacks.Callback):
    """Early stopping on validation Recall@N with best-weights restore and a time budget."""

    def __init__(
        self,
        trained: TrainedRetrieval,
        validation: EvalCases | None,
        started: float,
    ) -> None:
        super().__init__()
        self.trained = trained
        self.validation = validation
        self.started = started
        self.epoch_started = started
        self.best_score = -np.inf
        self.best_weights: list[np.ndarray] | None = None
        self.bad_epochs = 0
        self.key = f"recall@{trained.config.validation_recall_at}"

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        config = self.trained.config
        history = self.trained.history
        metrics: dict[str, float] = {}
        if self.validation is not None:
            metrics = evaluate_retrieval(
                self.trained.encoders(), self.validation, ns=(config.validation_recall_at,)
            )
        loss = float((logs or {}).get("epoch_loss", np.nan))
        seconds = time.perf_counter() - self.epoch_started
        history.epochs.append(EpochRecord(epoch + 1, loss, metrics, seconds))
        score = metrics.get(self.key, -loss)
        logger.info(
            "retrieval epoch %d/%d  loss %.4f  %s  (%.1f s)",
            epoch + 1,
            config.max_epochs,
            loss,
            "  ".join(f"val {k} {v:.4f}" for k, v in sorted(metrics.items()) if "@" in k),
            seconds,
        )
        if score > self.best_score:
            self.best_score = score
            self.best_weights = self.model.get_weights()
            history.best_epoch = epoch + 1
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        elapsed = time.perf_counter() - self.started
        if self.bad_epochs >= config.patience:
            history.stop_reason = f"no better val {self.key} for {config.patience} epochs"
            self.model.stop_training = True
        elif config.max_train_seconds and elapsed + seconds > config.max_train_seconds:
            history.stop_reason = f"time budget of {config.max_train_seconds:.0f} s reached"
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        if not self.trained.history.stop_reason:
            self.trained.history.stop_reason = f"max_epochs={self.trained.config.max_epochs}"


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
    trained = TrainedRetrieval(
        model,
        features,
        config,
        TrainingHistory(num_examples=windows.num_examples, num_windows=len(windows)),
    )
    dataset = window_dataset(windows, features, config.batch_size, config.seed)
    callback = _ValidationCallback(trained, validation, time.perf_counter())
    model.fit(dataset, epochs=config.max_epochs, verbose=0, callbacks=[callback])
    logger.info(
        "retrieval: best epoch %d of %d (%s)",
        trained.history.best_epoch,
        len(trained.history.epochs),
        trained.history.stop_reason,
    )
    return trained
