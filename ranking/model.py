"""The ranker: each retrieved candidate attends over the user's watch history (BST-style).

Per video the ranker builds its own representation from its id, categories, creator, numbers
and the retrieval embedding (which carries the content of videos the ranker never saw). History
tokens add their recency position, how much the user engaged with them and how long ago they
were watched, then pass through self-attention. Each candidate queries the history with
multi-head target attention; the attended summary, the candidate itself, their interactions and
the candidate's evidence (why it is a candidate: retrieval score and rank, how strongly it
follows the latest watches in each item-to-item source, which lists proposed it, popularity,
age; `candidates.sources.EVIDENCE_FEATURES`) feed an MLP with two heads: the logit of being
watched next (trained listwise against the served candidate lists' own hard negatives) and the
expected engagement. The evidence also reaches the watch logit through a linear term, so a
strong signal such as "this is what people watch right after your last video" is learned in a
few steps and the MLP learns when to trust it less.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from core.config import RankingConfig
from core.features import FeatureSpace
from core.vocab import OOV_ROW
from modeling.layers import TransformerBlock, clamp_rows, self_attention_mask, truncated_normal

VIDEO_FIELDS: tuple[str, ...] = ("rows", "embeddings", "category_rows", "creator_rows", "numeric")
MASKED_LOGIT = -1e9


class VideoEncoder(tf.keras.layers.Layer):
    """Video features to a ``[..., dim]`` representation."""

    def __init__(self, features: FeatureSpace, dim: int, name: str = "video_encoder") -> None:
        super().__init__(name=name)
        self.num_rows = features.video_vocab.num_rows
        self.num_categories = features.categories.num_rows
        self.num_creators = features.creators.num_rows
        self.id_embedding = tf.keras.layers.Embedding(
            self.num_rows, dim, embeddings_initializer=truncated_normal(), name="video_id"
        )
        self.category_embedding = tf.keras.layers.Embedding(
            self.num_categories, dim, embeddings_initializer=truncated_normal(), name="category"
        )
        self.creator_embedding = tf.keras.layers.Embedding(
            self.num_creators, dim, embeddings_initializer=truncated_normal(), name="creator"
        )
        self.projection = tf.keras.layers.Dense(dim, activation="gelu", name="projection")
        self.norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)

    def call(self, video: dict[str, tf.Tensor]) -> tf.Tensor:
        """``video``: fields of `VIDEO_FIELDS` with leading shape ``[...]`` -> ``[..., dim]``."""
        leading = tf.shape(video["rows"])
        # Layers see [n, ...] whatever the caller's rank (training flattens, serving does not).
        flat = {
            name: tf.reshape(value, tf.concat([[-1], tf.shape(value)[tf.rank(video["rows"]) :]], 0))
            for name, value in video.items()
        }
        encoded = self._encode(flat)
        return tf.reshape(encoded, tf.concat([leading, tf.shape(encoded)[-1:]], 0))

    def _encode(self, video: dict[str, tf.Tensor]) -> tf.Tensor:
        categories = clamp_rows(video["category_rows"], self.num_categories)
        mask = tf.cast(tf.not_equal(categories, 0), tf.float32)[..., None]
        category = tf.reduce_sum(self.category_embedding(categories) * mask, axis=-2) / (
            tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)
        )
        parts = [
            self.id_embedding(clamp_rows(video["rows"], self.num_rows)),
            category,
            self.creator_embedding(clamp_rows(video["creator_rows"], self.num_creators)),
            video["embeddings"],
            video["numeric"],
        ]
        return self.norm(self.projection(tf.concat(parts, axis=-1)))


class RankerModel(tfrs.Model):
    """Target-attention ranker with a watch head and an engagement head.

    Args:
        features: Feature space (table sizes; catalogue features for training lookups).
        catalogue_embeddings: ``[num_rows, d_retrieval] float32`` retrieval embeddings by
            video row (zeros for padding and OOV), used to look up training batches.
        config: Hyper-parameters.
    """

    def __init__(
        self, features: FeatureSpace, catalogue_embeddings: np.ndarray, config: RankingConfig
    ) -> None:
        super().__init__()
        self.config = config
        self.history_length = config.history_length
        dim = config.dim
        self.video_encoder = VideoEncoder(features, dim)
        self.position_embedding = tf.keras.layers.Embedding(
            self.history_length, dim, embeddings_initializer=truncated_normal(), name="position"
        )
        self.history_context = tf.keras.layers.Dense(dim, name="history_context")
        self.null_token = self.add_weight(
            name="null_token", shape=(1, 1, dim), initializer=truncated_normal(), trainable=True
        )
        self.history_blocks = [
            TransformerBlock(dim, config.num_heads, config.dropout, name=f"history_block_{i}")
            for i in range(config.history_blocks)
        ]
        self.history_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.target_attention = tf.keras.layers.MultiHeadAttention(
            num_heads=config.num_heads, key_dim=dim // config.num_heads, name="target_attention"
        )
        self.user_embeddings = [
            tf.keras.layers.Embedding(
                v.num_rows,
                dim,
                embeddings_initializer=truncated_normal(),
                name=f"user_attribute_{i}",
            )
            for i, v in enumerate(features.user_attributes.values())
        ]
        self.hidden = [
            tf.keras.layers.Dense(units, activation="gelu", name=f"hidden_{i}")
            for i, units in enumerate(config.hidden_units)
        ]
        self.hidden_dropout = tf.keras.layers.Dropout(config.dropout)
        self.watch_head = tf.keras.layers.Dense(1, name="watch")
        self.evidence_wide = tf.keras.layers.Dense(1, use_bias=False, name="evidence_wide")
        self.engagement_head = tf.keras.layers.Dense(1, activation="sigmoid", name="engagement")
        tables = features.catalogue
        self.catalogue = {
            "embeddings": tf.constant(catalogue_embeddings, tf.float32),
            "category_rows": tf.constant(tables.category_rows),
            "creator_rows": tf.constant(tables.creator_rows),
            "numeric": tf.constant(tables.numeric),
        }
        # Sums weighted by 1 / global batch: the mean over the global batch under any number
        # of replicas (Keras' default reductions are refused in a distributed train step).
        self.watch_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM
            ),
            loss_metrics=[tf.keras.metrics.Mean(name="watch_loss")],
        )
        self.engagement_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.SUM),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="engagement_rmse")],
        )
        self.epoch_loss = tf.keras.metrics.Mean(name="epoch_loss")

    # -- inputs ---------------------------------------------------------------------------

    def lookup(self, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        """Video features of catalogue rows from the model's tables (training batches)."""
        safe = tf.where(
            rows >= tf.shape(self.catalogue["numeric"], out_type=rows.dtype)[0],
            tf.constant(OOV_ROW, rows.dtype),
            rows,
        )
        out = {name: tf.gather(table, safe) for name, table in self.catalogue.items()}
        out["rows"] = rows
        return out

    # -- scoring --------------------------------------------------------------------------

    def score(
        self,
        history: dict[str, tf.Tensor],
        history_engagement: tf.Tensor,
        history_age_hours: tf.Tensor,
        candidates: dict[str, tf.Tensor],
        evidence: tf.Tensor,
        user_attributes: tf.Tensor,
        training: bool = False,
    ) -> dict[str, tf.Tensor]:
        """Scores candidates against a history.

        Args:
            history: Video fields of the watched videos, ``[b, L, ...]``, oldest first,
                left-padded (``rows`` 0 on padding).
            history_engagement: ``[b, L] float32`` engagement of each watch in ``[0, 1]``.
            history_age_hours: ``[b, L] float32`` hours from each watch to the ranking moment.
            candidates: Video fields of the candidates, ``[b, K, ...]``.
            evidence: ``[b, K, E] float32`` what is known about each candidate's origin.
            user_attributes: ``[b, A] int64`` attribute rows.
            training: Enables dropout.

        Returns:
            ``watch_logits [b, K]``, ``engagement [b, K]`` in ``(0, 1)`` and ``attention
            [b, K, L]`` (target attention over the history, averaged over heads).
        """
        return self._score_encoded(
            self.video_encoder(history),
            tf.not_equal(history["rows"], 0),
            history_engagement,
            history_age_hours,
            self.video_encoder(candidates),
            evidence,
            user_attributes,
            training,
        )

    def _score_encoded(
        self,
        history_videos: tf.Tensor,
        valid: tf.Tensor,
        history_engagement: tf.Tensor,
        history_age_hours: tf.Tensor,
        candidate: tf.Tensor,
        evidence: tf.Tensor,
        user_attributes: tf.Tensor,
        training: bool,
    ) -> dict[str, tf.Tensor]:
        length = tf.shape(valid)[1]
        context = tf.stack(
            [history_engagement, tf.math.log1p(tf.maximum(history_age_hours, 0.0))], axis=-1
        )
        tokens = (
            history_videos
            + self.position_embedding(tf.range(length))[None]
            + self.history_context(context)
        )
        tokens = tokens * tf.cast(valid, tokens.dtype)[..., None]
        # Not causal: every watch precedes the ranking moment, so each may read all the others.
        self_mask = self_attention_mask(valid, length, causal=False)
        for block in self.history_blocks:
            tokens = block(tokens, self_mask, training=training)
        tokens = self.history_norm(tokens)
        batch = tf.shape(tokens)[0]
        # A learned null token keeps attention defined for an empty history.
        keys = tf.concat([tf.tile(self.null_token, [batch, 1, 1]), tokens], axis=1)
        key_valid = tf.concat([tf.ones([batch, 1], tf.bool), valid], axis=1)
        num_candidates = tf.shape(candidate)[1]
        attention_mask = tf.tile(key_valid[:, None, :], [1, num_candidates, 1])
        attended, weights = self.target_attention(
            candidate,
            keys,
            attention_mask=attention_mask,
            return_attention_scores=True,
            training=training,
        )
        last = tokens[:, -1:, :]
        parts = [
            candidate,
            attended,
            candidate * attended,
            candidate * last,
            evidence,
        ]
        if self.user_embeddings:
            user = tf.add_n(
                [
                    embedding(clamp_rows(user_attributes[:, i], embedding.input_dim))
                    for i, embedding in enumerate(self.user_embeddings)
                ]
            )
            parts.append(tf.tile(user[:, None, :], [1, num_candidates, 1]))
        hidden = tf.concat(parts, axis=-1)
        for layer in self.hidden:
            hidden = self.hidden_dropout(layer(hidden), training=training)
        return {
            "watch_logits": tf.squeeze(self.watch_head(hidden) + self.evidence_wide(evidence), -1),
            "engagement": tf.squeeze(self.engagement_head(hidden), -1),
            "attention": tf.reduce_mean(weights, axis=1)[:, :, 1:],
        }

    def score_batch(self, batch: dict[str, tf.Tensor], training: bool = False) -> dict:
        """`score` for a training-style batch that carries rows instead of features.

        Each distinct video of the batch is encoded once: popular videos recur across the
        histories and candidate lists of a batch.
        """
        history_rows, candidate_rows = batch["history_rows"], batch["candidate_rows"]
        flat = tf.concat([tf.reshape(history_rows, [-1]), tf.reshape(candidate_rows, [-1])], 0)
        unique, index = tf.unique(flat, out_idx=tf.int64)
        encoded = tf.gather(self.video_encoder(self.lookup(unique)), index)
        split = tf.size(history_rows, out_type=tf.int64)
        dim = tf.shape(encoded)[-1]
        history = tf.reshape(encoded[:split], tf.concat([tf.shape(history_rows), [dim]], 0))
        candidate = tf.reshape(encoded[split:], tf.concat([tf.shape(candidate_rows), [dim]], 0))
        return self._score_encoded(
            history,
            tf.not_equal(history_rows, 0),
            batch["history_engagement"],
            batch["history_age_hours"],
            candidate,
            batch["evidence"],
            batch["user_attributes"],
            training,
        )

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Listwise softmax over each example's candidates plus the engagement regression.

        ``batch`` holds ``history_rows [b, L]``, ``history_engagement [b, L]``,
        ``history_age_hours [b, L]``, ``candidate_rows [b, K]`` (column 0 is the watched
        video), ``candidate_valid [b, K] bool``, ``evidence [b, K, E]``,
        ``user_attributes [b, A]``, ``engagement [b]`` (of the watched video; NaN unknown).
        """
        out = self.score_batch(batch, training=training)
        logits = tf.where(batch["candidate_valid"], out["watch_logits"], MASKED_LOGIT)
        size = tf.shape(logits)[0]
        labels = tf.one_hot(tf.zeros(size, tf.int32), tf.shape(logits)[1])
        replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        per_example = 1.0 / (tf.cast(size, tf.float32) * replicas)
        watch_loss = self.watch_task(
            labels=labels, predictions=logits, sample_weight=tf.fill([size], per_example)
        )
        target = batch["engagement"]
        known = tf.cast(tf.math.is_finite(target), tf.float32)
        engagement_loss = self.engagement_task(
            labels=tf.where(known > 0, target, 0.0)[:, None],
            predictions=out["engagement"][:, :1],
            sample_weight=known / (tf.maximum(tf.reduce_sum(known), 1.0) * replicas),
        )
        loss = watch_loss + self.config.engagement_loss_weight * engagement_loss
        self.epoch_loss.update_state(loss)
        return loss
