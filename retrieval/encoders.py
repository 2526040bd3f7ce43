"""The towers as fixed-signature functions: in memory after training, or loaded from disk.

Serving never calls ``model.predict``: the user tower is a `tf.function` whose input signature
is fixed (``history_embeddings [None, L, d] float32``, ``user_rows [None] int64``,
``user_attributes [None, A] int64``), traced once and reused. The same functions are saved as a
SavedModel so a server loads them without the training code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from core.errors import BundleError
from core.features import NUMERIC_FEATURES, FeatureSpace, VideoFeatureArrays
from core.splits import EvalCases
from core.vocab import FIRST_ID_ROW
from modeling.deferred import DeferredSavedModel, signature_input_shape

logger = logging.getLogger(__name__)

SAVED_MODEL_DIR = "towers"
VIDEO_BATCH = 8_192


class TowerModule(tf.Module):
    """The two towers behind fixed input signatures; what is saved as a SavedModel."""

    def __init__(
        self,
        user_tower: tf.keras.layers.Layer,
        video_tower: tf.keras.layers.Layer,
        history_length: int,
        dim: int,
        num_attributes: int,
        max_categories: int,
        max_tokens: int,
    ) -> None:
        super().__init__(name="retrieval_towers")
        self.user_tower = user_tower
        self.video_tower = video_tower
        self.query = tf.function(
            self._query,
            input_signature=[
                tf.TensorSpec([None, history_length, dim], tf.float32, name="history_embeddings"),
                tf.TensorSpec([None], tf.int64, name="user_rows"),
                tf.TensorSpec([None, num_attributes], tf.int64, name="user_attributes"),
            ],
        )
        self.embed_videos = tf.function(
            self._embed_videos,
            input_signature=[
                tf.TensorSpec([None], tf.int64, name="video_rows"),
                tf.TensorSpec([None, max_categories], tf.int64, name="category_rows"),
                tf.TensorSpec([None, max_tokens], tf.int64, name="token_ids"),
                tf.TensorSpec([None], tf.int64, name="creator_rows"),
                tf.TensorSpec([None, len(NUMERIC_FEATURES)], tf.float32, name="numeric"),
            ],
        )

    def _query(
        self, history_embeddings: tf.Tensor, user_rows: tf.Tensor, user_attributes: tf.Tensor
    ) -> tf.Tensor:
        columns = self.user_tower(history_embeddings, user_rows, user_attributes, training=False)
        return columns[:, -1, :]

    def _embed_videos(
        self,
        video_rows: tf.Tensor,
        category_rows: tf.Tensor,
        token_ids: tf.Tensor,
        creator_rows: tf.Tensor,
        numeric: tf.Tensor,
    ) -> tf.Tensor:
        features = {
            "video_rows": video_rows,
            "category_rows": category_rows,
            "token_ids": token_ids,
            "creator_rows": creator_rows,
            "numeric": numeric,
        }
        return self.video_tower(features, training=False)


class RetrievalEncoders:
    """Query and video encoders with numpy in and out.

    Args:
        query_fn: ``(history_embeddings, user_rows, user_attributes) -> [b, d]``.
        video_fn: ``(video_rows, category_rows, token_ids, creator_rows, numeric) -> [b, d]``.
        features: The feature space the towers were trained with.
        dim: Embedding dimension.
        module: The `TowerModule` (kept for saving; None when loaded from disk).
        keepalive: The loaded SavedModel object, when loaded from disk (the module otherwise).
    """

    def __init__(
        self,
        query_fn: Callable[..., tf.Tensor],
        video_fn: Callable[..., tf.Tensor],
        features: FeatureSpace,
        dim: int,
        module: TowerModule | None = None,
        keepalive: object = None,
    ) -> None:
        self.query_fn = query_fn
        self.video_fn = video_fn
        self.features = features
        self.dim = dim
        self.module = module
        # Owns the variables the functions read: the loaded SavedModel, else the module.
        self.keepalive = keepalive if keepalive is not None else module
        self.saved_model_dir: Path | None = None  # set by `load`

    @classmethod
    def from_model(cls, model: tf.keras.Model, features: FeatureSpace) -> RetrievalEncoders:
        """Encoders over a trained `TwoTowerModel`'s towers (shares their variables)."""
        config = features.config
        module = TowerModule(
            model.user_tower,
            model.video_tower,
            config.history_length,
            model.config.embedding_dim,
            len(features.user_attributes),
            config.max_categories,
            config.max_tokens,
        )
        return cls(module.query, module.embed_videos, features, model.config.embedding_dim, module)

    # -- videos ---------------------------------------------------------------------------

    def embed_features(
        self, arrays: VideoFeatureArrays, batch_size: int = VIDEO_BATCH, progress: bool = False
    ) -> np.ndarray:
        """Embeddings of videos given their features, ``[n, d] float32`` unit-norm."""
        out = np.zeros((len(arrays), self.dim), dtype=np.float32)
        starts = range(0, len(arrays), batch_size)
        for start in tqdm(starts, desc="embedding videos", unit="batch", disable=not progress):
            part = arrays.take(np.arange(start, min(start + batch_size, len(arrays))))
            out[start : start + len(part)] = self.video_fn(
                part.video_rows,
                part.category_rows,
                part.token_ids,
                part.creator_rows,
                part.numeric,
            ).numpy()
        return out

    def catalogue_embeddings(self, progress: bool = False) -> np.ndarray:
        """Embedding of every video vocabulary row, ``[num_rows, d] float32``.

        Rows 0 (padding) and 1 (OOV) are zero vectors, so indexing this matrix with a padded
        history matrix gives the user tower its input directly.
        """
        out = self.embed_features(self.features.catalogue, progress=progress)
        out[:FIRST_ID_ROW] = 0.0
        return out

    # -- users ----------------------------------------------------------------------------

    def query_embeddings(
        self,
        catalogue: np.ndarray,
        histories: Sequence[np.ndarray],
        user_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Query embeddings of users from their histories, ``[b, d] float32``.

        Args:
            catalogue: `catalogue_embeddings` (or a grown version with new uploads).
            histories: Per user, raw video ids oldest first; unknown ids are skipped.
            user_ids: ``[b] int64`` raw user ids, or None for anonymous users.
        """
        rows, _ = self.features.history_matrix(histories)
        if user_ids is None:
            user_rows = np.full(len(histories), 1, dtype=np.int64)
        else:
            user_rows = self.features.user_rows(np.asarray(user_ids, dtype=np.int64))
        attributes = self.features.user_attribute_matrix(user_rows)
        return self.query_fn(catalogue[rows], user_rows, attributes).numpy()

    def case_scores(
        self, cases: EvalCases, catalogue: np.ndarray, batch_size: int = 512
    ) -> np.ndarray:
        """Inner-product scores of every case against every known video, ``[u, n] float32``."""
        known = catalogue[FIRST_ID_ROW:]
        out = np.empty((len(cases), len(known)), dtype=np.float32)
        for start in range(0, len(cases), batch_size):
            stop = min(start + batch_size, len(cases))
            histories = [cases.history(i) for i in range(start, stop)]
            queries = self.query_embeddings(catalogue, histories, cases.user_ids[start:stop])
            out[start:stop] = queries @ known.T
        return out

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Saves both towers as one SavedModel under ``directory/towers``."""
        if self.module is None:
            raise BundleError("these encoders were loaded from disk; save the original instead")
        target = Path(directory) / SAVED_MODEL_DIR
        tf.saved_model.save(
            self.module,
            str(target),
            signatures={
                "query": self.module.query.get_concrete_function(),
                "embed_videos": self.module.embed_videos.get_concrete_function(),
            },
        )
        logger.info("saved retrieval towers to %s", target)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], features: FeatureSpace, deferred: bool = False
    ) -> RetrievalEncoders:
        """Loads towers saved by `save`; ``features`` must be the bundle's feature space.

        Args:
            directory: The bundle's ``retrieval/``.
            features: The bundle's feature space.
            deferred: Load the SavedModel only when a tower is first called
                (`modeling.deferred`): for servers that run the user tower from the bundle's
                LiteRT file and need the video tower for uploads alone.

        Raises:
            BundleError: The SavedModel is missing or unreadable.
        """
        target = Path(directory) / SAVED_MODEL_DIR
        if deferred:
            model = DeferredSavedModel(target, "retrieval towers")
            shape = signature_input_shape(target, "query", "history_embeddings")
            encoders = cls(
                model.function("query"), model.function("embed_videos"), features, shape[-1]
            )
            encoders.saved_model_dir = target
            return encoders
        try:
            loaded = tf.saved_model.load(str(target))
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise BundleError(f"cannot load the retrieval towers from {target}: {error}") from error
        history_spec = loaded.signatures["query"].structured_input_signature[1][
            "history_embeddings"
        ]
        encoders = cls(
            loaded.query,
            loaded.embed_videos,
            features,
            int(history_spec.shape[-1]),
            keepalive=loaded,
        )
        encoders.saved_model_dir = target
        return encoders
