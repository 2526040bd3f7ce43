"""Candidate index over video embeddings: Faiss, numpy in and out, never TensorFlow.

`VideoIndex` chooses a structure by catalogue size and memory budget, tunes its search
parameters to a recall target against exact search, searches with per-query exclusions, takes
uploads and takedowns live, and saves/loads with checksums. `index.sharding` builds large indexes
shard by shard and searches several shards in parallel.

Processes that build or batch-search should start with ``OMP_WAIT_POLICY=PASSIVE`` in their
environment (it must be set before Faiss is imported). With OpenMP's default spin-waiting, a
2-thread PQ training took 43 s instead of 0.6 s while other jobs kept both cores busy. This
package does not set it itself: changing the environment on import would be a hidden side effect.
"""

from index.sharding import ShardedIndex, add_shard, merge_shards, train_empty
from index.structures import (
    FLAT,
    HNSW,
    IVF_HNSW_PQ,
    KINDS,
    Layout,
    OperatingPoint,
    choose_kind,
    estimate_memory_mb,
    resolve_layout,
)
from index.tuning import exact_search, recall_at_k
from index.video_index import (
    IDS_FILE,
    INDEX_FILE,
    META_FILE,
    REPORT_FILE,
    VideoIndex,
)

__all__ = [
    "FLAT",
    "HNSW",
    "IDS_FILE",
    "INDEX_FILE",
    "IVF_HNSW_PQ",
    "KINDS",
    "META_FILE",
    "REPORT_FILE",
    "Layout",
    "OperatingPoint",
    "ShardedIndex",
    "VideoIndex",
    "add_shard",
    "choose_kind",
    "estimate_memory_mb",
    "exact_search",
    "merge_shards",
    "recall_at_k",
    "resolve_layout",
    "train_empty",
]
