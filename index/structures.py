"""Which Faiss structure to build, how big it is, and how to search it at an operating point.

Everything here is derived from `IndexConfig` and the catalogue shape; nothing is hard-coded in the
search path. Three kinds exist:

- ``flat``: exact inner-product search (`faiss.IndexFlatIP`), for small catalogues.
- ``hnsw``: `faiss.IndexHNSWFlat` (float vectors + graph), up to a few million videos.
- ``ivf_hnsw_pq``: IVF whose coarse quantizer is an HNSW over the centroids, 4-bit fast-scan PQ
  codes in the lists and an optional refine stage (exact or SQ vectors re-rank ``k * k_factor``
  candidates), for larger catalogues or tight memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import faiss

from core.config import IndexConfig
from core.errors import IndexBuildError

logger = logging.getLogger(__name__)

FLAT = "flat"
HNSW = "hnsw"
IVF_HNSW_PQ = "ivf_hnsw_pq"
KINDS = (FLAT, HNSW, IVF_HNSW_PQ)

_REFINE_FACTORY = {"flat": ",RFlat", "sq8": ",Refine(SQ8)", "fp16": ",Refine(SQfp16)", "none": ""}
_REFINE_BYTES_PER_DIM = {"flat": 4.0, "sq8": 1.0, "fp16": 2.0, "none": 0.0}


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """Search parameters of one kind; ``None`` fields do not apply to it.

    Attributes:
        ef_search: HNSW candidate-list size.
        nprobe: Inverted lists visited by IVF.
        quantizer_ef_search: efSearch of the HNSW coarse quantizer of IVF.
        k_factor: The refine stage re-ranks ``k * k_factor`` IVF candidates.
    """

    ef_search: int | None = None
    nprobe: int | None = None
    quantizer_ef_search: int | None = None
    k_factor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that apply, for JSON."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> OperatingPoint:
        """Inverse of `to_dict`."""
        return cls(**payload)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Resolved structure of one build: the kind and every size parameter.

    Attributes:
        kind: One of `KINDS`.
        dim: Embedding dimension.
        factory: The `faiss.index_factory` string.
        nlist: IVF lists (0 for other kinds).
        pq_m: PQ sub-quantizers (0 for other kinds).
        refine: Refine stage of IVF-PQ (``"none"`` for other kinds).
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
    elif kind == IVF_HNSW_PQ:
        nlist = derived_nlist(n, config)
        pq_m = config.pq_m or dim
        per_vector = pq_m * config.pq_nbits / 8.0 + 8.0 + _REFINE_BYTES_PER_DIM[config.refine] * dim
        per_vector += ids
        fixed = nlist * (4.0 * dim + 4.0 * config.ivf_quantizer_hnsw_m * 2.5 + 64.0)
    else:  # pragma: no cover - guarded by IndexConfig
        raise IndexBuildError(f"unknown index kind {kind!r}")
    return (per_vector * n + fixed) / (1024.0 * 1024.0)


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


def create_index(layout: Layout, config: IndexConfig) -> faiss.Index:
    """An empty, untrained Faiss index of ``layout`` with the inner-product metric."""
    try:
        index = faiss.index_factory(layout.dim, layout.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(
            f"faiss could not create {layout.factory!r}: {_first_line(exc)}"
        ) from exc
    if layout.kind == HNSW:
        index.hnsw.efConstruction = config.hnsw_ef_construction
    elif layout.kind == IVF_HNSW_PQ:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = config.seed
        ivf.cp.max_points_per_centroid = config.ivf_train_points_per_list
        quantizer = faiss.downcast_index(ivf.quantizer)
        quantizer.hnsw.efConstruction = config.hnsw_ef_construction
    return index


def ivf_parts(index: faiss.Index) -> tuple[faiss.IndexIVF, faiss.Index | None]:
    """The IVF base index and the refine index (``None`` without refine) of an IVF-PQ index."""
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.base_index), faiss.downcast_index(index.refine_index)
    return faiss.downcast_index(index), None


def default_point(layout: Layout, config: IndexConfig) -> OperatingPoint:
    """Most accurate configured point: used before tuning (e.g. a shard not yet merged)."""
    if layout.kind == HNSW:
        return OperatingPoint(ef_search=max(config.hnsw_ef_search))
    if layout.kind == IVF_HNSW_PQ:
        nprobe = min(max(config.ivf_nprobe), layout.nlist)
        return ivf_point(nprobe, max(config.refine_k_factor), layout, config)
    return OperatingPoint()


def ivf_point(
    nprobe: int, k_factor: float | None, layout: Layout, config: IndexConfig
) -> OperatingPoint:
    """IVF operating point with the coarse quantizer's efSearch derived from ``nprobe``."""
    nprobe = max(1, min(int(nprobe), layout.nlist))
    quantizer_ef = max(nprobe, math.ceil(config.ivf_quantizer_ef_factor * nprobe))
    return OperatingPoint(
        nprobe=nprobe,
        quantizer_ef_search=quantizer_ef,
        k_factor=float(k_factor) if layout.refine != "none" and k_factor is not None else None,
    )


def candidate_ladders(layout: Layout, config: IndexConfig, k: int) -> list[list[OperatingPoint]]:
    """Operating points to try when tuning for top-``k``, as ladders of rising accuracy and cost.

    Tuning walks each ladder until the target is met (further rungs only cost more). HNSW
    searches with ``max(efSearch, k)``, so smaller efSearch values collapse onto ``k``.
    """
    if layout.kind == FLAT:
        return [[OperatingPoint()]]
    if layout.kind == HNSW:
        efs = sorted({max(ef, k) for ef in config.hnsw_ef_search})
        return [[OperatingPoint(ef_search=ef) for ef in efs]]
    nprobes = sorted({min(p, layout.nlist) for p in config.ivf_nprobe})
    k_factors: list[float | None] = (
        sorted({float(f) for f in config.refine_k_factor}) if layout.refine != "none" else [None]
    )
    return [[ivf_point(p, f, layout, config) for p in nprobes] for f in k_factors]


def escalate(point: OperatingPoint, layout: Layout, ntotal: int) -> OperatingPoint | None:
    """A wider (more exhaustive) point for rows a search could not fill; ``None`` at the limit."""
    if layout.kind == HNSW:
        current = point.ef_search or 16
        if current >= ntotal:
            return None
        return dataclasses.replace(point, ef_search=min(ntotal, current * 4))
    if layout.kind == IVF_HNSW_PQ:
        current = point.nprobe or 1
        if current >= layout.nlist:
            return None
        nprobe = min(layout.nlist, current * 4)
        quantizer_ef = max(point.quantizer_ef_search or 0, 2 * nprobe)
        return dataclasses.replace(point, nprobe=nprobe, quantizer_ef_search=quantizer_ef)
    return None


def search_parameters(
    layout: Layout, point: OperatingPoint, selector: faiss.IDSelector | None
) -> faiss.SearchParameters | None:
    """Faiss search parameters for ``point``, passed per call (searches never share state)."""
    if layout.kind == FLAT:
        return faiss.SearchParameters(sel=selector) if selector is not None else None
    if layout.kind == HNSW:
        kwargs: dict[str, Any] = {"efSearch": int(point.ef_search or 16)}
        if selector is not None:
            kwargs["sel"] = selector
        return faiss.SearchParametersHNSW(**kwargs)
    quantizer = faiss.SearchParametersHNSW(efSearch=int(point.quantizer_ef_search or 16))
    ivf_kwargs: dict[str, Any] = {"nprobe": int(point.nprobe or 1), "quantizer_params": quantizer}
    if selector is not None:
        ivf_kwargs["sel"] = selector
    ivf = faiss.SearchParametersIVF(**ivf_kwargs)
    if layout.refine == "none":
        return ivf
    return faiss.IndexRefineSearchParameters(
        k_factor=float(point.k_factor or 1.0), base_index_params=ivf
    )


def default_threads() -> int:
    """Cores this process may use (``OMP_NUM_THREADS`` if set)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Sets Faiss' OpenMP threads of the calling thread to ``n`` (0: all cores) for a block.

    OpenMP keeps this setting per thread, so request threads using one thread each do not change
    what a batch job in another thread uses.
    """
    wanted = n if n > 0 else default_threads()
    previous = faiss.omp_get_max_threads()
    if previous == wanted:
        yield
        return
    faiss.omp_set_num_threads(wanted)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
