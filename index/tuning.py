"""Exact ground truth, recall@K and the search for an operating point that meets a recall target.

Approximate results are checked against exact inner-product search on the same vectors, as in
Faiss' own tests. Tuning walks ladders of operating points (each rung more accurate and more
costly than the one before), keeps every point that reaches the target and picks the cheapest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import faiss
import numpy as np

from index.structures import OperatingPoint

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Criteria:
    """When an operating point is good enough.

    Attributes:
        target: Mean recall@K to reach.
        confidence_z: The mean minus this many standard errors must reach ``target``.
        floor: A query whose own recall is below this has failed.
        max_failed: Largest fraction of failed queries allowed.
    """

    target: float
    confidence_z: float = 0.0
    floor: float = 0.0
    max_failed: float = 1.0


@dataclasses.dataclass(frozen=True)
class Trial:
    """One operating point measured during tuning.

    Attributes:
        point: The parameters.
        recall: Mean recall@K against exact search on the tuning queries.
        stderr: Standard error of ``recall`` over the queries.
        failed: Fraction of queries whose recall is below the criteria's floor.
        ms_per_query: Wall time of the batch search divided by the number of queries.
    """

    point: OperatingPoint
    recall: float
    stderr: float
    failed: float
    ms_per_query: float

    @classmethod
    def measure(
        cls, point: OperatingPoint, per_query: np.ndarray, ms_per_query: float, floor: float
    ) -> Trial:
        """Summarises per-query recalls ``[q] float64`` of ``point``."""
        n = len(per_query)
        stderr = float(per_query.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        failed = float(np.mean(per_query < floor)) if n else 0.0
        return cls(point, float(per_query.mean()) if n else 1.0, stderr, failed, ms_per_query)

    def passes(self, criteria: Criteria) -> bool:
        """Whether this point meets ``criteria``."""
        return (
            self.recall - criteria.confidence_z * self.stderr >= criteria.target
            and self.failed <= criteria.max_failed
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the report."""
        return {
            "params": self.point.to_dict(),
            "recall": round(self.recall, 5),
            "recall_stderr": round(self.stderr, 5),
            "failed_queries": round(self.failed, 5),
            "ms_per_query": round(self.ms_per_query, 5),
        }


def exact_search(
    queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product over vectors that arrive in chunks.

    Args:
        queries: ``[q, d] float32``.
        chunks: Pairs of vectors ``[m, d] float32`` and their ids ``[m] int64``.
        k: Neighbours per query.

    Returns:
        Scores ``[q, k] float32`` (best first) and ids ``[q, k] int64``; ``-1`` pads rows when
        there are fewer than ``k`` vectors in total.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
    for vectors, ids in chunks:
        if len(vectors) == 0:
            continue
        kk = min(k, len(vectors))
        scores, rows = faiss.knn(queries, vectors, kk, metric=faiss.METRIC_INNER_PRODUCT)
        labels = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
        heap.add_result(scores, labels)
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of ``|found[:k] ∩ truth[:k]| / |truth[:k]|`` (``-1`` entries ignored).

    Args:
        found: Approximate ids ``[q, >=k] int64``.
        truth: Exact ids ``[q, >=k] int64``.
        k: Cut-off.
    """
    return float(np.mean(per_query_recall(found, truth, k))) if len(truth) else 1.0


def per_query_recall(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Recall@k of each query, ``[q] float64`` (see `recall_at_k`)."""
    out = np.empty(len(truth), dtype=np.float64)
    for i in range(len(truth)):
        t = truth[i, :k]
        t = t[t >= 0]
        if len(t) == 0:
            out[i] = 1.0
            continue
        f = found[i, :k]
        out[i] = np.count_nonzero(np.isin(t, f[f >= 0], assume_unique=True)) / len(t)
    return out


def walk_ladders(
    ladders: list[list[OperatingPoint]],
    evaluate: Callable[[OperatingPoint], tuple[np.ndarray, float]],
    criteria: Criteria,
    *,
    plateau: float = 1e-3,
    patience: int = 3,
) -> tuple[Trial | None, list[Trial]]:
    """Finds the cheapest operating point that meets ``criteria``.

    Each ladder is walked upwards until a rung passes (higher rungs only cost more), recall
    stops improving for ``patience`` rungs, or a rung already costs more than the cheapest
    passing point found so far.

    Args:
        ladders: Operating points, each list ordered from cheapest to most accurate.
        evaluate: Returns the per-query recalls ``[q] float64`` and the ms per query of a point.
        criteria: What counts as good enough.
        plateau: Smallest recall gain that counts as an improvement.
        patience: Rungs without improvement before a ladder is abandoned.

    Returns:
        The chosen trial (``None`` when no point passed) and all trials.
    """
    trials: list[Trial] = []
    feasible: list[Trial] = []
    for ladder in ladders:
        best = -1.0
        stalled = 0
        for point in ladder:
            per_query, ms = evaluate(point)
            trial = Trial.measure(point, per_query, ms, criteria.floor)
            trials.append(trial)
            logger.debug(
                "tuning %s: recall %.4f, %.2f%% failed, %.4f ms/query",
                point.to_dict(),
                trial.recall,
                100 * trial.failed,
                ms,
            )
            if trial.passes(criteria):
                feasible.append(trial)
                break
            if feasible and ms > min(t.ms_per_query for t in feasible):
                break
            stalled = stalled + 1 if trial.recall <= best + plateau else 0
            best = max(best, trial.recall)
            if stalled >= patience:
                break
    chosen = min(feasible, key=lambda t: t.ms_per_query) if feasible else None
    return chosen, trials


def latency_profile(
    search_one: Callable[[np.ndarray], object],
    queries: np.ndarray,
    count: int,
    *,
    warmup: int = 20,
) -> dict[str, float]:
    """Times ``count`` single-query calls (cycling through ``queries``), after a warm-up.

    Args:
        search_one: Searches one query ``[1, d] float32``.
        queries: ``[q, d] float32``.
        count: Timed calls.
        warmup: Untimed calls first.

    Returns:
        ``p50_ms``, ``p99_ms`` and ``mean_ms``.
    """
    n = len(queries)
    for i in range(min(warmup, count)):
        search_one(queries[i % n : i % n + 1])
    times = np.empty(count, dtype=np.float64)
    for i in range(count):
        q = queries[i % n : i % n + 1]
        t0 = time.perf_counter()
        search_one(q)
        times[i] = time.perf_counter() - t0
    times *= 1e3
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(times.mean()),
    }


def sample_rows(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` rows of ``x`` drawn without replacement (in their original order)."""
    if len(x) <= n:
        return x
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size=n, replace=False))
    return x[rows]
