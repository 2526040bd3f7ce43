"""Merging the index's candidates with the item-to-item sources' into N ranker slots.

The index keeps its best ``N - source_slots`` candidates whatever the sources say, so
retrieval alone still reaches the ranker; then the sources' lists are interleaved by rank
(each source's best, then each source's second, ...) and add up to ``source_slots`` videos
the index did not already bring; the index's next candidates fill whatever is left. Every
candidate records every list it was in (`MergedCandidates.origins`) and its position in the
index's list, which the ranker reads as evidence and the answer reports.

One stable sort of all the lists' entries answers everything: the first occurrence of each
video in its list, which lists hold it (a bit per list) and its position in the index's list.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from candidates.sources import ORIGINS
from core.vocab import FIRST_ID_ROW


@dataclasses.dataclass(frozen=True)
class _Entries:
    """Every distinct (list, video) of a set of lists, sorted by key ``list * base + video``,
    with a bit per origin and the index position (-1 when not from the index)."""

    keys: np.ndarray
    bits: np.ndarray
    rank: np.ndarray
    base: int

    def find(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(origins [b, k, len(ORIGINS)] bool, retrieval_rank [b, k])`` of ``rows [b, k]``
        in their own lists."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.keys) == 0:
            return np.zeros((*rows.shape, len(ORIGINS)), bool), np.full(rows.shape, -1)
        held = (rows >= FIRST_ID_ROW) & (rows < self.base)
        queries = np.arange(len(rows))[:, None] * self.base + np.where(held, rows, 0)
        position = np.minimum(np.searchsorted(self.keys, queries), len(self.keys) - 1)
        hit = held & (self.keys[position] == queries)
        bits = np.where(hit, self.bits[position], 0)
        origins = ((bits[..., None] >> np.arange(len(ORIGINS))) & 1).astype(bool)
        return origins, np.where(hit, self.rank[position], -1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class MergedCandidates:
    """``b`` merged lists of at most ``N`` candidates.

    Attributes:
        rows: ``[b, N] int64`` candidate rows, 0 on unfilled slots.
        origins: ``[b, N, len(ORIGINS)] bool``: proposed by the index, then by each source.
        retrieval_rank: ``[b, N] int64`` 0-based position in the index's list, -1 if absent.
    """

    rows: np.ndarray
    origins: np.ndarray
    retrieval_rank: np.ndarray
    entries: _Entries = dataclasses.field(repr=False)

    @property
    def valid(self) -> np.ndarray:
        """``[b, N] bool`` filled slots."""
        return self.rows >= FIRST_ID_ROW

    def describe(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Origins ``[b, k, len(ORIGINS)] bool`` and index positions ``[b, k]`` (-1 absent) of
        any rows ``[b, k]``, merged or not, in the lists that were merged."""
        return self.entries.find(rows)


def merge_candidates(
    index_rows: np.ndarray,
    proposals: dict[str, tuple[np.ndarray, np.ndarray]],
    num_slots: int,
    source_slots: int,
) -> MergedCandidates:
    """Merges the index's lists with the sources' (see the module docstring).

    Args:
        index_rows: ``[b, n] int64`` the index's candidates, best first (0 for none).
        proposals: Source name to ``(rows [b, p] int64, scores)``, best first (0 for none);
            names from `ORIGINS`.
        num_slots: ``N``.
        source_slots: Most slots the sources may add.

    Returns:
        The merged lists.
    """
    index_rows = np.asarray(index_rows, dtype=np.int64)
    b, n = index_rows.shape
    head = min(max(num_slots - source_slots, 0), n)
    names = [name for name in ORIGINS[1:] if name in proposals]
    if names:
        stacked = np.stack([proposals[name][0] for name in names], axis=2)  # [b, p, s]
        interleaved = stacked.reshape(b, -1)
        tags = np.broadcast_to(
            np.array([ORIGINS.index(name) for name in names]), stacked.shape
        ).reshape(b, -1)
    else:
        interleaved = np.zeros((b, 0), dtype=np.int64)
        tags = np.zeros((b, 0), dtype=np.int64)
    pool = np.concatenate([index_rows[:, :head], interleaved, index_rows[:, head:]], axis=1)
    tag = np.concatenate(
        [np.zeros((b, head), np.int64), tags, np.zeros((b, n - head), np.int64)], axis=1
    )
    index_position = np.concatenate(
        [
            np.arange(head)[None].repeat(b, 0),
            np.full(interleaved.shape, -1),
            np.arange(head, n)[None].repeat(b, 0),
        ],
        axis=1,
    )
    width = pool.shape[1]
    base = int(pool.max(initial=0)) + 1
    real = pool >= FIRST_ID_ROW
    keys = (np.arange(b)[:, None] * base + pool)[real]
    flat = np.flatnonzero(real.ravel())
    # Stable: within one video of one list, the earliest slot of the pool comes first.
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    # No real candidate in any list (everything excluded) leaves no entry at all.
    starts = np.flatnonzero(np.r_[len(keys) > 0, sorted_keys[1:] != sorted_keys[:-1]])
    if len(keys):
        bits = np.bitwise_or.reduceat(1 << tag.ravel()[flat][order], starts)
        positions = index_position.ravel()[flat][order]
        absent = np.iinfo(np.int64).max
        rank = np.minimum.reduceat(np.where(positions >= 0, positions, absent), starts)
        rank = np.where(rank < absent, rank, -1)
    else:
        bits = rank = np.zeros(0, np.int64)
    entries = _Entries(sorted_keys[starts], bits, rank, base)

    first = np.zeros(b * width, dtype=bool)
    first[flat[order[starts]]] = True
    new = first.reshape(b, width)
    from_sources = np.zeros((b, width), dtype=bool)
    from_sources[:, head : head + interleaved.shape[1]] = True
    added_by_sources = np.cumsum(new & from_sources, axis=1)
    keep = new & ~(from_sources & (added_by_sources > source_slots))
    slot = np.cumsum(keep, axis=1) - 1
    keep &= slot < num_slots
    rows = np.zeros((b, num_slots), dtype=np.int64)
    list_of, position = np.nonzero(keep)
    rows[list_of, slot[list_of, position]] = pool[list_of, position]
    origins, retrieval_rank = entries.find(rows)
    return MergedCandidates(rows, origins, retrieval_rank, entries)
