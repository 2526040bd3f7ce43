"""Candidate index over video embeddings: Faiss, numpy in and out, never TensorFlow.

`VideoIndex` chooses a structure by catalogue size and memory budget, tunes its search
parameters to a recall target against exact search, searches with per-query exclusions, takes
uploads and takedowns live, and saves/loads with checksums. One file per job:

- ``video_index.py``: `VideoIndex`, the public class; it holds the lock and calls the others.
- ``structures.py``: which Faiss structure (kind, factory string, memory), creating, training.
- ``query_aware.py``: coordinates fitted to the queries for an HNSW graph, and when to use them.
- ``storage.py``: the structure's vectors and the position -> video id table (add, remove).
- ``operating_points.py``: search parameters: the points tuning tries, widening, checks.
- ``search.py``: top-k with exclusions and refills; removed videos never returned.
- ``tuning.py``: exact ground truth, recall@K, choosing the cheapest point that meets the target.
- ``persistence.py``: the four saved files, their checksums and format version.
- ``arrays.py``: input checks (vectors, ids, exclusions), unit-norm copies, chunks, samples.
- ``concurrency.py``: the reader/writer lock and per-thread OpenMP team sizes.

Processes that build or batch-search should start with ``OMP_WAIT_POLICY=PASSIVE`` in their
environment (it must be set before Faiss is imported). With OpenMP's default spin-waiting, a
2-thread PQ training took 43 s instead of 0.6 s while other jobs kept both cores busy. This
package does not set it itself: changing the environment on import would be a hidden side effect.
"""

from index.operating_points import OperatingPoint
from index.persistence import IDS_FILE, INDEX_FILE, META_FILE, REPORT_FILE
from index.structures import (
    FLAT,
    HNSW,
    IVF_HNSW_PQ,
    KINDS,
    Layout,
    choose_kind,
    estimate_memory_mb,
    resolve_layout,
)
from index.tuning import exact_search, recall_at_k
from index.video_index import VideoIndex

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
    "VideoIndex",
    "choose_kind",
    "estimate_memory_mb",
    "exact_search",
    "recall_at_k",
    "resolve_layout",
]
