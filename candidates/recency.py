"""How far back the sources read a history: the recency decay, picked on validation cases.

A source scores a candidate by the weighted sum over the latest watches of how strongly it
follows each (`ItemGraph.top`); the newest watch weighs 1 and each older one ``decay`` times
the next. How fast that weight should fall differs between platforms, and no one value is
right for all of them. Co-visitation alone, test NDCG@10 at decays 0.5 and 0.7 (leave-one-out,
200 neighbours per video; validation moved the same way): ml-100k 0.115 and 0.119,
ml-latest-small 0.075 and 0.078, the synthetic platform of the demo 0.187 and 0.179, where the
next episode hangs on the last watch alone. So the train job measures it: each candidate decay
on the validation cases, each source ranking its own proposals, and keeps the one with the
best mean NDCG@10 over the sources.
"""

from __future__ import annotations

import logging

import numpy as np

from candidates.sources import CandidateSources
from core.vocab import FIRST_ID_ROW

logger = logging.getLogger(__name__)

_CUTOFF = 10
_CHUNK = 2_048


def fit_recency_decay(
    sources: CandidateSources,
    history_rows: np.ndarray,
    target_rows: np.ndarray,
    choices: tuple[float, ...],
) -> tuple[CandidateSources, dict[str, object]]:
    """The sources with the decay under which they best predict the validation targets.

    Args:
        sources: Counted sources (their decay is the one kept without choices or cases).
        history_rows: ``[b, L] int64`` validation histories, oldest first, left-padded with 0.
        target_rows: ``[b] int64`` the watch that followed each history.
        choices: Decays to compare; the first of equally good ones wins.

    Returns:
        ``(sources with the kept decay, record)``; the record holds ``recency_decay``, each
        choice's ``validation_ndcg@10`` per source and the number of ``cases``.
    """
    history_rows = np.asarray(history_rows, dtype=np.int64)
    target_rows = np.asarray(target_rows, dtype=np.int64)
    if not choices or not len(target_rows) or not sources.graphs:
        return sources, {"recency_decay": sources.recency_decay, "cases": len(target_rows)}
    figures: dict[str, dict[str, float]] = {}
    for decay in choices:
        candidate = sources.with_recency_decay(decay)
        gains: dict[str, list[np.ndarray]] = {name: [] for name in sources.graphs}
        # In chunks: a batch of proposals holds every edge of every latest watch at once.
        for start in range(0, len(target_rows), _CHUNK):
            histories = history_rows[start : start + _CHUNK]
            proposals = candidate.propose(candidate.recent(histories), histories)
            for name, (rows, scores) in proposals.items():
                gains[name].append(_gains(rows, scores, target_rows[start : start + _CHUNK]))
        figures[str(decay)] = {
            name: round(float(np.concatenate(parts).mean()), 5) for name, parts in gains.items()
        }
    mean = {key: float(np.mean(list(by_source.values()))) for key, by_source in figures.items()}
    best = max(mean, key=lambda key: mean[key])
    logger.info(
        "recency decay: keeping %s (mean source NDCG@10 on %d validation cases: %s)",
        best,
        len(target_rows),
        ", ".join(f"{key} {value:.4f}" for key, value in mean.items()),
    )
    record = {
        "recency_decay": float(best),
        "validation_ndcg@10": figures,
        "cases": len(target_rows),
    }
    return sources.with_recency_decay(float(best)), record


def _gains(rows: np.ndarray, scores: np.ndarray, target_rows: np.ndarray) -> np.ndarray:
    """``[b] float64`` NDCG@10 of each list of proposals ``rows``/``scores [b, n]`` (best
    first) for its one target, ties counted against the target."""
    proposed = rows >= FIRST_ID_ROW
    found = proposed & (rows == target_rows[:, None])
    hit = found.any(axis=1)
    target_score = np.where(found, scores, -np.inf).max(axis=1)
    rank = (proposed & (scores >= target_score[:, None])).sum(axis=1)
    gain = np.where(hit & (rank <= _CUTOFF), 1.0 / np.log2(np.maximum(rank, 1) + 1.0), 0.0)
    return gain
