"""The user tower at the fixed shapes of one request (`modeling.request_runtime` runs it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from modeling.child_process import ChildProcess
from modeling.request_runtime import Signature, request_runner


def query_function(
    query_fn: Callable[..., tf.Tensor], history_length: int, dim: int, num_attributes: int
) -> tuple[Callable[..., dict[str, tf.Tensor]], Signature]:
    """The user tower at one user's shapes, with a named output (a request-runtime builder)."""
    signature = [
        tf.TensorSpec([1, history_length, dim], tf.float32, name="history_embeddings"),
        tf.TensorSpec([1], tf.int64, name="user_rows"),
        tf.TensorSpec([1, num_attributes], tf.int64, name="user_attributes"),
    ]

    def query(
        history_embeddings: tf.Tensor, user_rows: tf.Tensor, user_attributes: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        return {"query": query_fn(history_embeddings, user_rows, user_attributes)}

    return query, signature


class RequestQuery:
    """The user tower for one request: ``[1, L, d]`` history -> ``[1, d]`` query.

    Args:
        query_fn: ``(history_embeddings, user_rows, user_attributes) -> [b, d]`` (the
            retrieval encoders' query function).
        history_length: ``L``, history slots.
        dim: Embedding width.
        num_attributes: User attribute columns.
        runtime: One of `core.config.REQUEST_RUNTIMES`.
        keepalive: The object owning the function's variables (a loaded SavedModel), which
            LiteRT conversion reads them from.
        saved_model_dir: Where ``query_fn``'s SavedModel lies, if it was loaded from disk:
            LiteRT conversion then runs in a child process.
        converter: That child process (`modeling.request_runtime.conversion_process`), to
            share it with the ranker; by default one is started for this model.
    """

    def __init__(
        self,
        query_fn: Callable[..., tf.Tensor],
        history_length: int,
        dim: int,
        num_attributes: int,
        runtime: str,
        keepalive: object = None,
        saved_model_dir: Path | None = None,
        converter: ChildProcess | None = None,
    ) -> None:
        self._execute = request_runner(
            "user tower",
            query_function,
            query_fn,
            "query",
            (history_length, dim, num_attributes),
            runtime,
            keepalive,
            saved_model_dir,
            converter,
        )

    def __call__(
        self, history_embeddings: np.ndarray, user_rows: np.ndarray, user_attributes: np.ndarray
    ) -> np.ndarray:
        """``[1, L, d] float32``, ``[1] int64``, ``[1, A] int64`` -> ``[1, d] float32``."""
        return self._execute(
            np.ascontiguousarray(history_embeddings, dtype=np.float32),
            np.asarray(user_rows, dtype=np.int64),
            np.asarray(user_attributes, dtype=np.int64),
        )["query"]
