"""How far back the sources read a history: the recency decay, picked on validation cases.

A source scores a candidate by the weighted sum over the latest watches of how strongly it
follows each (`ItemGraph.top`); the newest watch weighs 1 and each older one ``decay`` times
the next. How fast that weight should fall differs between platforms, and no one value is
right for all of them. Co-visitation alone, test NDCG@10 at decays 0.5 and 0.7 (leave-one-out,
200 neighbours per video; validation moved the same way): ml-100k 0.115 and 0.119,
ml-latest-small 0.075 and 0.078, the synthetic platform of the demo 0.187 and 0.179, where the
next episode hangs on the last watch alone. So the train job measures it: each candidate decay
on the validation cases, each source ranking its own proposals with every watched video left
out (as a request does), and keeps the one with the best mean NDCG@10 over the sources.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from candidates.sources import CandidateSources
from core.metrics import list_metrics
from core.vocab import FIRST_ID_ROW

logger = logging.getLogger(__name__)

_CUTOFF = 10
_CHUNK = 2_048


def fit_recency_decay(
    sources: CandidateSources,
    histories: Sequence[np.ndarray],
    target_rows: np.ndarray,
    choices: tuple[float, ...],
) -> tuple[CandidateSources, dict[str, object]]:
    """The sources with the decay under which they best predict the validation targets.

    Args:
        sources: Counted sources (their decay is the one kept without choices or cases).
        histories: Per validation case, ``[h] int64`` the rows of every video it watched,
            oldest first: the latest are what the sources read, and none is proposed (as at
            request time).
        target_rows: ``[b] int64`` the watch that followed each history.
        choices: Decays to compare; the first of equally good ones wins.

    Returns:
        ``(sources with the kept decay, record)``; the record holds ``recency_decay``, each
        choice's ``validation_ndcg@10`` per source and the number of ``cases``.
    """
    target_rows = np.asarray(target_rows, dtype=np.int64)
    if not choices or not len(target_rows) or not sources.graphs:
        return sources, {"recency_decay": sources.recency_decay, "cases": len(target_rows)}
    candidates = {str(decay): sources.with_recency_decay(decay) for decay in choices}
    totals = {key: dict.fromkeys(sources.graphs, 0.0) for key in candidates}
    # In chunks: a batch of proposals holds every edge of every latest watch at once. The
    # latest watches do not depend on the decay, only their weights do.
    for start in range(0, len(target_rows), _CHUNK):
        watched = _left_padded(histories[start : start + _CHUNK])
        targets = target_rows[start : start + _CHUNK]
        recent = sources.recent(watched)
        for key, candidate in candidates.items():
            for name, (rows, scores) in candidate.propose(recent, watched).items():
                found = rows == targets[:, None]
                column = np.where(found.any(axis=1), found.argmax(axis=1), -1)
                # Padding (row 0) never outranks a proposal, nor ties with one.
                ranked = np.where(rows >= FIRST_ID_ROW, scores, -np.inf)
                ndcg = list_metrics(ranked, column, k=_CUTOFF)[f"ndcg@{_CUTOFF}"]
                totals[key][name] += ndcg * len(targets)
    figures = {
        key: {name: round(value / len(target_rows), 5) for name, value in total.items()}
        for key, total in totals.items()
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


def _left_padded(histories: Sequence[np.ndarray]) -> np.ndarray:
    """``[b, longest] int64`` the histories right-aligned, 0 before the shorter ones."""
    out = np.zeros((len(histories), max((len(h) for h in histories), default=0)), np.int64)
    for i, rows in enumerate(histories):
        if len(rows):
            out[i, -len(rows) :] = rows
    return out
