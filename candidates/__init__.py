"""Item-to-item candidate sources beside the two-tower index: graphs counted from the training
events, merged with the index's candidates, and the evidence the ranker reads about each.

numpy only: `core` <- `candidates` <- `pipelines` (docs/design.md §2).
"""

from candidates.graph import ItemGraph
from candidates.merge import MergedCandidates, merge_candidates
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
    "merge_candidates",
    "order_scores",
]
