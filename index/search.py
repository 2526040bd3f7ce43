"""Top-k search over a `VectorStore`: per-query exclusions, removed videos never returned.

Excluded ids are dropped after an over-fetch of ``k + len(exclude[i])`` candidates; rows the
first pass cannot fill are searched again, with a larger fetch while the structure returned full
rows and at a wider operating point where it ran out, until ``k`` are found or the index has no
more. Every result goes through the store's id table, so a tombstoned position (already skipped
inside Faiss by the state's selector) can never leak out as an id.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from core.errors import DataError
from index.arrays import check_vectors
from index.operating_points import OperatingPoint, escalate, search_parameters
from index.query_aware import QueryAwareTransform
from index.storage import VectorStore

_MAX_SEARCH_ATTEMPTS = 16


@dataclasses.dataclass(frozen=True)
class SearchState:
    """What a search reads besides the store; replaced as a whole under the write lock.

    Attributes:
        point: The operating point.
        params: Its `faiss.SearchParameters` (with the selector), or ``None`` for a plain flat
            search.
        selector: `faiss.IDSelector` of the live positions, or ``None`` without tombstones.
        bitmap: The selector's bitmap ``[ceil(positions / 8)] uint8``, kept alive with it.
    """

    point: OperatingPoint
    params: Any
    selector: Any
    bitmap: np.ndarray | None

    @classmethod
    def create(cls, store: VectorStore, point: OperatingPoint) -> SearchState:
        """The state of searching ``store`` at ``point`` (call again after every change)."""
        selector, bitmap = store.tombstone_selector()
        params = search_parameters(store.layout, point, selector)
        return cls(point=point, params=params, selector=selector, bitmap=bitmap)


def prepare_queries(
    queries: Any, dim: int, *, normalize: bool, transform: QueryAwareTransform | None
) -> np.ndarray:
    """Validated (and, if configured, unit-norm) queries in the stored coordinates.

    Kept lean: this runs on every request; the full checks run only to word an error.

    Args:
        queries: The caller's ``[q, d] float32``.
        dim: The index dimension ``d``.
        normalize: Scale every query to unit norm.
        transform: Query-fitted coordinates, or ``None``.

    Returns:
        ``[q, d] float32``, or ``[q, d + 1] float32`` under a ``transform``.

    Raises:
        DataError: Wrong type, shape, dtype or dimension, NaN or inf, or a zero vector.
    """
    if (
        not isinstance(queries, np.ndarray)
        or queries.ndim != 2
        or queries.dtype != np.float32
        or queries.shape[1] != dim
    ):
        check_vectors(queries, "queries", dim)  # raises the precise error
    norms = np.sqrt(np.einsum("ij,ij->i", queries, queries))
    if len(norms) and not (norms.min() > 0 and math.isfinite(norms.sum())):
        check_vectors(queries, "queries", dim)  # NaN / inf rows
        bad = np.flatnonzero(norms <= 0)
        raise DataError(
            f"queries: {len(bad)} zero vector(s) cannot be searched (rows {bad[:5].tolist()})"
        )
    if normalize:
        queries = queries / norms[:, None]
    if transform is not None:
        return transform.queries(queries)
    return np.ascontiguousarray(queries)


def search(
    store: VectorStore,
    state: SearchState,
    q: np.ndarray,
    k: int,
    excluded: list[np.ndarray] | None,
    *,
    recall_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` live, non-excluded videos per query, best first (caller holds the read lock).

    Args:
        store: The vectors and id table.
        state: The operating point and tombstone selector of ``store``.
        q: Prepared queries (`prepare_queries`) ``[q, d'] float32``.
        k: Results per query, >= 1.
        excluded: One sorted ``[m_i] int64`` array per query, or ``None``.
        recall_k: The K the operating point was tuned for (``index.recall_k``).

    Returns:
        Scores ``[q, k] float32`` and ids ``[q, k] int64``; slots that cannot be filled hold id
        ``-1`` and score ``-inf``, after all real results.
    """
    nq = len(q)
    labels = store.labels
    positions = len(labels)
    if nq == 0 or store.count == 0:
        return (
            np.full((nq, k), -np.inf, dtype=np.float32),
            np.full((nq, k), -1, dtype=np.int64),
        )
    index, layout = store.index, store.layout
    point, params = state.point, state.params
    extra = max((len(e) for e in excluded), default=0) if excluded else 0
    fetch = min(k + extra, positions)
    if point.k_factor is not None and fetch < recall_k:
        # The refine stage was tuned to re-rank k_factor * recall_k candidates; re-rank as
        # many for a shorter list so that recall@10 is not worse than the tuned recall@K.
        point = dataclasses.replace(point, k_factor=point.k_factor * recall_k / fetch)
        params = search_parameters(layout, point, state.selector)
    if fetch == k and not excluded:  # common case: no refill needed unless a slot is empty
        scores, found = index.search(q, k, params=params)
        if found.min() >= 0:
            ids = labels[found]
            if ids.min() >= 0:
                return scores, ids
    if nq == 1 and excluded and fetch >= k:
        # One request (the serving path): filter the over-fetch with a handful of numpy
        # calls; only a list the exclusions leave short goes through the general refill.
        scores, found = index.search(q, fetch, params=params)
        if found.min() >= 0:
            ids = labels[found[0]]
            kept = np.flatnonzero((ids >= 0) & ~_members(ids, excluded[0]))
            if len(kept) >= k:
                kept = kept[:k]
                return scores[:, kept], ids[kept][None]
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    rows = np.arange(nq)
    for attempt in range(_MAX_SEARCH_ATTEMPTS):
        sub = q if attempt == 0 else q[rows]
        scores, found = index.search(sub, fetch, params=params)
        ids = np.where(found >= 0, labels[np.maximum(found, 0)], -1)
        valid = ids >= 0
        if excluded:
            for j, row in enumerate(rows):
                if len(excluded[row]):
                    valid[j] &= ~np.isin(ids[j], excluded[row])
        m = min(k, fetch)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :m]
        kept = np.take_along_axis(valid, order, axis=1)
        got_ids = np.where(kept, np.take_along_axis(ids, order, axis=1), -1)
        got_scores = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
        out_ids[rows, :m] = got_ids
        out_scores[rows, :m] = got_scores
        short = kept.sum(axis=1) < k
        if not short.any():
            break
        # A full raw row means a larger fetch may reach more; a row with raw -1 means the
        # structure ran out at these parameters and only a wider point finds more.
        raw_full = (found[short] >= 0).all(axis=1)
        grow = bool(raw_full.any()) and fetch < positions
        wider = escalate(point, layout, positions) if not raw_full.all() else None
        if not grow and wider is None:
            break
        rows = rows[short]
        if grow:
            fetch = min(positions, fetch * 2)
        if wider is not None:
            point = wider
            params = search_parameters(layout, point, state.selector)
    return out_scores, out_ids


def search_at(
    store: VectorStore, state: SearchState, q: np.ndarray, k: int, point: OperatingPoint
) -> tuple[np.ndarray, float]:
    """Ids ``[q, k] int64`` at ``point`` with no exclusions and no refill, and the wall time in
    seconds: what tuning measures (caller holds the read lock).

    Args:
        store: The vectors and id table.
        state: Supplies the tombstone selector.
        q: Unit-norm (if configured) queries ``[q, d] float32`` in the model's coordinates.
        k: Results per query.
        point: The operating point to try.
    """
    if store.transform is not None:
        q = store.transform.queries(q)
    params = search_parameters(store.layout, point, state.selector)
    started = time.perf_counter()
    _, found = store.index.search(q, k, params=params)
    seconds = time.perf_counter() - started
    labels = store.labels
    return np.where(found >= 0, labels[np.maximum(found, 0)], -1), seconds


def _members(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_set)`` for a sorted ``sorted_set``, a few times faster on
    request-sized inputs (binary search instead of np.isin's sort or table)."""
    position = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[position] == values
