"""Framework-free bookkeeping of a training run: history, early stopping, time budget.

Both models train one epoch at a time and hand each epoch's figures to `EarlyStopping`, which
keeps the best epoch's weights (whatever object the caller snapshots) and says when to stop.

Under multi-worker training every worker runs the same loop, and every worker must take the
same decisions: a worker that stops while another starts an epoch leaves the other blocked in a
collective operation forever. Validation figures computed on each worker can differ in the last
bits, and wall-clock budgets differ for sure, so `EarlyStopping` takes a ``consensus`` function
that replaces this worker's figures by the ones every worker agrees on (the chief's); the
decision is then a pure function of identical inputs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EpochRecord:
    """One epoch: mean training loss, validation metrics and wall time."""

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

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def best(self) -> EpochRecord:
        """The epoch whose weights were kept."""
        return self.epochs[self.best_epoch - 1]


class EarlyStopping:
    """Stops after ``patience`` epochs without a better ``key``, or when time runs out.

    Args:
        name: Model name for log lines.
        key: Validation metric to maximise; without validation metrics, minus the loss.
        patience: Epochs without improvement before stopping.
        max_epochs: Hard limit.
        max_seconds: Wall-clock budget (0 for none); training stops before an epoch that
            would likely overrun it.
        num_examples: Recorded in the history.
        consensus: For multi-worker training: maps this worker's epoch figures (a list of
            floats) to the figures all workers use, e.g. a broadcast from the chief. None for
            a single worker.
    """

    def __init__(
        self,
        name: str,
        key: str,
        patience: int,
        max_epochs: int,
        max_seconds: float = 0.0,
        num_examples: int = 0,
        consensus: Callable[[Sequence[float]], Sequence[float]] | None = None,
    ) -> None:
        self.name = name
        self.consensus = consensus
        self.key = key
        self.patience = patience
        self.max_epochs = max_epochs
        self.max_seconds = max_seconds
        self.started = time.perf_counter()
        self.history = TrainingHistory(num_examples=num_examples)
        self.best_score = float("-inf")
        self.best_snapshot: Any = None
        self._bad_epochs = 0

    def record(
        self,
        loss: float,
        validation: dict[str, float],
        seconds: float,
        snapshot: Callable[[], Any],
    ) -> bool:
        """Records an epoch; returns whether to train another one.

        Args:
            loss: Mean training loss of the epoch.
            validation: Validation metrics after the epoch.
            seconds: Wall time of the epoch including validation.
            snapshot: Called when this epoch is the best so far; its result is kept.
        """
        epoch = len(self.history.epochs) + 1
        elapsed = time.perf_counter() - self.started
        if self.consensus is not None:
            keys = sorted(validation)
            agreed = list(self.consensus([loss, seconds, elapsed, *(validation[k] for k in keys)]))
            loss, seconds, elapsed = agreed[:3]
            validation = dict(zip(keys, agreed[3:], strict=True))
        self.history.epochs.append(EpochRecord(epoch, loss, dict(validation), seconds))
        score = validation.get(self.key, -loss)
        logger.info(
            "%s epoch %d/%d  loss %.4f  %s  (%.1f s)",
            self.name,
            epoch,
            self.max_epochs,
            loss,
            "  ".join(f"val {k} {v:.4f}" for k, v in sorted(validation.items())),
            seconds,
        )
        if score > self.best_score:
            self.best_score = score
            self.best_snapshot = snapshot()
            self.history.best_epoch = epoch
            self._bad_epochs = 0
        else:
            self._bad_epochs += 1
        if self._bad_epochs >= self.patience:
            self.history.stop_reason = f"no better val {self.key} for {self.patience} epochs"
        elif epoch >= self.max_epochs:
            self.history.stop_reason = f"max_epochs={self.max_epochs}"
        elif self.max_seconds and elapsed + seconds > self.max_seconds:
            self.history.stop_reason = f"time budget of {self.max_seconds:.0f} s reached"
        else:
            return True
        logger.info(
            "%s: keeping epoch %d of %d (%s)",
            self.name,
            self.history.best_epoch,
            epoch,
            self.history.stop_reason,
        )
        return False
