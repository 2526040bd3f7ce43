"""Search parameters of a structure: the points tuning tries, the widening refills use, checks.

An operating point holds the parameters that trade recall for speed at search time (HNSW
efSearch; IVF nprobe, the coarse quantizer's efSearch and the refine stage's k_factor). They go
to Faiss per call as `faiss.SearchParameters`, never set on the shared index, so searches from
several threads never see each other's settings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import faiss

from core.config import IndexConfig
from core.errors import ConfigError
from index.structures import FLAT, GRAPH_KINDS, IVF_HNSW_PQ, IVF_KINDS, Layout


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """Search parameters of one kind; ``None`` fields do not apply to it.

    Attributes:
        ef_search: HNSW candidate-list size (``hnsw``, ``hnsw_sq``).
        nprobe: Inverted lists visited by IVF (``ivf_sq``, ``ivf_hnsw_pq``).
        quantizer_ef_search: efSearch of the HNSW coarse quantizer of ``ivf_hnsw_pq``.
        k_factor: The refine stage re-ranks ``k * k_factor`` candidates of the codes.
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


def default_point(layout: Layout, config: IndexConfig) -> OperatingPoint:
    """Most accurate configured point: used before tuning."""
    if layout.kind in GRAPH_KINDS:
        return graph_point(max(config.hnsw_ef_search), max(config.refine_k_factor), layout)
    if layout.kind in IVF_KINDS:
        nprobe = min(max(config.ivf_nprobe), layout.nlist)
        return ivf_point(nprobe, max(config.refine_k_factor), layout, config)
    return OperatingPoint()


def graph_point(ef_search: int, k_factor: float | None, layout: Layout) -> OperatingPoint:
    """HNSW operating point; ``k_factor`` only where the layout has a refine stage."""
    return OperatingPoint(
        ef_search=int(ef_search),
        k_factor=float(k_factor) if layout.refine != "none" and k_factor is not None else None,
    )


def ivf_point(
    nprobe: int, k_factor: float | None, layout: Layout, config: IndexConfig
) -> OperatingPoint:
    """IVF operating point with the coarse quantizer's efSearch derived from ``nprobe``."""
    nprobe = max(1, min(int(nprobe), layout.nlist))
    quantizer_ef = max(nprobe, math.ceil(config.ivf_quantizer_ef_factor * nprobe))
    return OperatingPoint(
        nprobe=nprobe,
        # Only ivf_hnsw_pq's coarse quantizer is a graph; ivf_sq's is exact.
        quantizer_ef_search=quantizer_ef if layout.kind == IVF_HNSW_PQ else None,
        k_factor=float(k_factor) if layout.refine != "none" and k_factor is not None else None,
    )


def candidate_ladders(layout: Layout, config: IndexConfig, k: int) -> list[list[OperatingPoint]]:
    """Operating points to try when tuning for top-``k``, as ladders of rising accuracy and cost.

    Tuning walks each ladder until the target is met (further rungs only cost more). HNSW
    searches with ``max(efSearch, k)``, so smaller efSearch values collapse onto ``k``.
    """
    if layout.kind == FLAT:
        return [[OperatingPoint()]]
    k_factors: list[float | None] = (
        sorted({float(f) for f in config.refine_k_factor}) if layout.refine != "none" else [None]
    )
    if layout.kind in GRAPH_KINDS:
        ladders = []
        for f in k_factors:
            # The graph returns k * k_factor candidates, so efSearch below that collapses too.
            floor = math.ceil(k * (f or 1.0))
            efs = sorted({max(ef, floor) for ef in config.hnsw_ef_search})
            ladders.append([graph_point(ef, f, layout) for ef in efs])
        return ladders
    nprobes = sorted({min(p, layout.nlist) for p in config.ivf_nprobe})
    return [[ivf_point(p, f, layout, config) for p in nprobes] for f in k_factors]


def ladder_fields(layout: Layout) -> str:
    """The config fields `candidate_ladders` reads for ``layout``, for an operator's message."""
    if layout.kind in GRAPH_KINDS:
        fields = "index.hnsw_ef_search (or index.hnsw_m)"
        return fields + (", index.refine_k_factor" if layout.refine != "none" else "")
    if layout.kind in IVF_KINDS:
        fields = "index.ivf_nprobe"
        return fields + (
            ", index.refine_k_factor" if layout.refine != "none" else " (or use index.refine)"
        )
    return "the candidates"


def escalate(point: OperatingPoint, layout: Layout, ntotal: int) -> OperatingPoint | None:
    """A wider (more exhaustive) point for rows a search could not fill; ``None`` at the limit."""
    if layout.kind in GRAPH_KINDS:
        current = point.ef_search or 16
        if current >= ntotal:
            return None
        return dataclasses.replace(point, ef_search=min(ntotal, current * 4))
    if layout.kind in IVF_KINDS:
        current = point.nprobe or 1
        if current >= layout.nlist:
            return None
        nprobe = min(layout.nlist, current * 4)
        if layout.kind != IVF_HNSW_PQ:
            return dataclasses.replace(point, nprobe=nprobe)
        quantizer_ef = max(point.quantizer_ef_search or 0, 2 * nprobe)
        return dataclasses.replace(point, nprobe=nprobe, quantizer_ef_search=quantizer_ef)
    return None


def check_point(point: OperatingPoint, layout: Layout) -> None:
    """Refuses a point with parameters that do not apply to ``layout`` or are out of range.

    Raises:
        ConfigError: Names the offending parameters and the allowed ones.
    """
    if not isinstance(point, OperatingPoint):
        raise ConfigError(
            f"operating point: expected an OperatingPoint, got {type(point).__name__}"
        )
    refine = {"k_factor"} if layout.refine != "none" else set()
    if layout.kind == FLAT:
        allowed: set[str] = set()
    elif layout.kind in GRAPH_KINDS:
        allowed = {"ef_search"} | refine
    elif layout.kind == IVF_HNSW_PQ:
        allowed = {"nprobe", "quantizer_ef_search"} | refine
    else:
        allowed = {"nprobe"} | refine
    given = set(point.to_dict())
    if given - allowed:
        raise ConfigError(
            f"operating point: {sorted(given - allowed)} do not apply to a {layout.kind} index "
            f"(allowed: {sorted(allowed)})"
        )
    for name, value in point.to_dict().items():
        if value < 1:
            raise ConfigError(f"operating point: {name} must be >= 1, got {value}")
    if point.nprobe is not None and point.nprobe > layout.nlist:
        raise ConfigError(f"operating point: nprobe {point.nprobe} exceeds nlist {layout.nlist}")


def search_parameters(
    layout: Layout, point: OperatingPoint, selector: faiss.IDSelector | None
) -> faiss.SearchParameters | None:
    """Faiss search parameters for ``point``, passed per call (searches never share state).

    Args:
        layout: The structure searched.
        point: Its operating point.
        selector: Positions a search may return (tombstones filtered), or ``None`` for all.
    """
    if layout.kind == FLAT:
        return faiss.SearchParameters(sel=selector) if selector is not None else None
    base: faiss.SearchParameters
    if layout.kind in GRAPH_KINDS:
        kwargs: dict[str, Any] = {"efSearch": int(point.ef_search or 16)}
        if selector is not None:
            kwargs["sel"] = selector
        base = faiss.SearchParametersHNSW(**kwargs)
    else:
        ivf_kwargs: dict[str, Any] = {"nprobe": int(point.nprobe or 1)}
        if layout.kind == IVF_HNSW_PQ:
            ivf_kwargs["quantizer_params"] = faiss.SearchParametersHNSW(
                efSearch=int(point.quantizer_ef_search or 16)
            )
        if selector is not None:
            ivf_kwargs["sel"] = selector
        base = faiss.SearchParametersIVF(**ivf_kwargs)
    if layout.refine == "none":
        return base
    return faiss.IndexRefineSearchParameters(
        k_factor=float(point.k_factor or 1.0), base_index_params=base
    )
