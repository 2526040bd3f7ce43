"""Exact ground truth, recall@K and the search for an operating point that meets a recall target.

Approximate results are checked against exact inner-product search on the same vectors, as in
Faiss' own tests. Tuning walks ladders of operating points (each rung more accurate and more
costly than the one before), keeps every point that reaches the target and picks the cheapest;
then it measures the chosen point (recall@10, single-query latency, batch throughput) for the
index report. `VideoIndex.tune` runs these steps in order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import faiss
import numpy as np

from core.config import IndexConfig
from core.errors import DataError, IndexBuildError
from index.arrays import check_vectors, normalized, sample_rows
from index.concurrency import default_threads
from index.operating_points import OperatingPoint, candidate_ladders, ladder_fields
from index.structures import Layout

Chunks = Iterable[tuple[np.ndarray, np.ndarray]]

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


def exact_search(queries: np.ndarray, chunks: Chunks, k: int) -> tuple[np.ndarray, np.ndarray]:
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
            # One line per trial: a tuning at a million videos takes minutes.
            logger.info(
                "tuning trial %d %s: recall %.4f, %.2f%% failed, %.4f ms/query",
                len(trials),
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


def tuning_queries(
    queries: np.ndarray | None, stand_in: Callable[[], np.ndarray], config: IndexConfig, dim: int
) -> tuple[np.ndarray, str]:
    """The queries to tune on, unit-norm if configured, and where they came from.

    Args:
        queries: Held-out query embeddings ``[q, d] float32``, or ``None``.
        stand_in: Returns catalogue vectors ``[m, d] float32`` to use instead when there are no
            held-out queries (an optimistic stand-in, logged as a warning).
        config: ``tuning_queries``, ``normalize`` and ``seed`` apply.
        dim: The index dimension ``d``.

    Returns:
        At most ``config.tuning_queries`` queries ``[t, d] float32`` and ``"held_out"`` or
        ``"catalogue_sample"``.

    Raises:
        DataError: Bad or no queries.
    """
    if queries is None:
        source = "catalogue_sample"
        logger.warning(
            "tuning without held-out queries: catalogue vectors stand in for them, which "
            "overestimates recall; pass tuning_queries= (e.g. validation user embeddings)"
        )
        q = sample_rows(stand_in(), config.tuning_queries, config.seed + 1)
    else:
        source = "held_out"
        q = sample_rows(check_vectors(queries, "queries", dim), config.tuning_queries, config.seed)
    if len(q) == 0:
        raise DataError("queries: no tuning queries given")
    return (normalized(q, "queries") if config.normalize else np.ascontiguousarray(q)), source


def first_vectors(chunks: Chunks, limit: int) -> np.ndarray:
    """The vectors of the first chunks, at least ``limit`` rows where there are that many.

    Args:
        chunks: ``(vectors [m, d] float32, ids [m] int64)`` pairs.
        limit: Rows wanted.

    Returns:
        ``[n, d] float32`` (``[0, 0]`` when ``chunks`` is empty).
    """
    parts, total = [], 0
    for vectors, _ in chunks:
        parts.append(vectors)
        total += len(vectors)
        if total >= limit:
            break
    return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)


def choose_point(
    layout: Layout,
    config: IndexConfig,
    k: int,
    truth: np.ndarray,
    search_at: Callable[[OperatingPoint], tuple[np.ndarray, float]],
) -> tuple[Trial, list[Trial]]:
    """The cheapest configured operating point whose recall@``k`` meets the config's criteria.

    Args:
        layout: The structure tuned.
        config: The recall target and its margins, and the candidate points.
        k: Cut-off of recall (``min(config.recall_k, count)``).
        truth: Exact ids ``[q, k] int64`` of the tuning queries.
        search_at: Returns the ids ``[q, k] int64`` found at a point and the seconds it took.

    Returns:
        The chosen trial and every trial measured.

    Raises:
        IndexBuildError: No point passes; names the best recall reached and the fields to change.
    """

    def evaluate(point: OperatingPoint) -> tuple[np.ndarray, float]:
        found, seconds = search_at(point)
        return per_query_recall(found, truth, k), 1e3 * seconds / len(truth)

    criteria = Criteria(
        target=config.target_recall,
        confidence_z=config.recall_confidence_z,
        floor=config.query_recall_floor,
        max_failed=config.max_failed_queries,
    )
    chosen, trials = walk_ladders(candidate_ladders(layout, config, k), evaluate, criteria)
    if chosen is None:
        best = max(
            trials, key=lambda t: (t.recall - config.recall_confidence_z * t.stderr, -t.failed)
        )
        raise IndexBuildError(
            f"{layout.kind} index ({layout.factory}) cannot reach recall@{k} >= "
            f"{config.target_recall} (index.target_recall, with index.recall_confidence_z="
            f"{config.recall_confidence_z:g} standard errors of margin) while at most "
            f"{config.max_failed_queries:.1%} of queries stay below recall "
            f"{config.query_recall_floor} (index.max_failed_queries): best {best.recall:.4f} "
            f"(± {best.stderr:.4f}, {best.failed:.1%} failed) at {best.point.to_dict()} over "
            f"{len(trials)} tried points; widen {ladder_fields(layout)} or lower the target"
        )
    logger.info(
        "operating point %s: recall@%d %.4f (target %.2f), %.2f%% of queries below %.2f, "
        "%.3f ms/query in batch",
        chosen.point.to_dict(),
        k,
        chosen.recall,
        config.target_recall,
        100 * chosen.failed,
        config.query_recall_floor,
        chosen.ms_per_query,
    )
    return chosen, trials


def tuning_report(
    q: np.ndarray,
    truth: np.ndarray,
    k: int,
    chosen: Trial,
    trials: list[Trial],
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    config: IndexConfig,
    *,
    source: str,
    ground_truth_seconds: float,
    started: float,
) -> dict[str, Any]:
    """Measures the chosen point in use and assembles the ``tuning``, ``recall`` and
    ``latency`` sections of the index report.

    Args:
        q: The tuning queries ``[t, d] float32``.
        truth: Their exact ids ``[t, k] int64``.
        k: Cut-off of recall.
        chosen: The trial `choose_point` chose (already the index's operating point).
        trials: Every trial measured.
        search: The index's search (``(queries, k) -> (scores, ids)``) at the chosen point.
        config: Index configuration.
        source: Where the queries came from (`tuning_queries`).
        ground_truth_seconds: Time of the exact search.
        started: ``time.perf_counter()`` when tuning started; ``tuning.seconds`` counts from it.
    """
    recall_10 = None
    if k >= 10:
        _, top10 = search(q, 10)
        recall_10 = recall_at_k(top10, truth, 10)
    single = latency_profile(lambda one: search(one, k), q, config.latency_queries)
    batch_started = time.perf_counter()
    search(q, k)
    batch_seconds = time.perf_counter() - batch_started
    seconds = time.perf_counter() - started
    logger.info(
        "tuned in %.1f s: single query p50 %.3f ms, p99 %.3f ms; batch %.0f queries/s",
        seconds,
        single["p50_ms"],
        single["p99_ms"],
        len(q) / batch_seconds,
    )
    return {
        "tuning": {
            "target_recall": config.target_recall,
            "recall_confidence_z": config.recall_confidence_z,
            "query_recall_floor": config.query_recall_floor,
            "max_failed_queries": config.max_failed_queries,
            "recall_k": k,
            "queries": len(q),
            "query_source": source,
            "ground_truth_seconds": round(ground_truth_seconds, 3),
            "seconds": round(seconds, 3),
            "trials": [t.to_dict() for t in trials],
        },
        "recall": {
            "k": k,
            "at_k": round(chosen.recall, 5),
            "at_k_stderr": round(chosen.stderr, 5),
            "failed_queries": round(chosen.failed, 5),
            "at_10": None if recall_10 is None else round(recall_10, 5),
        },
        "latency": {
            "single_query": {
                **{key: round(v, 4) for key, v in single.items()},
                "k": k,
                "queries": config.latency_queries,
                "threads": config.single_query_threads,
            },
            "batch": {
                "queries": len(q),
                "k": k,
                "qps": round(len(q) / batch_seconds, 1),
                "ms_per_query": round(1e3 * batch_seconds / len(q), 4),
                "threads": config.search_threads or default_threads(),
            },
        },
    }
