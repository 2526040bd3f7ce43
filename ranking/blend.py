"""The serving score: the watch head blended with the engagement head (numpy)."""

from __future__ import annotations

import numpy as np

MIN_ENGAGEMENT = 1e-3


def log_softmax(logits: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Log-softmax over the last axis, ignoring invalid entries (they get -inf)."""
    logits = np.asarray(logits, dtype=np.float64)
    if valid is not None:
        logits = np.where(valid, logits, -np.inf)
    top = np.max(logits, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    shifted = logits - top
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def blend_scores(
    watch_logits: np.ndarray,
    engagement: np.ndarray,
    weight: float,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """``log p(watch) + weight * log(engagement)`` per candidate.

    ``p(watch)`` is the softmax of the watch logits over the candidate list (the chance that
    this candidate is the next watch); ``engagement`` is the expected watch fraction (or
    rating / 5). With ``weight = 1`` the score is the log of the expected engagement a slot
    earns; with 0 it is the watch probability alone.

    Args:
        watch_logits: ``[..., k]`` logits of the watch head.
        engagement: ``[..., k]`` engagement head outputs in ``(0, 1)``.
        weight: Blend weight (``ranking.engagement_weight``).
        valid: Optional ``[..., k]`` mask; invalid candidates score -inf.

    Returns:
        ``[..., k] float64`` scores, higher is better.
    """
    clipped = np.clip(np.asarray(engagement, dtype=np.float64), MIN_ENGAGEMENT, 1.0)
    return log_softmax(watch_logits, valid) + weight * np.log(clipped)
