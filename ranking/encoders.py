"""The ranker behind a fixed input signature: in memory after training, or loaded from disk.

Scoring 300 candidates for one user is one call of a `tf.function` traced once (never
``model.predict``). Inputs are gathered in numpy from the feature space and the retrieval
embeddings, so a video uploaded after training is scored from its content and embedding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from core.config import RankingConfig
from core.errors import BundleError
from core.features import NUMERIC_FEATURES, FeatureSpace, VideoFeatureArrays
from modeling.deferred import DeferredSavedModel
from ranking.inputs import CandidateLists, video_fields

logger = logging.getLogger(__name__)

SAVED_MODEL_DIR = "ranker"


def input_signature(
    history_length: int, dim: int, max_categories: int, num_attributes: int, evidence_width: int
) -> dict[str, tf.TensorSpec]:
    """The ranker's inputs: ``b`` lists of ``k`` candidates with ``L``-long histories and ``E``
    evidence columns per candidate."""
    numeric = len(NUMERIC_FEATURES)
    spec: dict[str, tf.TensorSpec] = {}
    for side, shape in (("history", [None, history_length]), ("candidate", [None, None])):
        spec[f"{side}_rows"] = tf.TensorSpec(shape, tf.int64)
        spec[f"{side}_embeddings"] = tf.TensorSpec([*shape, dim], tf.float32)
        spec[f"{side}_category_rows"] = tf.TensorSpec([*shape, max_categories], tf.int64)
        spec[f"{side}_creator_rows"] = tf.TensorSpec(shape, tf.int64)
        spec[f"{side}_numeric"] = tf.TensorSpec([*shape, numeric], tf.float32)
    spec["history_engagement"] = tf.TensorSpec([None, history_length], tf.float32)
    spec["history_age_hours"] = tf.TensorSpec([None, history_length], tf.float32)
    spec["candidate_evidence"] = tf.TensorSpec([None, None, evidence_width], tf.float32)
    spec["user_attributes"] = tf.TensorSpec([None, num_attributes], tf.int64)
    return spec


def _side(inputs: dict[str, tf.Tensor], side: str) -> dict[str, tf.Tensor]:
    return {
        "rows": inputs[f"{side}_rows"],
        "embeddings": inputs[f"{side}_embeddings"],
        "category_rows": inputs[f"{side}_category_rows"],
        "creator_rows": inputs[f"{side}_creator_rows"],
        "numeric": inputs[f"{side}_numeric"],
    }


class RankerModule(tf.Module):
    """The ranker's scoring function with a fixed signature; what is saved as a SavedModel."""

    def __init__(self, model: tf.keras.Model, signature: dict[str, tf.TensorSpec]) -> None:
        super().__init__(name="ranker")
        self.model = model
        self.score = tf.function(self._score, input_signature=[signature])

    def _score(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.model.score(
            _side(inputs, "history"),
            inputs["history_engagement"],
            inputs["history_age_hours"],
            _side(inputs, "candidate"),
            inputs["candidate_evidence"],
            inputs["user_attributes"],
            training=False,
        )


class RankerScorer:
    """Numpy in and out around the ranker's scoring function.

    Args:
        score_fn: ``inputs dict -> {watch_logits, engagement, attention}``.
        features: Feature space (catalogue features by row; grows with uploads).
        catalogue_embeddings: ``[num_rows, d] float32`` retrieval embeddings by video row.
        config: The ranking configuration it was trained with.
        evidence_width: ``E``, the evidence columns per candidate.
        module: The `RankerModule` (kept for saving; None when loaded).
        keepalive: The loaded SavedModel object, when loaded from disk (the module otherwise).
    """

    def __init__(
        self,
        score_fn: Callable[[dict[str, np.ndarray]], dict[str, tf.Tensor]],
        features: FeatureSpace,
        catalogue_embeddings: np.ndarray,
        config: RankingConfig,
        evidence_width: int,
        module: RankerModule | None = None,
        keepalive: object = None,
    ) -> None:
        self.score_fn = score_fn
        self.evidence_width = evidence_width
        self.features = features
        self.catalogue_embeddings = catalogue_embeddings
        self.config = config
        self.module = module
        # Owns the variables the functions read: the loaded SavedModel, else the module.
        self.keepalive = keepalive if keepalive is not None else module
        self.saved_model_dir: Path | None = None  # set by `load`

    @classmethod
    def from_model(
        cls,
        model: tf.keras.Model,
        features: FeatureSpace,
        catalogue_embeddings: np.ndarray,
        config: RankingConfig,
        evidence_width: int,
    ) -> RankerScorer:
        """Scorer over an in-memory `RankerModel` (shares its variables)."""
        signature = input_signature(
            config.history_length,
            catalogue_embeddings.shape[1],
            features.config.max_categories,
            len(features.user_attributes),
            evidence_width,
        )
        module = RankerModule(model, signature)
        return cls(module.score, features, catalogue_embeddings, config, evidence_width, module)

    def inputs(
        self,
        history_rows: np.ndarray,
        history_engagement: np.ndarray,
        history_age_hours: np.ndarray,
        candidate_rows: np.ndarray,
        evidence: np.ndarray,
        user_attributes: np.ndarray,
        videos: VideoFeatureArrays | None = None,
        embeddings: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Gathers every video field of histories ``[b, L]`` and candidates ``[b, k]``.

        Args:
            history_rows: ``[b, L] int64`` video rows, left-padded with 0.
            history_engagement: ``[b, L] float32``.
            history_age_hours: ``[b, L] float32``.
            candidate_rows: ``[b, k] int64``.
            evidence: ``[b, k, E] float32``.
            user_attributes: ``[b, A] int64``.
            videos: Features by video row; defaults to the feature space's catalogue (a live
                catalogue passes its grown arrays).
            embeddings: ``[rows, d]`` retrieval embeddings by row; defaults to the training
                catalogue's.
        """
        catalogue = self.features.catalogue if videos is None else videos
        table = self.catalogue_embeddings if embeddings is None else embeddings
        out: dict[str, np.ndarray] = {}
        for side, rows in (("history", history_rows), ("candidate", candidate_rows)):
            for name, value in video_fields(rows, catalogue, table).items():
                out[f"{side}_{name}"] = value
        out["history_engagement"] = history_engagement.astype(np.float32)
        out["history_age_hours"] = history_age_hours.astype(np.float32)
        out["candidate_evidence"] = evidence.astype(np.float32)
        out["user_attributes"] = user_attributes.astype(np.int64)
        return out

    def score_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the scoring function; numpy outputs."""
        return {k: v.numpy() for k, v in self.score_fn(inputs).items()}

    def score_lists(self, lists: CandidateLists, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Watch logits ``[n, k]``, engagement ``[n, k]`` and attention ``[n, k, L]``."""
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(lists), batch_size):
            part = lists.take(np.arange(start, min(start + batch_size, len(lists))))
            parts.append(
                self.score_inputs(
                    self.inputs(
                        part.history_rows,
                        part.history_engagement,
                        part.history_age_hours,
                        part.candidate_rows,
                        part.evidence,
                        part.user_attributes,
                    )
                )
            )
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Saves the scoring function as a SavedModel under ``directory/ranker``."""
        if self.module is None:
            raise BundleError("this ranker was loaded from disk; save the original instead")
        target = Path(directory) / SAVED_MODEL_DIR
        tf.saved_model.save(self.module, str(target))
        logger.info("saved ranker to %s", target)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        features: FeatureSpace,
        catalogue_embeddings: np.ndarray,
        config: RankingConfig,
        deferred_evidence_width: int | None = None,
    ) -> RankerScorer:
        """Loads a ranker saved by `save`.

        Args:
            directory: The bundle's ``ranking/``.
            features: The bundle's feature space.
            catalogue_embeddings: ``[num_rows, d] float32`` retrieval embeddings by row.
            config: The ranking configuration it was trained with.
            deferred_evidence_width: If given, load the SavedModel only when the scoring
                function is first called (`modeling.deferred`), trusting this evidence width
                (a server reads it from the bundle's stored LiteRT conversion).

        Raises:
            BundleError: Missing or unreadable SavedModel.
        """
        target = Path(directory) / SAVED_MODEL_DIR
        if deferred_evidence_width is not None:
            model = DeferredSavedModel(target, "ranker")
            scorer = cls(
                model.function("score"),
                features,
                catalogue_embeddings,
                config,
                deferred_evidence_width,
            )
            scorer.saved_model_dir = target
            return scorer
        try:
            loaded = tf.saved_model.load(str(target))
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise BundleError(f"cannot load the ranker from {target}: {error}") from error
        try:
            spec = loaded.score.input_signature[0]["candidate_evidence"]
        except (AttributeError, IndexError, KeyError, TypeError) as error:
            raise BundleError(
                f"the ranker in {target} predates candidate evidence; train a new bundle"
            ) from error
        evidence_width = int(spec.shape[-1])
        scorer = cls(
            loaded.score, features, catalogue_embeddings, config, evidence_width, keepalive=loaded
        )
        scorer.saved_model_dir = target
        return scorer
