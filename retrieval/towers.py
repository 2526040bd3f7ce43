"""The two towers: a content-aware video tower and a causal self-attention user tower.

The user tower reads the *embeddings* of the watched videos (the video tower's own output), so a
history may contain a video uploaded after training: embed it once with the video tower and it
is a valid history item, with no vocabulary growth inside the model.
"""

from __future__ import annotations

import tensorflow as tf

from core.vocab import OOV_ROW
from modeling.layers import TransformerBlock, clamp_rows, self_attention_mask, truncated_normal


def masked_mean(vectors: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """Mean of ``vectors [..., k, d]`` over slots whose ``rows [..., k]`` are non-zero."""
    mask = tf.cast(tf.not_equal(rows, 0), vectors.dtype)[..., None]
    total = tf.reduce_sum(vectors * mask, axis=-2)
    return total / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)


class VideoTower(tf.keras.layers.Layer):
    """Video features to an L2-normalised embedding ``[..., dim] float32``.

    The id embedding is summed with an MLP over content (categories, title and tag tokens,
    creator, numbers). During training the id is replaced by the OOV row with probability
    ``id_dropout``, which teaches the content path to stand alone for videos nobody has watched.

    Args:
        num_video_rows: Rows of the video vocabulary.
        num_category_rows: Rows of the category vocabulary.
        num_creator_rows: Rows of the creator vocabulary.
        token_buckets: Hash buckets of title tokens (row 0 is padding).
        dim: Embedding dimension.
        use_content: Whether content features are used at all.
        id_dropout: Training-time probability of hiding the id.
        dropout: Dropout inside the content MLP.
    """

    def __init__(
        self,
        num_video_rows: int,
        num_category_rows: int,
        num_creator_rows: int,
        token_buckets: int,
        dim: int,
        use_content: bool,
        id_dropout: float,
        dropout: float,
        name: str = "video_tower",
    ) -> None:
        super().__init__(name=name)
        self.num_video_rows = num_video_rows
        self.num_category_rows = num_category_rows
        self.num_creator_rows = num_creator_rows
        self.token_buckets = token_buckets
        self.use_content = use_content
        self.id_dropout = id_dropout if use_content else 0.0
        self.id_embedding = tf.keras.layers.Embedding(
            num_video_rows, dim, embeddings_initializer=truncated_normal(), name="video_id"
        )
        if use_content:
            self.category_embedding = tf.keras.layers.Embedding(
                num_category_rows, dim, embeddings_initializer=truncated_normal(), name="category"
            )
            self.token_embedding = tf.keras.layers.Embedding(
                token_buckets + 1, dim, embeddings_initializer=truncated_normal(), name="token"
            )
            self.creator_embedding = tf.keras.layers.Embedding(
                num_creator_rows, dim, embeddings_initializer=truncated_normal(), name="creator"
            )
            self.numeric_projection = tf.keras.layers.Dense(dim, name="numeric")
            self.content_hidden = tf.keras.layers.Dense(2 * dim, activation="gelu", name="hidden")
            self.content_dropout = tf.keras.layers.Dropout(dropout)
            self.content_output = tf.keras.layers.Dense(dim, name="content")

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Embeds videos.

        Args:
            features: ``video_rows [...] int64``, ``category_rows [..., C] int64``,
                ``token_ids [..., T] int64``, ``creator_rows [...] int64``,
                ``numeric [..., F] float32``.
            training: Enables id dropout and dropout.

        Returns:
            ``[..., dim] float32`` unit-norm embeddings.
        """
        rows = clamp_rows(features["video_rows"], self.num_video_rows)
        if training and self.id_dropout > 0.0:
            hide = tf.random.uniform(tf.shape(rows)) < self.id_dropout
            rows = tf.where(hide & (rows > 0), tf.constant(OOV_ROW, rows.dtype), rows)
        vector = self.id_embedding(rows)
        if self.use_content:
            categories = clamp_rows(features["category_rows"], self.num_category_rows)
            tokens = tf.minimum(features["token_ids"], self.token_buckets)
            content = tf.concat(
                [
                    masked_mean(self.category_embedding(categories), categories),
                    masked_mean(self.token_embedding(tokens), tokens),
                    self.creator_embedding(
                        clamp_rows(features["creator_rows"], self.num_creator_rows)
                    ),
                    self.numeric_projection(features["numeric"]),
                ],
                axis=-1,
            )
            hidden = self.content_dropout(self.content_hidden(content), training=training)
            vector = vector + self.content_output(hidden)
        return tf.math.l2_normalize(vector, axis=-1)


class UserTower(tf.keras.layers.Layer):
    """Watch history (plus optional user id and attributes) to query embeddings.

    A causal self-attention encoder over the history embeddings (SASRec-style, learned absolute
    positions over the left-padded window): the output at column ``j`` depends only on columns
    ``<= j``, so one pass yields the query for every prefix of the window.

    Args:
        history_length: Columns of the history window.
        dim: Embedding dimension.
        num_blocks: Transformer blocks.
        num_heads: Attention heads.
        dropout: Dropout rate.
        num_user_rows: Rows of the user vocabulary, or 0 to ignore user ids.
        user_attribute_rows: Vocabulary size of each user attribute (empty to ignore them).
    """

    def __init__(
        self,
        history_length: int,
        dim: int,
        num_blocks: int,
        num_heads: int,
        dropout: float,
        num_user_rows: int,
        user_attribute_rows: tuple[int, ...],
        name: str = "user_tower",
    ) -> None:
        super().__init__(name=name)
        self.history_length = history_length
        self.dim = dim
        self.num_user_rows = num_user_rows
        self.position_embedding = tf.keras.layers.Embedding(
            history_length, dim, embeddings_initializer=truncated_normal(), name="position"
        )
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.blocks = [
            TransformerBlock(dim, num_heads, dropout, name=f"block_{i}") for i in range(num_blocks)
        ]
        self.output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.user_embedding = (
            tf.keras.layers.Embedding(
                num_user_rows, dim, embeddings_initializer=truncated_normal(), name="user"
            )
            if num_user_rows
            else None
        )
        self.attribute_embeddings = [
            tf.keras.layers.Embedding(
                rows, dim, embeddings_initializer=truncated_normal(), name=f"attr_{i}"
            )
            for i, rows in enumerate(user_attribute_rows)
        ]
        self.output_projection = tf.keras.layers.Dense(dim, name="query")

    def call(
        self,
        history: tf.Tensor,
        user_rows: tf.Tensor,
        user_attributes: tf.Tensor,
        training: bool = False,
    ) -> tf.Tensor:
        """Query embedding at every history column.

        Args:
            history: ``[b, L, d] float32`` unit-norm embeddings of the watched videos, oldest
                first, left-padded with zero vectors.
            user_rows: ``[b] int64`` user vocabulary rows (ignored without a user embedding).
            user_attributes: ``[b, A] int64`` attribute rows.
            training: Enables dropout.

        Returns:
            ``[b, L, d] float32`` unit-norm queries; column ``j`` reads columns ``<= j``.
        """
        valid = tf.reduce_any(tf.not_equal(history, 0.0), axis=-1)  # [b, L]
        length = tf.shape(history)[1]
        positions = self.position_embedding(tf.range(length))[None]
        x = history * tf.sqrt(tf.cast(self.dim, tf.float32)) + positions
        x = self.input_dropout(x, training=training) * tf.cast(valid, x.dtype)[..., None]
        # Column j attends to the valid columns up to j: one pass yields every prefix's query.
        mask = self_attention_mask(valid, length, causal=True)
        for block in self.blocks:
            x = block(x, mask, training=training)
            x = x * tf.cast(valid, x.dtype)[..., None]
        x = self.output_norm(x)
        context = []
        if self.user_embedding is not None:
            context.append(self.user_embedding(clamp_rows(user_rows, self.num_user_rows)))
        for i, embedding in enumerate(self.attribute_embeddings):
            context.append(embedding(clamp_rows(user_attributes[:, i], embedding.input_dim)))
        if context:
            x = x + tf.add_n(context)[:, None, :]
        return tf.math.l2_normalize(self.output_projection(x), axis=-1)
