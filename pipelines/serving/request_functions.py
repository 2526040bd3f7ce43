"""The user tower and the ranker at the fixed shapes of one request, compiled once.

A request calls two models, each with one user: the user tower on a ``[1, L, d]`` history and
the ranker on ``N`` candidates. At that size a TensorFlow call costs more in dispatch than in
arithmetic: about 15 us of Python per input tensor, about 3 us per captured variable, and a
floor of about 0.15 ms for any call. Three runtimes are offered (``serving.request_runtime``):

- ``"litert"`` (default): the concrete function converted to a LiteRT flatbuffer (builtin ops
  only, weights included) and run by the LiteRT interpreter, whose call costs microseconds and
  whose kernels use the CPU's AVX2/FMA. On the 1M-video bundle: tower 0.18 ms against 0.64 ms
  under XLA, ranker 0.49 ms against 1.29 ms, same outputs to 1e-5. Conversion takes a few
  seconds when the bundle loads (the ranker's id table is copied into the flatbuffer).
  The conversion runs in a child process when the model comes from a SavedModel on disk: it
  holds the GIL for seconds at a time, which would stall the requests a server is answering
  while a new bundle loads aside. The child (`pipelines.serving.child_process.ChildProcess`)
  dies with the server, however the server ends.
- ``"xla"``: the concrete function compiled with XLA.
- ``"graph"``: the plain concrete function.

The ranker takes five packed tensors (integer video fields, float video fields, history
context, retrieval scores, user attributes) instead of the fourteen of
`ranking.encoders.input_signature`; they are unpacked inside the graph.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from core.config import REQUEST_RUNTIMES
from core.errors import BundleError
from core.features import NUMERIC_FEATURES, VideoFeatureArrays
from pipelines.serving.child_process import ChildProcess

logger = logging.getLogger(__name__)

RUNTIMES = REQUEST_RUNTIMES

Runner = Callable[..., dict[str, np.ndarray]]


Signature = list[tf.TensorSpec]


def _query_function(
    query_fn: Callable[..., tf.Tensor], history_length: int, dim: int, num_attributes: int
) -> tuple[Callable[..., dict[str, tf.Tensor]], Signature]:
    """The user tower at one user's shapes, with a named output."""
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


def _score_function(
    score_fn: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]],
    history_length: int,
    num_candidates: int,
    dim: int,
    max_categories: int,
    num_attributes: int,
) -> tuple[Callable[..., dict[str, tf.Tensor]], Signature]:
    """The ranker over five packed tensors, unpacked in the graph."""
    slots = history_length + num_candidates
    numeric = len(NUMERIC_FEATURES)

    def packed(
        video_ints: tf.Tensor,
        video_floats: tf.Tensor,
        history_context: tf.Tensor,
        retrieval_scores: tf.Tensor,
        user_attributes: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        inputs: dict[str, tf.Tensor] = {}
        for side, part in (
            ("history", slice(0, history_length)),
            ("candidate", slice(history_length, slots)),
        ):
            inputs[f"{side}_rows"] = video_ints[:, part, 0]
            inputs[f"{side}_creator_rows"] = video_ints[:, part, 1]
            inputs[f"{side}_category_rows"] = video_ints[:, part, 2:]
            inputs[f"{side}_embeddings"] = video_floats[:, part, :dim]
            inputs[f"{side}_numeric"] = video_floats[:, part, dim:]
        inputs["history_engagement"] = history_context[..., 0]
        inputs["history_age_hours"] = history_context[..., 1]
        inputs["retrieval_scores"] = retrieval_scores
        inputs["user_attributes"] = user_attributes
        return score_fn(inputs)

    signature = [
        tf.TensorSpec([1, slots, 2 + max_categories], tf.int64, name="video_ints"),
        tf.TensorSpec([1, slots, dim + numeric], tf.float32, name="video_floats"),
        tf.TensorSpec([1, history_length, 2], tf.float32, name="history_context"),
        tf.TensorSpec([1, num_candidates], tf.float32, name="retrieval_scores"),
        tf.TensorSpec([1, num_attributes], tf.int64, name="user_attributes"),
    ]
    return packed, signature


# How a child process rebuilds each function from its SavedModel: builder, attribute.
_BUILDERS: dict[str, tuple[Callable[..., tuple[Callable[..., object], Signature]], str]] = {
    "user tower": (_query_function, "query"),
    "ranker": (_score_function, "score"),
}


def _to_litert(function: Callable[..., object], signature: Signature, keepalive: object) -> bytes:
    concrete = tf.function(function, input_signature=signature).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], keepalive)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def convert_saved_model(what: str, directory: str, shape: tuple[int, ...]) -> bytes:
    """LiteRT flatbuffer of ``what`` rebuilt from the SavedModel in ``directory`` (the body of
    the child process; public so that it can be pickled by name)."""
    builder, attribute = _BUILDERS[what]
    loaded = tf.saved_model.load(directory)
    function, signature = builder(getattr(loaded, attribute), *shape)
    return _to_litert(function, signature, loaded)


def conversion_process() -> ChildProcess:
    """A child process for LiteRT conversions, started by ``with``; share one across a
    bundle's models (each child pays for importing TensorFlow). It dies with this process."""
    return ChildProcess("vidrec-litert-conversion")


def _executor(
    what: str,
    function: Callable[..., object],
    signature: Signature,
    runtime: str,
    keepalive: object,
    saved_model_dir: Path | None,
    shape: tuple[int, ...],
    converter: ChildProcess | None,
) -> Runner:
    """``function`` at ``signature`` as ``(*numpy arrays) -> {output name: numpy array}``.

    Raises:
        BundleError: An unknown runtime, or a model LiteRT cannot convert.
    """
    if runtime not in RUNTIMES:
        raise BundleError(f"request runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    if runtime != "litert":
        concrete = tf.function(
            function, input_signature=signature, jit_compile=runtime == "xla"
        ).get_concrete_function()

        def run_tensorflow(*arrays: np.ndarray) -> dict[str, np.ndarray]:
            out = concrete(*(tf.constant(a) for a in arrays))
            return {name: value.numpy() for name, value in out.items()}

        return run_tensorflow
    started = time.perf_counter()
    try:
        if saved_model_dir is None:
            flatbuffer = _to_litert(function, signature, keepalive)
        elif converter is not None:
            flatbuffer = converter.call(convert_saved_model, what, str(saved_model_dir), shape)
        else:
            with conversion_process() as child:
                flatbuffer = child.call(convert_saved_model, what, str(saved_model_dir), shape)
    except Exception as error:  # the converter raises several unrelated types
        raise BundleError(
            f"cannot convert the {what} to LiteRT ({error}); serve it with "
            'serving.request_runtime "xla" instead'
        ) from error
    runner = Interpreter(model_content=flatbuffer, num_threads=1).get_signature_runner()
    # A signature runner reuses its buffers: one call at a time per runner.
    lock = threading.Lock()
    names = [spec.name for spec in signature]
    logger.info(
        "%s converted to LiteRT in %.1f s (%.1f MB)",
        what,
        time.perf_counter() - started,
        len(flatbuffer) / 1e6,
    )

    def run_litert(*arrays: np.ndarray) -> dict[str, np.ndarray]:
        with lock:
            return runner(**dict(zip(names, arrays, strict=True)))

    return run_litert


class RequestQuery:
    """The user tower for one request: ``[1, L, d]`` history -> ``[1, d]`` query.

    Args:
        query_fn: ``(history_embeddings, user_rows, user_attributes) -> [b, d]`` (the
            retrieval encoders' query function).
        history_length: ``L``, history slots.
        dim: Embedding width.
        num_attributes: User attribute columns.
        runtime: One of `RUNTIMES`.
        keepalive: The object owning the function's variables (a loaded SavedModel), which
            LiteRT conversion reads them from.
        saved_model_dir: Where ``query_fn``'s SavedModel lies, if it was loaded from disk:
            LiteRT conversion then runs in a child process.
        converter: That child process (`conversion_process`), to share it with the ranker;
            by default one is started for this model.
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
        shape = (history_length, dim, num_attributes)
        function, signature = _query_function(query_fn, *shape)
        self._execute = _executor(
            "user tower", function, signature, runtime, keepalive, saved_model_dir, shape, converter
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


class RequestScorer:
    """The ranker for one request: ``H`` history slots, ``N`` candidate slots.

    Args:
        score_fn: The ranker's scoring function (signature of
            `ranking.encoders.input_signature`).
        history_length: ``H``.
        num_candidates: ``N``; shorter lists are padded by the caller.
        dim: Retrieval embedding width.
        max_categories: Category slots per video.
        num_attributes: User attribute columns.
        runtime: One of `RUNTIMES`.
        keepalive: The object owning the function's variables (see `RequestQuery`).
        saved_model_dir: Where ``score_fn``'s SavedModel lies (see `RequestQuery`).
        converter: The child process for the conversion (see `RequestQuery`).
    """

    def __init__(
        self,
        score_fn: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]],
        history_length: int,
        num_candidates: int,
        dim: int,
        max_categories: int,
        num_attributes: int,
        runtime: str,
        keepalive: object = None,
        saved_model_dir: Path | None = None,
        converter: ChildProcess | None = None,
    ) -> None:
        self.history_length = history_length
        self.num_candidates = num_candidates
        self.dim = dim
        shape = (history_length, num_candidates, dim, max_categories, num_attributes)
        function, signature = _score_function(score_fn, *shape)
        self._execute = _executor(
            "ranker", function, signature, runtime, keepalive, saved_model_dir, shape, converter
        )
        self._ints_width = 2 + max_categories
        self._floats_width = dim + len(NUMERIC_FEATURES)

    def __call__(
        self,
        history_rows: np.ndarray,
        history_engagement: np.ndarray,
        history_age_hours: np.ndarray,
        candidate_rows: np.ndarray,
        retrieval_scores: np.ndarray,
        user_attributes: np.ndarray,
        videos: VideoFeatureArrays,
        embeddings: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Scores one padded candidate list.

        Args:
            history_rows: ``[H] int64`` video rows, oldest first, left-padded with 0.
            history_engagement: ``[H] float32``.
            history_age_hours: ``[H] float32``.
            candidate_rows: ``[N] int64`` (0 on unused slots).
            retrieval_scores: ``[N] float32``.
            user_attributes: ``[1, A] int64``.
            videos: Features by video row (the live catalogue's arrays).
            embeddings: ``[rows, dim] float32`` retrieval embeddings by row.

        Returns:
            ``watch_logits [N]``, ``engagement [N]`` and ``attention [N, H]``.
        """
        rows = np.concatenate([history_rows, candidate_rows])
        video_ints = np.empty((1, len(rows), self._ints_width), dtype=np.int64)
        video_ints[0, :, 0] = rows
        video_ints[0, :, 1] = videos.creator_rows[rows]
        video_ints[0, :, 2:] = videos.category_rows[rows]
        video_floats = np.empty((1, len(rows), self._floats_width), dtype=np.float32)
        video_floats[0, :, : self.dim] = embeddings[rows]
        video_floats[0, :, self.dim :] = videos.numeric[rows]
        context = np.stack([history_engagement, history_age_hours], axis=-1)[None]
        out = self._execute(
            video_ints,
            video_floats,
            context.astype(np.float32),
            retrieval_scores.astype(np.float32)[None],
            user_attributes.astype(np.int64),
        )
        return {name: value[0] for name, value in out.items()}
