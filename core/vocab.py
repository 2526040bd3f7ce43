"""Vocabularies: raw int64 ids to dense embedding rows.

Row 0 is padding (never a real id; masked out of histories) and row 1 is out-of-vocabulary;
known ids take rows 2, 3, ... in the order they were added. Growing a vocabulary (warm start)
appends rows and never moves an existing id, so trained embedding rows stay valid.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from core.errors import DataError
from core.io import atomic_save_npy

PAD_ROW = 0
OOV_ROW = 1
FIRST_ID_ROW = 2
# Ids spread over at most this many times their count (plus slack) get a direct id -> row
# table: one gather per lookup instead of a binary search over every id, which on a
# million-id catalogue costs a cache miss per level (tens of microseconds per request).
DENSE_SPREAD = 4
DENSE_SLACK = 1 << 16


class IdVocabulary:
    """Maps raw int64 ids to rows; vectorised lookups via a direct table when the ids are
    compact non-negative integers, else via a sorted index.

    Args:
        ids: Distinct raw ids in row order (row of ``ids[i]`` is ``i + FIRST_ID_ROW``).

    Raises:
        DataError: If ``ids`` has duplicates.
    """

    def __init__(self, ids: Iterable[int] | np.ndarray = ()) -> None:
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if ids.ndim != 1:
            raise DataError(f"vocabulary ids must be one-dimensional, got shape {ids.shape}")
        self._ids = ids.copy()
        self._reindex()

    def _reindex(self) -> None:
        order = np.argsort(self._ids, kind="stable")
        sorted_ids = self._ids[order]
        if len(sorted_ids) > 1 and (np.diff(sorted_ids) == 0).any():
            dup = sorted_ids[np.flatnonzero(np.diff(sorted_ids) == 0)[0]]
            raise DataError(f"vocabulary id {int(dup)} appears twice")
        self._sorted_ids = sorted_ids
        self._sorted_rows = order.astype(np.int64) + FIRST_ID_ROW
        self._dense: np.ndarray | None = None
        if len(sorted_ids) and sorted_ids[0] >= 0:
            span = int(sorted_ids[-1]) + 1
            if span <= DENSE_SPREAD * len(sorted_ids) + DENSE_SLACK:
                dense = np.full(span, OOV_ROW, dtype=np.int32)
                dense[sorted_ids] = self._sorted_rows
                self._dense = dense

    @property
    def ids(self) -> np.ndarray:
        """Known ids in row order, ``[n] int64`` (a copy)."""
        return self._ids.copy()

    @property
    def num_ids(self) -> int:
        """Number of known ids."""
        return len(self._ids)

    @property
    def num_rows(self) -> int:
        """Rows an embedding table needs: known ids plus padding and OOV."""
        return len(self._ids) + FIRST_ID_ROW

    def lookup(self, ids: np.ndarray | Iterable[int]) -> np.ndarray:
        """Rows of raw ids; unknown ids map to `OOV_ROW`.

        Args:
            ids: Raw ids, any shape, int64.

        Returns:
            Rows with the same shape, int64.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if len(self._sorted_ids) == 0:
            return np.full(ids.shape, OOV_ROW, dtype=np.int64)
        dense = self._dense
        if dense is not None:
            inside = (ids >= 0) & (ids < len(dense))
            return np.where(inside, dense[np.where(inside, ids, 0)], OOV_ROW).astype(np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos_clipped = np.minimum(pos, len(self._sorted_ids) - 1)
        found = self._sorted_ids[pos_clipped] == ids
        return np.where(found, self._sorted_rows[pos_clipped], OOV_ROW).astype(np.int64)

    def contains(self, ids: np.ndarray | Iterable[int]) -> np.ndarray:
        """Boolean mask of which raw ids are known, same shape as ``ids``."""
        return self.lookup(ids) != OOV_ROW

    def id_of(self, rows: np.ndarray) -> np.ndarray:
        """Raw ids of rows; padding and OOV rows give -1. ``[...] int64``."""
        rows = np.asarray(rows, dtype=np.int64)
        known = rows >= FIRST_ID_ROW
        safe = np.where(known, rows - FIRST_ID_ROW, 0)
        if len(self._ids) == 0:
            return np.full(rows.shape, -1, dtype=np.int64)
        return np.where(known, self._ids[safe], -1).astype(np.int64)

    def grow(self, ids: np.ndarray | Iterable[int]) -> IdVocabulary:
        """A new vocabulary with the unseen ``ids`` appended (existing rows unchanged)."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        new = ids[~self.contains(ids)]
        _, first = np.unique(new, return_index=True)
        return IdVocabulary(np.concatenate([self._ids, new[np.sort(first)]]))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the ids in row order as ``.npy``, atomically."""
        atomic_save_npy(path, self._ids)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IdVocabulary:
        """Reads a vocabulary written by `save`."""
        ids = np.load(path, allow_pickle=False)
        if ids.dtype != np.int64:
            raise DataError(f"vocabulary {path} has dtype {ids.dtype}, expected int64")
        return cls(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdVocabulary) and np.array_equal(self._ids, other._ids)

    def __hash__(self) -> int:
        return hash(self._ids.tobytes())

    def __repr__(self) -> str:
        return f"IdVocabulary({len(self._ids)} ids)"
