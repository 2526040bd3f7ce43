"""The index stage shared by `vidrec train` and `vidrec build-index`: embed the catalogue, build
and tune a `index.VideoIndex` on held-out queries, verify recall@K against exact search on
other held-out queries, and write ``index/`` with its build report.

The build fails when the verification recall is significantly below ``index.target_recall``
(mean + ``index.recall_confidence_z`` standard errors below it), before anything is staged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from core.config import IndexConfig
from core.errors import IndexBuildError
from core.features import VideoFeatureArrays
from core.io import atomic_write_json
from core.vocab import FIRST_ID_ROW
from index import VideoIndex, exact_search
from index.tuning import per_query_recall
from pipelines import artifacts
from pipelines.jobs.index_queries import QuerySets
from retrieval.encoders import VIDEO_BATCH, RetrievalEncoders

logger = logging.getLogger(__name__)

INDEX_DIR = artifacts.INDEX_DIR
BUILD_REPORT = "reports/index_build.json"


@dataclasses.dataclass
class IndexBuild:
    """A built, tuned and verified index with its report.

    Attributes:
        index: The index, ready to search and save.
        summary: What the manifest's ``metrics["index"]`` holds: kind, factory, operating point,
            tuning and verification recall@K against exact search, single-query latency,
            seconds by stage.
    """

    index: VideoIndex
    summary: dict[str, Any]


def verify_recall(
    index: VideoIndex,
    embeddings: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    config: IndexConfig,
) -> dict[str, Any]:
    """Recall@K of ``index.search`` against exact inner-product search, on held-out queries.

    Args:
        index: A built and tuned index over ``embeddings``.
        embeddings: ``[n, d] float32`` the indexed vectors.
        ids: ``[n] int64`` their ids.
        queries: ``[v, d] float32`` queries not used for tuning.
        config: The index configuration (``recall_k``, ``normalize``, ``query_recall_floor``).

    Returns:
        ``queries``, ``k``, ``at_k`` (mean), ``at_k_stderr``, ``failed_queries`` (fraction
        below ``query_recall_floor``), ``at_10`` and ``seconds``.
    """
    started = time.perf_counter()
    k = min(config.recall_k, index.count)
    q = _unit(queries) if config.normalize else queries
    chunk = 200_000
    chunks = (
        (
            _unit(embeddings[s : s + chunk]) if config.normalize else embeddings[s : s + chunk],
            ids[s : s + chunk],
        )
        for s in range(0, len(embeddings), chunk)
    )
    _, truth = exact_search(q, chunks, k)
    _, found = index.search(queries, k)
    recall = per_query_recall(found, truth, k)
    at_10 = None
    if k >= 10:
        at_10 = float(np.mean(per_query_recall(found[:, :10], truth[:, :10], 10)))
    stderr = float(recall.std(ddof=1) / math.sqrt(len(recall))) if len(recall) > 1 else 0.0
    return {
        "queries": len(queries),
        "k": k,
        "at_k": round(float(recall.mean()), 5),
        "at_k_stderr": round(stderr, 5),
        "failed_queries": round(float(np.mean(recall < config.query_recall_floor)), 5),
        "at_10": None if at_10 is None else round(at_10, 5),
        "seconds": round(time.perf_counter() - started, 3),
    }


# Faiss' exact search uses BLAS once nq * d reaches this (see `blas_exact_search`).
BLAS_THRESHOLD = 1_280


@contextlib.contextmanager
def blas_exact_search(threshold: int = BLAS_THRESHOLD) -> Iterator[None]:
    """Lets Faiss' exact search use BLAS for batches of queries while the block runs.

    Faiss 1.15 leaves its per-query SIMD scan for BLAS only when ``nq * d >= 128000`` (a
    crossover measured on many-core machines, facebookresearch/faiss#5022): at d=64 that takes
    2,000 queries. On 2 cores BLAS is ~10x faster for the tuning and verification queries' ground
    truth (1,000 queries x 500k videos x 64 dims: 8.9 s vs 1.0 s, same neighbours); below
    ``threshold`` (single queries) the scan stays. The setting is process-global, so it is
    restored afterwards; a build job runs no searches in other threads meanwhile.
    """
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = min(previous, threshold)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def build_and_verify(
    embeddings: np.ndarray, ids: np.ndarray, config: IndexConfig, queries: QuerySets
) -> IndexBuild:
    """Builds and tunes an index on ``queries.tuning``, then verifies it on the other queries.

    Args:
        embeddings: ``[n, d] float32`` video embeddings (the whole catalogue).
        ids: ``[n] int64`` video ids, row-aligned.
        config: Index configuration.
        queries: Disjoint tuning and verification queries.

    Returns:
        The index and its summary for the manifest.

    Raises:
        IndexBuildError: No operating point reaches ``config.target_recall`` on the tuning
            queries, or the verification recall is significantly below it.
    """
    started = time.perf_counter()
    with blas_exact_search():
        index = VideoIndex.build(embeddings, ids, config, tuning_queries=queries.tuning)
        verification = verify_recall(index, embeddings, ids, queries.verification, config)
    upper = verification["at_k"] + config.recall_confidence_z * verification["at_k_stderr"]
    if upper < config.target_recall:
        raise IndexBuildError(
            f"{index.kind} index ({index.factory}) tuned to {index.operating_point.to_dict()} "
            f"reached recall@{verification['k']} {verification['at_k']:.4f} "
            f"(± {verification['at_k_stderr']:.4f}) on {verification['queries']} held-out "
            f"verification queries, below index.target_recall={config.target_recall}; raise "
            "index.tuning_queries or index.recall_confidence_z, or widen the search parameters"
        )
    logger.info(
        "verified %s index on %d held-out %s queries: recall@%d %.4f (target %.2f)",
        index.kind,
        verification["queries"],
        queries.source,
        verification["k"],
        verification["at_k"],
        config.target_recall,
    )
    report = index.report
    summary = {
        "kind": index.kind,
        "factory": index.factory,
        "dim": index.dim,
        "count": index.count,
        "operating_point": index.operating_point.to_dict(),
        "target_recall": config.target_recall,
        "query_source": queries.source,
        "tuning": {"queries": len(queries.tuning), **report.get("recall", {})},
        "verification": verification,
        "latency_ms": {
            key: report["latency"]["single_query"][f"{key}_ms"] for key in ("p50", "p99")
        },
        "batch_qps": report["latency"]["batch"]["qps"],
        "seconds": {
            "build": report["build"].get("build_seconds"),
            "tune": report["build"].get("tune_seconds"),
            "verify": verification["seconds"],
            "total": round(time.perf_counter() - started, 3),
        },
    }
    return IndexBuild(index, summary)


def write_index(bundle_dir: Path, build: IndexBuild, extra: dict[str, Any] | None = None) -> None:
    """Writes ``index/`` (`VideoIndex.save`) and ``reports/index_build.json`` into a bundle.

    Args:
        bundle_dir: The staged bundle directory.
        build: From `build_and_verify`.
        extra: More to record in the build report (e.g. seconds of the embedding stage).
    """
    build.index.save(bundle_dir / INDEX_DIR)
    atomic_write_json(
        bundle_dir / BUILD_REPORT,
        {**build.summary, **(extra or {}), "index_report": build.index.report},
    )


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def embed_catalogue(
    encoders: RetrievalEncoders,
    catalogue: VideoFeatureArrays,
    batch_size: int = VIDEO_BATCH,
    progress: bool = False,
) -> np.ndarray:
    """Embeddings of every video vocabulary row, ``[num_rows, d] float32``; rows 0, 1 zero.

    Args:
        encoders: The towers.
        catalogue: Features of every vocabulary row (``FeatureSpace.catalogue``).
        batch_size: Videos per call of the video tower.
        progress: Show a progress bar.
    """
    out = encoders.embed_features(catalogue, batch_size=batch_size, progress=progress)
    out[:FIRST_ID_ROW] = 0.0
    return out
