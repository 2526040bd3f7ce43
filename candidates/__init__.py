"""Item-to-item candidate sources beside the two-tower index: graphs counted from the training
events, merged with the index's candidates, and the evidence the ranker reads about each;
`candidates.request` does the same for one request at a fraction of the numpy calls.

numpy (and numba for the request path's loops, `candidates.kernels`): `core` <- `candidates` <-
`pipelines` (docs/design.md §2).
"""

from candidates.graph import ItemGraph
from candidates.merge import MergedCandidates, merge_candidates
from candidates.request import RequestCandidates, RequestSources, merge_one_list
from candidates.sources import (
    EVIDENCE_FEATURES,
    EVIDENCE_WIDTH,
    ORIGINS,
    SERVING_ORDERS,
    CandidateSources,
    order_scores,
)

__all__ = [
    "EVIDENCE_FEATURES",
    "EVIDENCE_WIDTH",
    "ORIGINS",
    "SERVING_ORDERS",
    "CandidateSources",
    "ItemGraph",
    "MergedCandidates",
    "RequestCandidates",
    "RequestSources",
    "merge_candidates",
    "merge_one_list",
    "order_scores",
]
