"""Seeded clustered embeddings and small configs shared by the index tests."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import IndexConfig

DIM = 64
N_VIDEOS = 10_000
N_QUERIES = 300


def clustered_embeddings(n: int, dim: int = DIM, clusters: int = 100, seed: int = 0) -> np.ndarray:
    """``[n, dim] float32`` unit vectors: anisotropic Gaussian clusters with skewed sizes."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1)
    weights = rng.permutation(weights / weights.sum())
    assign = rng.choice(clusters, size=n, p=weights)
    scales = np.exp(-np.arange(dim) / (dim / 4.0)).astype(np.float32) * 0.6
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    x = centers[assign] / np.sqrt(dim) * 3.0
    x += (rng.standard_normal((n, dim)).astype(np.float32) * scales) @ rotation
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="session")
def data() -> dict[str, np.ndarray]:
    """Catalogue, ids (not 0..n-1, to catch position/id mix-ups) and held-out queries."""
    x = clustered_embeddings(N_VIDEOS + N_QUERIES)
    return {
        "embeddings": x[:N_VIDEOS].copy(),
        "ids": (np.arange(N_VIDEOS, dtype=np.int64) * 7 + 1_000),
        "queries": x[N_VIDEOS:].copy(),
    }


def config_for(kind: str, **overrides: object) -> IndexConfig:
    """A test-sized config forcing ``kind`` (IVF-PQ with few lists and 2-dim sub-quantizers).

    One OpenMP thread for builds: on a shared 2-core runner OpenMP teams that spin-wait for
    busy cores can slow a build down twenty-fold, and the tests check results, not speed.
    """
    base: dict[str, object] = {
        "kind": kind,
        "tuning_queries": 300,
        "latency_queries": 30,
        "build_threads": 1,
    }
    if kind == "ivf_hnsw_pq":
        base.update(pq_m=32, ivf_nlist=64)
    if kind == "ivf_sq":
        base.update(ivf_nlist=64)
    base.update(overrides)
    return IndexConfig(**base)  # type: ignore[arg-type]
