"""Building blocks both models use: initialiser, row clamping, the transformer block.

The user tower (`retrieval.towers.UserTower`) and the ranker's history encoder
(`ranking.model.RankerModel`) run the same pre-norm transformer block; they differ only in the
attention mask they hand it (`self_attention_mask`): causal in the user tower, so that one pass
over a window yields the query of every prefix, and over the whole history in the ranker.
"""

from __future__ import annotations

import tensorflow as tf

from core.vocab import OOV_ROW


def truncated_normal() -> tf.keras.initializers.Initializer:
    """A fresh initializer per table (a shared instance would give tables identical values)."""
    return tf.keras.initializers.TruncatedNormal(stddev=0.02)


def clamp_rows(rows: tf.Tensor, num_rows: int) -> tf.Tensor:
    """Rows beyond a table (vocabulary grown after training) become the OOV row."""
    return tf.where(rows >= num_rows, tf.constant(OOV_ROW, rows.dtype), rows)


def self_attention_mask(valid: tf.Tensor, length: tf.Tensor, causal: bool) -> tf.Tensor:
    """Which key each query may attend to, ``valid [b, L] bool`` -> ``[b, L, L] bool``.

    Query ``i`` sees the valid keys (only those at ``j <= i`` when ``causal``) and always
    itself, so a padded column never has an empty softmax. ``length`` is ``L`` as the caller
    has it at hand (``tf.shape(...)[1]``); reading it here would add ops to the training graph,
    which shifts the seeds of its dropout ops (a changed op count changes training results).
    """
    mask = valid[:, None, :]
    if causal:
        mask = tf.linalg.band_part(tf.ones((length, length), tf.bool), -1, 0)[None] & mask
    return mask | tf.eye(length, dtype=tf.bool)[None]


class TransformerBlock(tf.keras.layers.Layer):
    """Pre-norm transformer block: masked multi-head self-attention, then a feed-forward net.

    The dropout layers hold no weights, so the weight list (what warm starts copy by position,
    `core.warm_start`) is the two norms, the attention and the two dense layers, in that order.

    Args:
        dim: Width of the tokens.
        num_heads: Attention heads (``dim`` must divide by it).
        dropout: Dropout rate of the attention weights and of both residual branches.
        name: Layer name.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, name: str) -> None:
        super().__init__(name=name)
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=dim // num_heads, dropout=dropout
        )
        self.attention_dropout = tf.keras.layers.Dropout(dropout)
        self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.ffn_hidden = tf.keras.layers.Dense(2 * dim, activation="gelu")
        self.ffn_output = tf.keras.layers.Dense(dim)
        self.ffn_dropout = tf.keras.layers.Dropout(dropout)

    def call(self, x: tf.Tensor, attention_mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``x [b, L, d]``, ``attention_mask [b, L, L] bool`` -> ``[b, L, d]``."""
        h = self.attention_norm(x)
        h = self.attention(h, h, attention_mask=attention_mask, training=training)
        x = x + self.attention_dropout(h, training=training)
        h = self.ffn_output(self.ffn_hidden(self.ffn_norm(x)))
        return x + self.ffn_dropout(h, training=training)
