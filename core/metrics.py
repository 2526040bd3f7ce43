"""Full-catalogue ranking metrics with seen videos filtered (docs/design.md §8).

A scorer gives every case a score for every catalogue column; videos already in the case's
history are removed, and each relevant video's rank is counted pessimistically (ties with other
videos are ranked above it), so a constant scorer earns nothing by luck.

With one relevant video per case (leave-one-out) HR@K equals Recall@K.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np

from core.progress import Progress
from core.splits import EvalCases
from core.vocab import FIRST_ID_ROW, IdVocabulary

logger = logging.getLogger(__name__)

SCORE_BUDGET = 1 << 25  # scores of one batch (128 MiB of float32): bounded at any scale

Scorer = Callable[[EvalCases], np.ndarray]
"""Maps a batch of cases to scores ``[len(cases), num_videos] float32`` in catalogue order."""


def target_ranks(
    scores: np.ndarray, seen_columns: Sequence[np.ndarray], target_columns: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """1-based pessimistic ranks of each case's targets among the unseen catalogue.

    Args:
        scores: ``[b, n] float32`` scores; modified in place (seen columns set to -inf).
        seen_columns: Per case, ``[h] int64`` columns to filter; must not contain targets.
        target_columns: Per case, ``[t] int64`` columns of the relevant videos.

    Returns:
        Per case, ``[t] int64`` ranks: 1 + number of other unseen videos scoring >= the target.
    """
    ranks = []
    for row, (seen, targets) in enumerate(zip(seen_columns, target_columns, strict=True)):
        line = scores[row]
        line[seen] = -np.inf
        target_scores = line[targets]
        not_below = (line[None, :] >= target_scores[:, None]).sum(axis=1)
        ranks.append(not_below.astype(np.int64))
    return ranks


def list_metrics(scores: np.ndarray, target: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k of reranked lists whose watched video is at column ``target`` (-1: absent).

    Ties count against the target.
    """
    present = target >= 0
    rows = np.flatnonzero(present)
    target_scores = scores[rows, target[rows]]
    ranks = np.zeros(len(scores), dtype=np.int64)
    ranks[rows] = (scores[rows] >= target_scores[:, None]).sum(axis=1)
    hit = present & (ranks <= k) & (ranks >= 1)
    gain = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0)
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float(gain.mean())}


def metrics_from_ranks(
    ranks: Sequence[np.ndarray], ks: Sequence[int], ns: Sequence[int] = ()
) -> dict[str, float]:
    """HR@K, NDCG@K, Recall@K for each K, Recall@N for each N, and MRR, averaged over cases.

    Args:
        ranks: Per case, ``[t] int64`` 1-based ranks of its relevant videos (t >= 1).
        ks: Cut-offs of the final list.
        ns: Extra cut-offs for the candidate list's Recall@N.

    Returns:
        ``{"hr@10": ..., "ndcg@10": ..., "recall@10": ..., "recall@300": ..., "mrr": ...}``.
    """
    if not ranks:
        raise ValueError("no cases to average over")
    out: dict[str, float] = {}
    for k in ks:
        hr, ndcg, recall = [], [], []
        ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
        for r in ranks:
            hits = r <= k
            hr.append(float(hits.any()))
            recall.append(float(hits.sum()) / len(r))
            dcg = float((1.0 / np.log2(r[hits] + 1.0)).sum())
            ndcg.append(dcg / ideal[min(len(r), k) - 1])
        out[f"hr@{k}"] = float(np.mean(hr))
        out[f"ndcg@{k}"] = float(np.mean(ndcg))
        out[f"recall@{k}"] = float(np.mean(recall))
    for n in ns:
        out[f"recall@{n}"] = float(np.mean([(r <= n).sum() / len(r) for r in ranks]))
    out["mrr"] = float(np.mean([1.0 / r.min() for r in ranks]))
    return out


@dataclasses.dataclass(frozen=True)
class RankingReport:
    """Accuracy and beyond-accuracy figures of one scorer on one set of cases.

    Attributes:
        metrics: Accuracy metrics (see `metrics_from_ranks`), plus ``coverage@K`` (share of the
            catalogue appearing in any top-K list) and ``categories@K`` (mean number of distinct
            categories in a top-K list).
        num_cases: Cases evaluated.
        skipped_cases: Cases dropped because every target was already in their history.
    """

    metrics: dict[str, float]
    num_cases: int
    skipped_cases: int


def evaluate_scorer(
    scorer: Scorer,
    cases: EvalCases,
    video_vocab: IdVocabulary,
    *,
    ks: Sequence[int] = (10,),
    ns: Sequence[int] = (),
    diversity_k: int = 10,
    video_categories: Sequence[Sequence[str]] | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> RankingReport:
    """Ranks the full catalogue for every case and reports the metrics.

    Args:
        scorer: Batch of cases -> ``[b, num_videos] float32`` scores in catalogue column order
            (column ``c`` is the video of vocabulary row ``c + FIRST_ID_ROW``).
        cases: Histories and targets.
        video_vocab: The catalogue's vocabulary; defines the column order.
        ks: Cut-offs for HR/NDCG/Recall of the final list.
        ns: Cut-offs for Recall@N of the candidate list.
        diversity_k: Length of the lists for coverage and category diversity.
        video_categories: Categories of each catalogue column, for ``categories@K``.
        batch_size: Cases scored per call of ``scorer``; by default as many as keep one call's
            scores within `SCORE_BUDGET` (256 at most).
        progress: Told the cases scored after every batch.

    Returns:
        The report.
    """
    num_videos = video_vocab.num_ids
    batch_size = batch_size or max(1, min(256, SCORE_BUDGET // max(num_videos, 1)))
    all_ranks: list[np.ndarray] = []
    shown = np.zeros(num_videos, dtype=bool)
    distinct_categories: list[int] = []
    skipped = 0
    category_codes = _category_codes(video_categories) if video_categories is not None else None
    for start in range(0, len(cases), batch_size):
        batch = cases.subset(np.arange(start, min(start + batch_size, len(cases))))
        scores = np.array(scorer(batch), dtype=np.float32, copy=True)
        if scores.shape != (len(batch), num_videos):
            raise ValueError(
                f"scorer returned shape {scores.shape}, expected {(len(batch), num_videos)}"
            )
        if progress is not None:
            progress.update(len(batch))
        seen_cols, target_cols, keep = [], [], []
        for i in range(len(batch)):
            seen = video_vocab.lookup(batch.history(i)) - FIRST_ID_ROW
            seen = seen[seen >= 0]
            targets = video_vocab.lookup(batch.targets(i)) - FIRST_ID_ROW
            targets = np.setdiff1d(targets[targets >= 0], seen)
            if len(targets) == 0:
                skipped += 1
                continue
            seen_cols.append(seen)
            target_cols.append(targets)
            keep.append(i)
        if not keep:
            continue
        scores = scores[keep]
        all_ranks.extend(target_ranks(scores, seen_cols, target_cols))
        shown_k = min(diversity_k, num_videos)
        top = np.argpartition(-scores, shown_k - 1, axis=1)[:, :shown_k]
        shown[top.ravel()] = True
        if category_codes is not None:
            for row in top:
                distinct_categories.append(len(set().union(*(category_codes[c] for c in row))))
    if not all_ranks:
        raise ValueError("every case was skipped: all targets are already in the histories")
    metrics = metrics_from_ranks(all_ranks, ks, ns)
    metrics[f"coverage@{diversity_k}"] = float(shown.mean())
    if category_codes is not None:
        metrics[f"categories@{diversity_k}"] = float(np.mean(distinct_categories))
    if skipped:
        logger.warning("skipped %d case(s) whose targets were all already watched", skipped)
    return RankingReport(metrics=metrics, num_cases=len(all_ranks), skipped_cases=skipped)


def _category_codes(video_categories: Sequence[Sequence[str]]) -> list[frozenset[int]]:
    names: dict[str, int] = {}
    return [frozenset(names.setdefault(c, len(names)) for c in cats) for cats in video_categories]
