"""Which Faiss structure to build, its factory string, how big it is, and creating and training it.

Everything here is derived from `IndexConfig` and the catalogue shape; nothing is hard-coded in the
search path. Five kinds exist:

- ``flat``: exact inner-product search (`faiss.IndexFlatIP`), for small catalogues.
- ``hnsw``: `faiss.IndexHNSWFlat` (float vectors + graph), up to a few million videos.
- ``hnsw_sq``: an HNSW graph over 8-bit scalar-quantised vectors (`faiss.IndexHNSWSQ`, a quarter of
  the bytes per distance), with the refine stage below re-ranking ``k * k_factor`` of its results.
- ``ivf_sq``: IVF (exact coarse quantizer) with 8-bit scalar-quantised vectors in the lists and
  a refine stage. On the clustered 1M set it is the fastest at recall@100 0.95 (docs/design.md
  §9): a probed list is scanned sequentially, where a graph jumps between cache lines.
- ``ivf_hnsw_pq``: IVF whose coarse quantizer is an HNSW over the centroids, 4-bit fast-scan PQ
  codes in the lists and an optional refine stage (exact or SQ vectors re-rank ``k * k_factor``
  candidates), for larger catalogues or tight memory. Its 4-bit codes with 8-bit lookup tables
  blur close scores: on the clustered 1M set it needs ``k_factor`` 16 to reach 0.95.

``index.kind = "auto"`` builds exact search for small catalogues; above that it builds every kind
of ``index.candidate_kinds`` that fits, tunes each and keeps the fastest (`candidate_kinds`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from core.config import IndexConfig
from core.errors import IndexBuildError
from index.arrays import normalized, sample_rows
from index.concurrency import omp_threads

logger = logging.getLogger(__name__)

FLAT = "flat"
HNSW = "hnsw"
HNSW_SQ = "hnsw_sq"
IVF_SQ = "ivf_sq"
IVF_HNSW_PQ = "ivf_hnsw_pq"
KINDS = (FLAT, HNSW, HNSW_SQ, IVF_SQ, IVF_HNSW_PQ)
GRAPH_KINDS = (HNSW, HNSW_SQ)
IVF_KINDS = (IVF_SQ, IVF_HNSW_PQ)
# Kinds whose coarse structure (graph or lists) can be built in query-fitted coordinates.
QUERY_AWARE_KINDS = (HNSW, HNSW_SQ, IVF_SQ)

# SQ8 learns one range per dimension: a sample this size pins them down.
_SQ_TRAIN_POINTS = 65_536
_REFINE_FACTORY = {"flat": ",RFlat", "sq8": ",Refine(SQ8)", "fp16": ",Refine(SQfp16)", "none": ""}
_REFINE_BYTES_PER_DIM = {"flat": 4.0, "sq8": 1.0, "fp16": 2.0, "none": 0.0}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Resolved structure of one build: the kind and every size parameter.

    Attributes:
        kind: One of `KINDS`.
        dim: Embedding dimension.
        factory: The `faiss.index_factory` string.
        nlist: IVF lists (0 for other kinds).
        pq_m: PQ sub-quantizers (0 for other kinds).
        refine: Refine stage of ``ivf_hnsw_pq``, ``ivf_sq`` and ``hnsw_sq`` (``"none"`` for
            other kinds).
    """

    kind: str
    dim: int
    factory: str
    nlist: int = 0
    pq_m: int = 0
    refine: str = "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)


def derived_nlist(n: int, config: IndexConfig) -> int:
    """IVF list count for ``n`` vectors: ``config.ivf_nlist`` or the sqrt rule, at least 1."""
    if config.ivf_nlist > 0:
        return config.ivf_nlist
    by_sqrt = round(config.ivf_nlist_per_sqrt * math.sqrt(max(n, 1)))
    by_points = max(1, n // config.ivf_min_points_per_list)
    return max(1, min(by_sqrt, by_points))


def resolved_pq_m(dim: int, config: IndexConfig) -> int:
    """PQ sub-quantizers for ``dim``; raises `IndexBuildError` if they do not divide it."""
    m = config.pq_m or dim
    if dim % m != 0:
        raise IndexBuildError(
            f"index.pq_m={m} must divide the embedding dimension {dim}; "
            f"choose a divisor of {dim} (0 means one sub-quantizer per dimension)"
        )
    return m


def estimate_memory_mb(kind: str, n: int, dim: int, config: IndexConfig) -> float:
    """Resident size of a built index of ``n`` vectors (structure + id table), in MiB.

    Transient build memory (the input array, training samples) is not included.
    """
    ids = 8.0  # int64 position -> video id table
    if kind == FLAT:
        per_vector = 4.0 * dim + ids
        fixed = 0.0
    elif kind == HNSW:
        # level-0 links (2M) + upper levels (~M / ln M on average) + levels/offsets.
        links = 4.0 * config.hnsw_m * (2.0 + 1.0 / math.log(config.hnsw_m))
        per_vector = 4.0 * dim + links + 16.0 + ids
        fixed = 0.0
    elif kind == HNSW_SQ:
        links = 4.0 * config.hnsw_m * (2.0 + 1.0 / math.log(config.hnsw_m))
        per_vector = dim + links + 16.0 + ids + _REFINE_BYTES_PER_DIM[_sq_refine(config)] * dim
        fixed = 0.0
    elif kind == IVF_SQ:
        nlist = derived_nlist(n, config)
        per_vector = dim + 8.0 + _REFINE_BYTES_PER_DIM[_sq_refine(config)] * dim + ids
        fixed = nlist * (4.0 * dim + 64.0)
    elif kind == IVF_HNSW_PQ:
        nlist = derived_nlist(n, config)
        pq_m = config.pq_m or dim
        per_vector = pq_m * config.pq_nbits / 8.0 + 8.0 + _REFINE_BYTES_PER_DIM[config.refine] * dim
        per_vector += ids
        fixed = nlist * (4.0 * dim + 4.0 * config.ivf_quantizer_hnsw_m * 2.5 + 64.0)
    else:  # pragma: no cover - guarded by IndexConfig
        raise IndexBuildError(f"unknown index kind {kind!r}")
    return (per_vector * n + fixed) / (1024.0 * 1024.0)


def _sq_refine(config: IndexConfig) -> str:
    """The refine stage over SQ8 codes: ``sq8`` would re-rank with the codes already scanned,
    so it means exact vectors there."""
    return "flat" if config.refine == "sq8" else config.refine


def candidate_kinds(n: int, dim: int, config: IndexConfig) -> list[str]:
    """The kinds a build tries, fastest measured kept: one unless ``config.kind`` is ``auto``.

    ``auto`` uses exact search up to ``flat_max_videos``; above that every kind of
    ``config.candidate_kinds`` that fits ``memory_budget_mb`` (graph kinds only up to
    ``hnsw_max_videos``), or the size rule's kind (`choose_kind`) when none does or the list is
    empty.

    Raises:
        IndexBuildError: No kind fits ``index.memory_budget_mb``.
    """
    kind = choose_kind(n, dim, config)
    if config.kind != "auto" or kind == FLAT or not config.candidate_kinds:
        return [kind]
    budget = float(config.memory_budget_mb)
    fitting = [
        k
        for k in config.candidate_kinds
        if estimate_memory_mb(k, n, dim, config) <= budget
        and (k not in GRAPH_KINDS or n <= config.hnsw_max_videos)
    ]
    return fitting or [kind]


def choose_kind(n: int, dim: int, config: IndexConfig) -> str:
    """The kind to build for ``n`` videos of dimension ``dim``.

    ``config.kind`` wins unless it is ``"auto"``; then exact search up to ``flat_max_videos``,
    HNSW up to ``hnsw_max_videos`` when it fits ``memory_budget_mb``, IVF-PQ otherwise.

    Raises:
        IndexBuildError: The chosen kind does not fit ``index.memory_budget_mb``.
    """
    budget = float(config.memory_budget_mb)
    if config.kind != "auto":
        kind = config.kind
    elif n <= config.flat_max_videos and estimate_memory_mb(FLAT, n, dim, config) <= budget:
        kind = FLAT
    elif n <= config.hnsw_max_videos and estimate_memory_mb(HNSW, n, dim, config) <= budget:
        kind = HNSW
    else:
        kind = IVF_HNSW_PQ
    need = estimate_memory_mb(kind, n, dim, config)
    if need > budget:
        hint = (
            "use index.refine='sq8' or 'none', or raise index.memory_budget_mb"
            if kind == IVF_HNSW_PQ
            else "use index.kind='auto' or 'ivf_hnsw_pq', or raise index.memory_budget_mb"
        )
        raise IndexBuildError(
            f"a {kind} index of {n} videos x {dim} dims needs ~{need:.0f} MiB, over "
            f"index.memory_budget_mb={config.memory_budget_mb}; {hint}"
        )
    return kind


def resolve_layout(kind: str, n: int, dim: int, config: IndexConfig) -> Layout:
    """Sizes and the factory string of ``kind`` for ``n`` vectors of dimension ``dim``."""
    if kind == FLAT:
        return Layout(kind=kind, dim=dim, factory="Flat")
    if kind == HNSW:
        return Layout(kind=kind, dim=dim, factory=f"HNSW{config.hnsw_m},Flat")
    if kind == HNSW_SQ:
        refine = _sq_refine(config)
        factory = f"HNSW{config.hnsw_m},SQ8{_REFINE_FACTORY[refine]}"
        return Layout(kind=kind, dim=dim, factory=factory, refine=refine)
    if kind == IVF_SQ:
        nlist = derived_nlist(n, config)
        refine = _sq_refine(config)
        factory = f"IVF{nlist},SQ8{_REFINE_FACTORY[refine]}"
        return Layout(kind=kind, dim=dim, factory=factory, nlist=nlist, refine=refine)
    if kind == IVF_HNSW_PQ:
        nlist = derived_nlist(n, config)
        pq_m = resolved_pq_m(dim, config)
        factory = (
            f"IVF{nlist}_HNSW{config.ivf_quantizer_hnsw_m},PQ{pq_m}x{config.pq_nbits}fs"
            f"{_REFINE_FACTORY[config.refine]}"
        )
        return Layout(
            kind=kind, dim=dim, factory=factory, nlist=nlist, pq_m=pq_m, refine=config.refine
        )
    raise IndexBuildError(f"unknown index kind {kind!r}; expected one of {list(KINDS)}")


def create_index(layout: Layout, config: IndexConfig, *, dim: int | None = None) -> faiss.Index:
    """An empty, untrained Faiss index of ``layout`` with the inner-product metric.

    Args:
        layout: From `resolve_layout`.
        config: Index configuration (construction-time parameters and the seed).
        dim: Dimension of the stored vectors when it differs from ``layout.dim``: query-aware
            coordinates store ``layout.dim + 1`` (see `index.query_aware`).

    Raises:
        IndexBuildError: Faiss refuses the factory string.
    """
    stored_dim = layout.dim if dim is None else dim
    try:
        index = faiss.index_factory(stored_dim, layout.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(
            f"faiss could not create {layout.factory!r}: {_first_line(exc)}"
        ) from exc
    base, _ = refine_parts(index)
    if layout.kind in GRAPH_KINDS:
        base.hnsw.efConstruction = config.hnsw_ef_construction
    elif layout.kind == IVF_SQ:
        base.cp.seed = config.seed
        base.cp.max_points_per_centroid = config.ivf_train_points_per_list
    elif layout.kind == IVF_HNSW_PQ:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = config.seed
        ivf.cp.max_points_per_centroid = config.ivf_train_points_per_list
        quantizer = faiss.downcast_index(ivf.quantizer)
        quantizer.hnsw.efConstruction = config.hnsw_ef_construction
    return index


def train_index(
    index: faiss.Index,
    layout: Layout,
    sample: np.ndarray,
    config: IndexConfig,
    *,
    to_stored: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Trains an IVF index's lists and codes, or the SQ8 ranges of ``hnsw_sq``, on ``sample``;
    ``flat`` and ``hnsw`` need no training.

    Args:
        index: From `create_index`.
        layout: Its layout.
        sample: Training vectors ``[m, d] float32`` in the model's coordinates; at most
            ``nlist * ivf_train_points_per_list`` rows (``hnsw_sq``: `_SQ_TRAIN_POINTS`) are drawn.
        config: Index configuration.
        to_stored: Maps unit-norm rows to the stored coordinates (the query-aware transform's
            ``items``), or ``None`` when vectors are stored as they are.

    Raises:
        IndexBuildError: Fewer training vectors than IVF lists.
    """
    if layout.kind in (FLAT, HNSW):
        return
    if layout.kind == HNSW_SQ:
        train = _stored(sample_rows(sample, _SQ_TRAIN_POINTS, config.seed), config, to_stored)
        with omp_threads(config.build_threads):
            index.train(train)
        return
    if len(sample) < layout.nlist:
        raise IndexBuildError(
            f"IVF with {layout.nlist} lists needs at least {layout.nlist} training "
            f"vectors, got {len(sample)}; lower index.ivf_nlist "
            "(0 derives it from the catalogue size)"
        )
    train = sample_rows(sample, layout.nlist * config.ivf_train_points_per_list, config.seed)
    train = _stored(train, config, to_stored)
    started = time.perf_counter()
    with omp_threads(config.build_threads):
        index.train(train)
    logger.info(
        "trained %s on %d vectors in %.1f s",
        layout.factory,
        len(train),
        time.perf_counter() - started,
    )


def _stored(
    rows: np.ndarray, config: IndexConfig, to_stored: Callable[[np.ndarray], np.ndarray] | None
) -> np.ndarray:
    """Training rows ``[m, d'] float32`` as the structure stores them."""
    rows = normalized(rows, "sample") if config.normalize else np.ascontiguousarray(rows)
    if to_stored is not None:
        rows = to_stored(rows)
    return np.ascontiguousarray(rows, dtype=np.float32)


def structure_parameters(layout: Layout, config: IndexConfig) -> dict[str, Any]:
    """The size and construction parameters of ``layout``, for the index report."""
    if layout.kind == HNSW:
        return {"hnsw_m": config.hnsw_m, "hnsw_ef_construction": config.hnsw_ef_construction}
    if layout.kind == HNSW_SQ:
        return {
            "hnsw_m": config.hnsw_m,
            "hnsw_ef_construction": config.hnsw_ef_construction,
            "codes": "SQ8",
            "refine": layout.refine,
        }
    if layout.kind == IVF_SQ:
        return {"nlist": layout.nlist, "codes": "SQ8", "refine": layout.refine}
    if layout.kind == IVF_HNSW_PQ:
        return {
            "nlist": layout.nlist,
            "quantizer_hnsw_m": config.ivf_quantizer_hnsw_m,
            "pq_m": layout.pq_m,
            "pq_nbits": config.pq_nbits,
            "refine": layout.refine,
        }
    return {}


def refine_parts(index: faiss.Index) -> tuple[faiss.Index, faiss.Index | None]:
    """The base index and the refine index (``None`` without a refine stage) of a structure."""
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.base_index), faiss.downcast_index(index.refine_index)
    return faiss.downcast_index(index), None


def ivf_parts(index: faiss.Index) -> tuple[faiss.IndexIVF, faiss.Index | None]:
    """The IVF base index and the refine index (``None`` without refine) of an IVF index."""
    return refine_parts(index)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
