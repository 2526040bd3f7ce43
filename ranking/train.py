"""Training the ranker on candidate lists, early-stopped on the reranked validation NDCG@10."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from core.config import RankingConfig
from core.errors import DataError
from core.features import FeatureSpace
from core.metrics import list_metrics
from core.training import TrainingHistory
from modeling.training import TrainingLoop
from ranking.blend import blend_scores
from ranking.encoders import RankerScorer
from ranking.inputs import CandidateLists
from ranking.model import RankerModel

logger = logging.getLogger(__name__)

TRAINING_FIELDS: tuple[str, ...] = (
    "history_rows",
    "history_engagement",
    "history_age_hours",
    "candidate_rows",
    "candidate_valid",
    "evidence",
    "user_attributes",
    "engagement",
)


@dataclasses.dataclass
class TrainedRanker:
    """A trained ranker with what it needs to score.

    Attributes:
        model: The `tfrs.Model`.
        features: Feature space it reads.
        catalogue_embeddings: ``[num_rows, d] float32`` retrieval embeddings by video row.
        config: Hyper-parameters.
        history: Training curve.
        evidence_width: ``E``, the evidence columns per candidate it reads.
    """

    model: RankerModel
    features: FeatureSpace
    catalogue_embeddings: np.ndarray
    config: RankingConfig
    history: TrainingHistory
    evidence_width: int
    _scorer: RankerScorer | None = dataclasses.field(default=None, repr=False)

    def scorer(self) -> RankerScorer:
        """Fixed-signature scoring function over this model (what serving and export use)."""
        if self._scorer is None:
            self._scorer = RankerScorer.from_model(
                self.model,
                self.features,
                self.catalogue_embeddings,
                self.config,
                self.evidence_width,
            )
        return self._scorer


def _dataset(lists: CandidateLists, batch_size: int, seed: int) -> tf.data.Dataset:
    arrays = {name: getattr(lists, name) for name in TRAINING_FIELDS}
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    dataset = dataset.shuffle(min(len(lists), 200_000), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_ranker(
    train_lists: CandidateLists,
    features: FeatureSpace,
    catalogue_embeddings: np.ndarray,
    config: RankingConfig,
    validation_lists: CandidateLists | None = None,
    strategy: tf.distribute.Strategy | None = None,
    initial_weights: Sequence[np.ndarray] | None = None,
    consensus: Callable[[Sequence[float]], Sequence[float]] | None = None,
    make_optimizer: Callable[[tf.keras.Model], tf.keras.optimizers.Optimizer] | None = None,
    progress: bool = False,
) -> TrainedRanker:
    """Trains the ranker.

    Args:
        train_lists: Training lists (watched video in column 0, retrieval's hard negatives and
            random negatives after it).
        features: Feature space.
        catalogue_embeddings: ``[num_rows, d] float32`` retrieval embeddings by video row.
        config: Hyper-parameters.
        validation_lists: Retrieval's top-N for validation cases, for early stopping on the
            NDCG@10 of the reranked lists.
        strategy: Distribution strategy; the default when None.
        initial_weights: A previous model's weights to warm start from (same code, tables
            possibly grown: see `core.warm_start.grow_weights`).
        consensus: Under several workers, maps this worker's epoch figures to the chief's so
            every worker stops at the same epoch (`pipelines.jobs.distribute.chief_consensus`).
        make_optimizer: Builds the optimizer for the model (default: Adam at
            ``config.learning_rate``); `pipelines.jobs.optimizers.sparse_aware` for large tables.
        progress: Report every epoch's steps with their rate and time left.

    Returns:
        The trained ranker with its best epoch's weights.

    Raises:
        DataError: No training lists.
    """
    if len(train_lists) == 0:
        raise DataError("no ranker training lists")
    if train_lists.history_rows.shape[1] != config.history_length:
        raise DataError(
            f"training lists carry {train_lists.history_rows.shape[1]} history columns, "
            f"ranking.history_length is {config.history_length}; build them with the same config"
        )
    tf.keras.utils.set_random_seed(config.seed)
    loop = TrainingLoop(
        "ranking",
        "ndcg@10",
        lambda: RankerModel(features, catalogue_embeddings, config),
        config,
        len(train_lists),
        strategy,
        consensus,
        make_optimizer,
        progress=progress,
    )
    trained = TrainedRanker(
        loop.model,
        features,
        catalogue_embeddings,
        config,
        loop.history,
        evidence_width=train_lists.evidence.shape[2],
    )
    logger.info(
        "ranking: %d lists of %d candidates", len(train_lists), train_lists.candidate_rows.shape[1]
    )

    def validate() -> dict[str, float]:
        if validation_lists is None:
            return {}
        out = trained.scorer().score_lists(validation_lists)
        scores = blend_scores(
            out["watch_logits"],
            out["engagement"],
            config.engagement_weight,
            validation_lists.candidate_valid,
        )
        return list_metrics(scores, validation_lists.target)

    loop.run(_dataset(train_lists, config.batch_size, config.seed), validate, initial_weights)
    return trained
