"""Compiled loops (numba) behind the request path's candidate sources (`candidates.request`).

At one request's shapes (five latest watches with up to 50 edges each, 300 candidates) the
work is a few thousand additions and binary searches. Written as numpy it was about 100 calls
of a few microseconds each, and those calls were the stage's whole cost. Measured at a million
videos on one core (`taskset -c 0 .venv/bin/python benchmarks/serving.py --videos 1000000`,
the same bundle, before and after): the sources stage's p50 went from 0.84 to 0.32 ms, and the
re-rank's (which names each item's followed watch) from 0.43 to 0.35 ms. Each function here is
one call. They repeat the numpy arithmetic operation by operation (the float32 products, the
float64 sums in the same order, the stable sorts), so their answers are bit-identical to the
batched numpy functions that training and evaluation use; the tests compare the two.

Compiled on first call and cached beside this file (``cache=True``): a worker pays the
compilation once per installation, not at every bundle load.
"""

from __future__ import annotations

import numba
import numpy as np

from core.vocab import FIRST_ID_ROW


@numba.njit(cache=True)
def top_of_one(
    indptr: np.ndarray,
    columns: np.ndarray,
    counts: np.ndarray,
    totals: np.ndarray,
    sources: np.ndarray,
    source_weights: np.ndarray,
    n: int,
    excluded: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` targets with the largest ``sum_j w_j * count(a_j, c) / total(a_j)``.

    Args:
        indptr, columns, counts, totals: One `ItemGraph`'s CSR arrays.
        sources: ``[m] int64`` rows (0 or out of range for none).
        source_weights: ``[m] float64`` weight of each source position.
        n: Targets to return.
        excluded: ``[x] int64`` rows never to return, sorted ascending.

    Returns:
        ``(rows [n] int64, scores [n] float32)``, best first (ties: the smaller row), 0 past
        the last target.
    """
    num_rows = len(indptr) - 1
    rows_out = np.zeros(n, dtype=np.int64)
    scores_out = np.zeros(n, dtype=np.float32)
    size = 0
    for row in sources:
        if FIRST_ID_ROW <= row < num_rows:
            size += indptr[row + 1] - indptr[row]
    if size == 0 or n == 0:
        return rows_out, scores_out
    targets = np.empty(size, dtype=np.int64)
    values = np.empty(size, dtype=np.float64)
    filled = 0
    for j in range(len(sources)):
        row = sources[j]
        if not FIRST_ID_ROW <= row < num_rows:
            continue
        # As numpy computes float32 counts times a Python float: the float is cast to float32.
        scale = np.float32(source_weights[j] / max(np.float64(totals[row]), 1e-12))
        for edge in range(indptr[row], indptr[row + 1]):
            targets[filled] = columns[edge]
            values[filled] = np.float64(counts[edge] * scale)
            filled += 1
    # Stable: equal targets add up in the order the edges were listed, as np.bincount does.
    order = np.argsort(targets, kind="mergesort")
    unique = np.empty(size, dtype=np.int64)
    sums = np.zeros(size, dtype=np.float64)
    kept = -1
    previous = -1
    for position in order:
        target = targets[position]
        if target != previous:
            kept += 1
            unique[kept] = target
            previous = target
        sums[kept] += values[position]
    count = 0
    for i in range(kept + 1):
        if len(excluded):
            at = np.searchsorted(excluded, unique[i])
            if at < len(excluded) and excluded[at] == unique[i]:
                continue
        unique[count] = unique[i]
        sums[count] = sums[i]
        count += 1
    best = np.argsort(-sums[:count], kind="mergesort")
    for i in range(min(n, count)):
        rows_out[i] = unique[best[i]]
        scores_out[i] = np.float32(sums[best[i]])
    return rows_out, scores_out


@numba.njit(cache=True)
def counts_of_one(
    indptr: np.ndarray,
    columns: np.ndarray,
    counts: np.ndarray,
    sources: np.ndarray,
    targets: np.ndarray,
) -> np.ndarray:
    """``[m, k] float32`` edge counts from ``sources [m]`` to ``targets [k]`` (0 without an
    edge, and for rows the graph does not hold): a binary search in each source's own sorted
    columns."""
    num_rows = len(indptr) - 1
    out = np.zeros((len(sources), len(targets)), dtype=np.float32)
    for j in range(len(sources)):
        row = sources[j]
        if not FIRST_ID_ROW <= row < num_rows:
            continue
        start, stop = indptr[row], indptr[row + 1]
        if start == stop:
            continue
        edges = columns[start:stop]
        for i in range(len(targets)):
            target = targets[i]
            if not FIRST_ID_ROW <= target < num_rows:
                continue
            at = np.searchsorted(edges, target)
            if at < stop - start and edges[at] == target:
                out[j, i] = counts[start + at]
    return out


@numba.njit(cache=True)
def merge_one_list(
    index_rows: np.ndarray,
    proposed: np.ndarray,
    proposed_tags: np.ndarray,
    num_slots: int,
    source_slots: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index's head, the sources' lists interleaved by rank (at most ``source_slots``
    new videos), then the index's tail; each video once, in its first slot.

    Args:
        index_rows: ``[n] int64`` the index's candidates, best first (0 for none).
        proposed: ``[p, s] int64`` the sources' rows by rank, one column per source.
        proposed_tags: ``[s] int64`` each column's bit number (its position in ``ORIGINS``).
        num_slots: ``N``.
        source_slots: Most slots the sources may add.

    Returns:
        ``(rows [k] int64, origin bits [k] int64, retrieval rank [k] int64)``: bit ``t`` of a
        video's origins is set when list ``t`` proposed it (0 is the index); the rank is its
        0-based position in the index's list, -1 when absent.
    """
    n = len(index_rows)
    head = min(max(num_slots - source_slots, 0), n)
    width = n + proposed.size
    pool = np.empty(width, dtype=np.int64)
    tag = np.zeros(width, dtype=np.int64)
    index_position = np.full(width, n, dtype=np.int64)  # n: not in the index's list
    size = 0
    for i in range(head):
        if index_rows[i] >= FIRST_ID_ROW:
            pool[size] = index_rows[i]
            index_position[size] = i
            size += 1
    for rank in range(proposed.shape[0]):
        for column in range(proposed.shape[1]):
            if proposed[rank, column] >= FIRST_ID_ROW:
                pool[size] = proposed[rank, column]
                tag[size] = proposed_tags[column]
                size += 1
    for i in range(head, n):
        if index_rows[i] >= FIRST_ID_ROW:
            pool[size] = index_rows[i]
            index_position[size] = i
            size += 1
    # Per video: every list that proposed it, its best index position and its first slot.
    order = np.argsort(pool[:size], kind="mergesort")
    bits = np.zeros(size, dtype=np.int64)
    best_position = np.full(size, n, dtype=np.int64)
    video_of_slot = np.empty(size, dtype=np.int64)
    first_slot = np.zeros(size, dtype=np.bool_)
    video = -1
    previous = -1
    for slot in order:
        if pool[slot] != previous:
            video += 1
            previous = pool[slot]
            first_slot[slot] = True
        video_of_slot[slot] = video
        bits[video] |= np.int64(1) << tag[slot]
        best_position[video] = min(best_position[video], index_position[slot])
    rows = np.empty(min(num_slots, size), dtype=np.int64)
    origins = np.empty(len(rows), dtype=np.int64)
    retrieval_rank = np.empty(len(rows), dtype=np.int64)
    taken = 0
    added_by_sources = 0
    for slot in range(size):
        if taken == len(rows):
            break
        if not first_slot[slot]:
            continue
        if tag[slot] > 0:
            added_by_sources += 1
            if added_by_sources > source_slots:
                continue
        video = video_of_slot[slot]
        rows[taken] = pool[slot]
        origins[taken] = bits[video]
        retrieval_rank[taken] = best_position[video] if best_position[video] < n else -1
        taken += 1
    return rows[:taken], origins[:taken], retrieval_rank[:taken]


@numba.njit(cache=True)
def _total_at_least_one(totals: np.ndarray, row: int) -> np.float32:
    """``max(total(row), 1)`` in float32, as numpy's ``np.maximum(row_totals, 1.0)`` gives it
    (a row the graph does not hold has total 0)."""
    total = np.float32(0.0)
    if 0 <= row < len(totals):
        total = totals[row]
    return max(total, np.float32(1.0))


@numba.njit(cache=True)
def edge_evidence(
    indptr: np.ndarray,
    columns: np.ndarray,
    counts: np.ndarray,
    totals: np.ndarray,
    recent: np.ndarray,
    recency_weights: np.ndarray,
    candidates: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How strongly each candidate follows the latest watches in one graph.

    Args:
        indptr, columns, counts, totals: One `ItemGraph`'s CSR arrays.
        recent: ``[m] int64`` latest watches, newest first (0 for none).
        recency_weights: ``[m] float64``.
        candidates: ``[k] int64`` rows.

    Returns:
        ``(score [k] float64, weighted_count [k] float64, newest_count [k] float64)``:
        ``sum_j w_j * count(a_j, c) / max(total(a_j), 1)``, ``sum_j w_j * count(a_j, c)``
        and ``count(a_0, c)``, summed over ``j`` in order as numpy sums ``axis=0``.
    """
    edges = counts_of_one(indptr, columns, counts, recent, candidates)
    score = np.zeros(len(candidates), dtype=np.float64)
    weighted_count = np.zeros(len(candidates), dtype=np.float64)
    for j in range(len(recent)):
        denominator = np.float64(_total_at_least_one(totals, recent[j]))
        weight = recency_weights[j]
        for i in range(len(candidates)):
            count = np.float64(edges[j, i])
            score[i] += weight * (count / denominator)
            weighted_count[i] += weight * count
    newest = np.zeros(len(candidates), dtype=np.float64)
    if len(recent):
        for i in range(len(candidates)):
            newest[i] = np.float64(edges[0, i])
    return score, weighted_count, newest


@numba.njit(cache=True)
def strongest_edge(
    indptr: np.ndarray,
    columns: np.ndarray,
    counts: np.ndarray,
    totals: np.ndarray,
    recent: np.ndarray,
    candidates: np.ndarray,
) -> np.ndarray:
    """``[k] int64``: per candidate, the latest watch it follows with the largest
    ``count / max(total, 1)`` (float32, the newest watch on ties), -1 without an edge."""
    edges = counts_of_one(indptr, columns, counts, recent, candidates)
    out = np.full(len(candidates), -1, dtype=np.int64)
    best = np.zeros(len(candidates), dtype=np.float32)
    for j in range(len(recent)):
        denominator = _total_at_least_one(totals, recent[j])
        for i in range(len(candidates)):
            pull = edges[j, i] / denominator
            if pull > best[i]:
                best[i] = pull
                out[i] = recent[j]
    return out
