"""The Keras half of a training run, shared by both models: compile, warm start, epochs.

`core.training.EarlyStopping` decides, free of any framework, when to stop and which epoch to
keep; `TrainingLoop` drives a model for it: it builds and compiles the model under the
distribution strategy, optionally lays a previous model's weights into it, then fits one epoch
at a time, validates, and hands each epoch's figures to `EarlyStopping` until it says stop.
What differs between the stages (the model, its examples, its validation metric) stays in
`retrieval.train` and `ranking.train`.

A model trained here reports its mean loss as the Keras metric ``epoch_loss``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import tensorflow as tf

from core.progress import Progress
from core.training import EarlyStopping, TrainingHistory
from core.warm_start import grow_weights

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=tf.keras.Model)


class LoopConfig(Protocol):
    """The training fields the loop reads (`core.config.RetrievalConfig`, `RankingConfig`)."""

    @property
    def learning_rate(self) -> float: ...

    @property
    def patience(self) -> int: ...

    @property
    def max_epochs(self) -> int: ...

    @property
    def max_train_seconds(self) -> float: ...


class StepProgress(tf.keras.callbacks.Callback):
    """Reports a `Progress` after every training step of a ``fit`` call (Keras' own bar
    prints a line per epoch to stdout and cannot be sent to the log)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.progress.update()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.progress.close()


class TrainingLoop(Generic[ModelT]):
    """A compiled model and its early stopping; `run` trains it.

    The model is built here, under ``strategy``'s scope, after the caller has seeded the run
    (``tf.keras.utils.set_random_seed``); the clock of the time budget starts here too.

    Args:
        name: The stage, for log lines (``"retrieval"``, ``"ranking"``).
        key: Validation metric that decides early stopping (`EarlyStopping`).
        build: Makes the model; called once, under ``strategy``'s scope.
        config: The stage's training fields (learning rate, patience, epochs, time budget).
        num_examples: Training examples, recorded in the history.
        strategy: Distribution strategy; the default (single device) when None.
        consensus: Under several workers, maps this worker's epoch figures to the chief's so
            every worker stops at the same epoch (`pipelines.jobs.distribute.chief_consensus`).
        make_optimizer: Builds the optimizer for the model (default: Adam at
            ``config.learning_rate``); `pipelines.jobs.optimizers.sparse_aware` for large tables.
        progress: Report each epoch's steps with their rate and time left (`core.progress`).

    Attributes:
        model: The compiled model.
        stopping: Its early stopping (the history it records is ``stopping.history``).
    """

    def __init__(
        self,
        name: str,
        key: str,
        build: Callable[[], ModelT],
        config: LoopConfig,
        num_examples: int,
        strategy: tf.distribute.Strategy | None = None,
        consensus: Callable[[Sequence[float]], Sequence[float]] | None = None,
        make_optimizer: Callable[[tf.keras.Model], tf.keras.optimizers.Optimizer] | None = None,
        progress: bool = False,
    ) -> None:
        self.progress = progress
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            model = build()
            optimizer = (
                make_optimizer(model)
                if make_optimizer is not None
                else tf.keras.optimizers.Adam(config.learning_rate)
            )
            model.compile(optimizer=optimizer)
        # Keras reports a metric under several replicas as the sum of the replicas' values
        # ("auto" means "sum" off TPUs); pinned here because `run` divides the epoch loss by
        # the number of replicas.
        model.distribute_reduction_method = "sum"
        self.model: ModelT = model
        self.stopping = EarlyStopping(
            name,
            key,
            config.patience,
            config.max_epochs,
            config.max_train_seconds,
            num_examples=num_examples,
            consensus=consensus,
        )

    @property
    def history(self) -> TrainingHistory:
        """The training curve, filled in by `run`."""
        return self.stopping.history

    def run(
        self,
        dataset: tf.data.Dataset,
        validate: Callable[[], dict[str, float]],
        initial_weights: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Trains until early stopping ends it, then restores the best epoch's weights.

        Args:
            dataset: Batches of the model's ``compute_loss`` inputs; one pass is one epoch.
            validate: Validation metrics of the model as it is now (``{}`` for none: the
                training loss then decides).
            initial_weights: A previous model's weights to warm start from (same code, tables
                possibly grown: see `core.warm_start.grow_weights`).

        Raises:
            DataError: ``initial_weights`` do not fit the model (its architecture changed).
        """
        model, stopping = self.model, self.stopping
        if initial_weights is not None:
            with self.strategy.scope():
                model.compute_loss(next(iter(dataset)), training=False)  # creates the variables
            weights, report = grow_weights(model.get_weights(), initial_weights)
            model.set_weights(weights)
            logger.info("%s warm start: %s", stopping.name, report)
        replicas = self.strategy.num_replicas_in_sync
        steps = int(dataset.cardinality())  # negative when tf.data cannot tell
        while True:
            started = time.perf_counter()
            epoch = len(stopping.history.epochs) + 1
            callback = StepProgress(
                Progress(
                    f"{stopping.name} epoch {epoch}",
                    steps if steps >= 0 else None,
                    enabled=self.progress,
                )
            )
            logs = model.fit(dataset, epochs=1, verbose=0, callbacks=[callback]).history
            if not stopping.record(
                float(logs["epoch_loss"][-1]) / replicas,
                validate(),
                time.perf_counter() - started,
                model.get_weights,
            ):
                break
        model.set_weights(stopping.best_snapshot)
