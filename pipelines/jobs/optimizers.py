"""Optimizers for models whose embedding tables may hold millions of rows."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs


def sparse_aware(
    model: tf.keras.Model, learning_rate: float, sparse_rows: int, sparse_learning_rate: float
) -> tf.keras.optimizers.Optimizer:
    """Adam, with sparse Adagrad for embedding tables of more than ``sparse_rows`` rows.

    Keras' Adam decays its moments over a whole table at every step even when a batch touches
    a few rows: at a million videos that dominated the step time. Adagrad's sparse update
    touches only the rows of the batch. Decided from the layers' sizes, so it works before the
    model has created its variables.

    Args:
        model: The model (its Embedding layers are inspected).
        learning_rate: Adam's learning rate for everything else.
        sparse_rows: Tables with more rows use Adagrad; 0 disables it.
        sparse_learning_rate: Adagrad's learning rate.
    """
    large_layers = [
        layer
        for layer in model.submodules
        if isinstance(layer, tf.keras.layers.Embedding) and layer.input_dim > sparse_rows
    ]
    if not sparse_rows or not large_layers:
        return tf.keras.optimizers.Adam(learning_rate)

    def large() -> list[tf.Variable]:
        return [layer.embeddings for layer in large_layers]

    def rest() -> list[tf.Variable]:
        tables = {id(v) for v in large()}
        return [v for v in model.trainable_variables if id(v) not in tables]

    return tfrs.experimental.optimizers.CompositeOptimizer(
        [
            (tf.keras.optimizers.legacy.Adagrad(sparse_learning_rate), large),
            (tf.keras.optimizers.legacy.Adam(learning_rate), rest),
        ]
    )
