"""The ranker at the fixed shapes of one request: padded, packed, run by a request runtime.

A request ranks at most ``N`` candidates against the user's last ``H`` watches, and the
compiled function (`modeling.request_runtime`) has one shape, so `RequestScorer` pads both as
the training lists do: the history on the left (row 0, engagement `UNKNOWN_ENGAGEMENT`, age 0),
the candidates on the right (row 0, evidence 0). Padded history slots get no attention
(the model masks row 0) and the scores of padded candidate slots are dropped.

The ranker's fourteen inputs (`ranking.encoders.input_signature`) cross into the function as
five packed tensors, since a TensorFlow call costs about 15 us of Python per input tensor:

- ``video_ints [1, H + N, 2 + C] int64``: per slot (history, then candidates) the video row,
  its creator row and its ``C`` category rows;
- ``video_floats [1, H + N, d + F] float32``: its retrieval embedding and ``F`` numbers;
- ``history_context [1, H, 2] float32``: engagement and age in hours of each watch;
- ``candidate_evidence [1, N, E] float32`` and ``user_attributes [1, A] int64``.

`RequestScorer` packs them in numpy and `packed_score_function` unpacks them in the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from core.features import NUMERIC_FEATURES, VideoFeatureArrays
from modeling.child_process import ChildProcess
from modeling.request_runtime import Signature, request_runner
from ranking.inputs import UNKNOWN_ENGAGEMENT, video_fields


def packed_score_function(
    score_fn: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]],
    history_length: int,
    num_candidates: int,
    dim: int,
    max_categories: int,
    num_attributes: int,
    evidence_width: int,
) -> tuple[Callable[..., dict[str, tf.Tensor]], Signature]:
    """The ranker over the five packed tensors, unpacked in the graph (a request-runtime
    builder)."""
    slots = history_length + num_candidates
    numeric = len(NUMERIC_FEATURES)

    def packed(
        video_ints: tf.Tensor,
        video_floats: tf.Tensor,
        history_context: tf.Tensor,
        candidate_evidence: tf.Tensor,
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
        inputs["candidate_evidence"] = candidate_evidence
        inputs["user_attributes"] = user_attributes
        return score_fn(inputs)

    signature = [
        tf.TensorSpec([1, slots, 2 + max_categories], tf.int64, name="video_ints"),
        tf.TensorSpec([1, slots, dim + numeric], tf.float32, name="video_floats"),
        tf.TensorSpec([1, history_length, 2], tf.float32, name="history_context"),
        tf.TensorSpec([1, num_candidates, evidence_width], tf.float32, name="candidate_evidence"),
        tf.TensorSpec([1, num_attributes], tf.int64, name="user_attributes"),
    ]
    return packed, signature


class RequestScorer:
    """The ranker for one request: ``H`` history slots, ``N`` candidate slots.

    Args:
        score_fn: The ranker's scoring function (signature of
            `ranking.encoders.input_signature`).
        history_length: ``H``.
        num_candidates: ``N``, the most candidates one call scores.
        dim: Retrieval embedding width.
        max_categories: Category slots per video.
        num_attributes: User attribute columns.
        evidence_width: Evidence columns per candidate.
        runtime: One of `core.config.REQUEST_RUNTIMES`.
        keepalive: The object owning the function's variables (see
            `retrieval.request.RequestQuery`).
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
        evidence_width: int,
        runtime: str,
        keepalive: object = None,
        saved_model_dir: Path | None = None,
        converter: ChildProcess | None = None,
    ) -> None:
        self.history_length = history_length
        self.num_candidates = num_candidates
        self.evidence_width = evidence_width
        self._execute = request_runner(
            "ranker",
            packed_score_function,
            score_fn,
            "score",
            (history_length, num_candidates, dim, max_categories, num_attributes, evidence_width),
            runtime,
            keepalive,
            saved_model_dir,
            converter,
        )

    def __call__(
        self,
        history_rows: np.ndarray,
        history_engagement: np.ndarray,
        history_age_hours: np.ndarray,
        candidate_rows: np.ndarray,
        evidence: np.ndarray,
        user_attributes: np.ndarray,
        videos: VideoFeatureArrays,
        embeddings: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Scores one user's candidates against the user's watches.

        Args:
            history_rows: ``[n] int64`` rows of the watched videos, oldest first; the last
                ``H`` are read.
            history_engagement: ``[n] float32`` engagement of each watch (NaN when unknown).
            history_age_hours: ``[n] float32`` hours from each watch to the request.
            candidate_rows: ``[k] int64`` rows of the candidates, ``k <= N``.
            evidence: ``[k, E] float32`` what is known about each candidate's origin.
            user_attributes: ``[1, A] int64``.
            videos: Features by video row (the live catalogue's arrays).
            embeddings: ``[rows, dim] float32`` retrieval embeddings by row.

        Returns:
            ``watch_logits [k]``, ``engagement [k]``, ``attention [k, H]``, and
            ``history_rows [H]``: the rows the attention columns refer to (0 on padding).
        """
        h = self.history_length
        recent = min(len(history_rows), h)
        first = len(history_rows) - recent  # never a negative start: x[-0:] is all of x
        found = len(candidate_rows)
        rows = np.zeros(h + self.num_candidates, dtype=np.int64)
        rows[h - recent : h] = history_rows[first:]
        rows[h : h + found] = candidate_rows
        context = np.zeros((1, h, 2), dtype=np.float32)
        context[0, : h - recent, 0] = UNKNOWN_ENGAGEMENT
        context[0, h - recent :, 0] = np.nan_to_num(
            history_engagement[first:], nan=UNKNOWN_ENGAGEMENT
        )
        context[0, h - recent :, 1] = history_age_hours[first:]
        padded_evidence = np.zeros((1, self.num_candidates, self.evidence_width), np.float32)
        padded_evidence[0, :found] = evidence
        # Padding slots read row 0's features, as the batch scorer's do.
        fields = video_fields(rows, videos, embeddings)
        video_ints = np.concatenate(
            [fields["rows"][:, None], fields["creator_rows"][:, None], fields["category_rows"]],
            axis=1,
            dtype=np.int64,
        )
        video_floats = np.concatenate(
            [fields["embeddings"], fields["numeric"]], axis=1, dtype=np.float32
        )
        out = self._execute(
            video_ints[None],
            video_floats[None],
            context,
            padded_evidence,
            np.asarray(user_attributes, dtype=np.int64),
        )
        scored = {name: value[0, :found] for name, value in out.items()}
        scored["history_rows"] = rows[:h]
        return scored
