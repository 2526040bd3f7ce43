"""`VectorStore`: a Faiss structure and its position -> video id table, changed in place.

Faiss numbers the vectors it holds by *position*; the store maps each position to a video id
(``-1`` once removed) and keeps the count of live ones. How a removal works differs by kind
(physical for the exact index, a tombstone for the graph and IVF kinds); `index.video_index`
says why. The store takes no lock: `VideoIndex` holds its write lock around every change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import faiss
import numpy as np

from core.errors import IndexBuildError
from index.arrays import chunks
from index.query_aware import QueryAwareTransform
from index.structures import FLAT, HNSW, IVF_KINDS, Layout, refine_parts

logger = logging.getLogger(__name__)


class VectorStore:
    """The vectors of an index, where Faiss keeps them, and the id of each position.

    Attributes:
        index: The Faiss structure; it stores ``dim + 1`` wide vectors under a ``transform``.
        layout: Its kind and sizes.
        transform: Query-fitted coordinates of the stored vectors, or ``None`` (raw vectors).
    """

    def __init__(
        self,
        index: faiss.Index,
        layout: Layout,
        labels: np.ndarray,
        transform: QueryAwareTransform | None = None,
        mapped: bool = False,
    ) -> None:
        """Wraps a Faiss structure and its id table ``labels`` (``[positions] int64``);
        ``mapped``: its arrays are a read-only mapping of a file (`faiss.IO_FLAG_MMAP_IFC`)."""
        self.index = index
        self.layout = layout
        self.transform = transform
        self._mapped = mapped
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)
        self._count = int(np.count_nonzero(self._labels >= 0))

    @property
    def labels(self) -> np.ndarray:
        """Video id of each position, ``[positions] int64``, ``-1`` where removed.

        A change replaces the array rather than writing into it, so a search that read it
        keeps a consistent table.
        """
        return self._labels

    @property
    def count(self) -> int:
        """Live videos."""
        return self._count

    @property
    def tombstones(self) -> int:
        """Removed positions whose vectors still occupy the structure (HNSW, IVF)."""
        return len(self._labels) - self._count

    def live_ids(self) -> np.ndarray:
        """Ids of the live videos, ``[count] int64``, in position order (a copy)."""
        return self._labels[self._labels >= 0].copy()

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions holding any of ``ids`` (``[n] int64``), ``[m] int64`` ascending."""
        return np.flatnonzero(np.isin(self._labels, ids))

    def holds_positions(self) -> bool:
        """Whether the Faiss structure holds the positions the id table describes."""
        positions = len(self._labels)
        if self.layout.kind == FLAT:
            return int(self.index.ntotal) == positions and bool((self._labels >= 0).all())
        if self.layout.kind == HNSW:
            return int(self.index.ntotal) == positions
        base, refine = refine_parts(self.index)
        return int(base.ntotal) == positions and (refine is None or int(refine.ntotal) == positions)

    def tombstone_selector(self) -> tuple[faiss.IDSelector | None, np.ndarray | None]:
        """A selector of the live positions and the bitmap it points into; ``None``s without
        tombstones. The caller keeps the bitmap alive as long as the selector."""
        if self.layout.kind == FLAT or self._count == len(self._labels):
            return None, None
        bitmap = np.packbits(self._labels >= 0, bitorder="little")
        return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap

    def append(self, x: np.ndarray, ids: np.ndarray, *, batch: int, normalize: bool) -> None:
        """Adds videos at new positions, ``batch`` rows at a time.

        The table grows with each chunk, so a failure part-way leaves the store consistent.

        Args:
            x: Checked embeddings ``[n, d] float32`` in the model's coordinates.
            ids: Their ids ``[n] int64``, none of them already live.
            batch: Rows per chunk (one progress log line per chunk on large adds).
            normalize: Store unit-norm copies.
        """
        n = len(x)
        started = time.perf_counter()
        done = 0
        for vectors, chunk_ids in chunks(x, ids, batch, normalize=normalize):
            if self.transform is not None:
                vectors = self.transform.items(vectors)
            self._add_at(np.ascontiguousarray(vectors, dtype=np.float32), len(self._labels))
            self._labels = np.concatenate([self._labels, chunk_ids])
            self._count += len(vectors)
            done += len(vectors)
            if n > batch:
                logger.info(
                    "added %d/%d videos to the %s index (%.1f s)",
                    done,
                    n,
                    self.layout.kind,
                    time.perf_counter() - started,
                )

    def drop(self, positions: np.ndarray) -> None:
        """Removes positions: physically from the exact index (which renumbers), else tombstones.

        Args:
            positions: Live positions ``[m] int64``, ascending.
        """
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        if self.layout.kind == FLAT:
            self._own_arrays()
            removed = self.index.remove_ids(faiss.IDSelectorBatch(positions))
            self._labels = np.delete(self._labels, positions)
        else:
            removed = len(positions)
            self._labels = self._labels.copy()  # searches holding the old table keep it intact
            self._labels[positions] = -1
        if removed != len(positions):  # pragma: no cover - invariant
            raise IndexBuildError(f"internal: removed {removed} of {len(positions)} positions")
        self._count -= len(positions)

    def vectors(self, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Live vectors ``[m, d] float32`` (model coordinates) and ids ``[m] int64``, in chunks,
        read back from the structure's own float storage.

        Raises:
            IndexBuildError: The structure keeps only compressed codes (IVF-PQ without an exact
                refine stage).
        """
        storage = self._exact_storage()
        if storage is None:
            raise IndexBuildError(
                f"a {self.layout.factory} index keeps no exact vectors; "
                "pass embeddings= and ids= to tune()"
            )
        labels = self._labels
        for start in range(0, len(labels), batch):
            m = min(batch, len(labels) - start)
            live = labels[start : start + m] >= 0
            if not live.any():
                continue
            stored = storage.reconstruct_n(start, m)[live]
            if self.transform is not None:
                stored = self.transform.restore_items(stored)
            yield np.ascontiguousarray(stored), labels[start : start + m][live]

    def _exact_storage(self) -> faiss.Index | None:
        if self.layout.kind in (FLAT, HNSW):
            return self.index
        _, refine = refine_parts(self.index)
        if refine is not None and isinstance(refine, faiss.IndexFlat):
            return refine
        return None

    def _own_arrays(self) -> None:
        """Before the first change of a mapped structure: a private copy to change (the
        mapping is read-only; writing to it would crash the process). Searches holding the
        mapped structure finish on it."""
        if not self._mapped:
            return
        started = time.perf_counter()
        # A round trip through bytes, not `faiss.clone_index`, which may copy a mapped array
        # as another view of the same read-only pages.
        self.index = faiss.deserialize_index(faiss.serialize_index(self.index))
        self._mapped = False
        logger.info(
            "copied the mapped %s index before its first change (%.1f s)",
            self.layout.kind,
            time.perf_counter() - started,
        )

    def _add_at(self, vectors: np.ndarray, first: int) -> None:
        """Adds stored-form vectors at positions ``first, first + 1, ...``."""
        self._own_arrays()
        if self.layout.kind in (FLAT, HNSW):
            if self.index.ntotal != first:  # pragma: no cover - invariant
                raise IndexBuildError(
                    f"internal: faiss ntotal {self.index.ntotal} != positions {first}"
                )
            self.index.add(vectors)
            return
        base, refine = refine_parts(self.index)
        if base.ntotal != first:  # pragma: no cover - invariant
            raise IndexBuildError(f"internal: faiss ntotal {base.ntotal} != positions {first}")
        if self.layout.kind in IVF_KINDS:
            base.add_with_ids(vectors, np.arange(first, first + len(vectors), dtype=np.int64))
        else:  # a graph numbers its vectors in the order they arrive
            base.add(vectors)
        if refine is not None:
            refine.add(vectors)
            self.index.ntotal = refine.ntotal
