"""A sparse item-to-item graph over video rows: how often video ``b`` followed video ``a``.

Each candidate source (`candidates.sources`) is one `ItemGraph`. Rows are the feature space's
video rows (``FIRST_ID_ROW`` and up; rows 0 and 1 are padding and OOV and have no edges). A
row keeps its ``max_neighbours`` strongest edges, stored CSR with the columns of each row
sorted, so the two questions of the request path are cheap numpy: "what follows these watches"
(`top`: the rows' edges, summed per target) and "how strongly does each candidate follow each
watch" (`counts`: one ``searchsorted`` over all pairs). ``totals`` keeps each row's weight
before pruning, so a conditional probability ``count / total`` does not grow when edges are
dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np

from candidates import kernels
from core.errors import BundleError
from core.io import atomic_save_npy, map_npy
from core.vocab import FIRST_ID_ROW

GRAPH_FILES: tuple[str, ...] = ("indptr", "columns", "counts", "totals")
_NOTHING = np.zeros(0, dtype=np.int64)
# Up to this many source rows (one request's latest watches), `counts_between` searches each
# row's own edges; beyond, one search over all edges serves a whole batch.
_ROW_BY_ROW = 16


@dataclasses.dataclass
class ItemGraph:
    """Edges ``row -> column`` with counts, CSR by row.

    Attributes:
        indptr: ``[R + 1] int64`` row ``r``'s edges are ``indptr[r]:indptr[r + 1]``.
        columns: ``[E] int64`` target rows, ascending within each row.
        counts: ``[E] float32`` edge weights (number of times the pair was seen).
        totals: ``[R] float32`` total weight out of each row before pruning.
    """

    indptr: np.ndarray
    columns: np.ndarray
    counts: np.ndarray
    totals: np.ndarray

    @functools.cached_property
    def _keys(self) -> np.ndarray:
        """``[E] int64`` edge keys ``row * R + column``, ascending (rows ascend, columns
        ascend within a row): one search over them serves a whole batch. Built on first use,
        so a server, which reads one row's edges at a time, never holds them."""
        rows = np.repeat(np.arange(self.num_rows, dtype=np.int64), np.diff(self.indptr))
        return rows * self.num_rows + self.columns

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_edges(self) -> int:
        return len(self.columns)

    @classmethod
    def from_pairs(
        cls,
        sources: np.ndarray,
        targets: np.ndarray,
        num_rows: int,
        max_neighbours: int,
        weights: np.ndarray | None = None,
    ) -> ItemGraph:
        """Counts pairs into a graph, keeping each row's ``max_neighbours`` strongest edges.

        Args:
            sources: ``[p] int64`` rows the pairs start from.
            targets: ``[p] int64`` rows they lead to.
            num_rows: ``R``, the video vocabulary's rows.
            max_neighbours: Edges kept per row (ties broken by the smaller column).
            weights: ``[p] float`` weight of each pair (1 when None).

        Raises:
            ValueError: A row outside ``[FIRST_ID_ROW, R)``.
        """
        sources = np.asarray(sources, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.int64)
        for name, rows in (("sources", sources), ("targets", targets)):
            if len(rows) and (rows.min() < FIRST_ID_ROW or rows.max() >= num_rows):
                raise ValueError(f"{name} must be video rows in [{FIRST_ID_ROW}, {num_rows})")
        weight = np.ones(len(sources)) if weights is None else np.asarray(weights, np.float64)
        keys, inverse = np.unique(sources * num_rows + targets, return_inverse=True)
        counts = np.bincount(inverse, weights=weight, minlength=len(keys))
        rows, columns = keys // num_rows, keys % num_rows
        totals = np.bincount(rows, weights=counts, minlength=num_rows)
        # Strongest first within each row; `keys` order (row, column) breaks ties.
        order = np.lexsort((np.arange(len(keys)), -counts, rows))
        starts = np.searchsorted(rows[order], rows[order], side="left")
        kept = np.sort(order[np.arange(len(order)) - starts < max_neighbours])
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[kept], minlength=num_rows), out=indptr[1:])
        return cls(
            indptr=indptr,
            columns=columns[kept].astype(np.int64),
            counts=counts[kept].astype(np.float32),
            totals=totals.astype(np.float32),
        )

    def counts_between(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Edge counts from each source to each target (0 where there is no edge).

        Rows this graph does not hold (padding, OOV, videos uploaded after it was built) have
        no edges.

        Args:
            sources: ``[..., m] int64`` rows.
            targets: ``[..., k] int64`` rows (same leading shape).

        Returns:
            ``[..., m, k] float32``.
        """
        sources = np.asarray(sources, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.int64)
        if sources.size <= _ROW_BY_ROW and targets.size == targets.shape[-1]:
            return self._counts_of_one_list(sources, targets)
        sources, targets = sources[..., :, None], targets[..., None, :]
        r = self.num_rows
        held = (sources >= FIRST_ID_ROW) & (sources < r) & (targets >= FIRST_ID_ROW) & (targets < r)
        keys = np.where(held, sources * r + targets, -1)
        if self.num_edges == 0:
            return np.zeros(keys.shape, dtype=np.float32)
        position = np.minimum(np.searchsorted(self._keys, keys), self.num_edges - 1)
        found = held & (self._keys[position] == keys)
        return np.where(found, self.counts[position], 0.0).astype(np.float32)

    def top_of_one(
        self,
        sources: np.ndarray,
        source_weights: np.ndarray,
        n: int,
        excluded: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`top` for one list (a request): the few sources' edge slices, summed per target.

        Args:
            sources: ``[m] int64`` rows (0 for none).
            source_weights: ``[m]`` weight of each source position.
            n: Targets to return.
            excluded: ``[x] int64`` rows never to return, sorted ascending, or None.

        Returns:
            ``(rows [n] int64, scores [n] float32)``, best first, 0 past the last target.
        """
        return kernels.top_of_one(
            self.indptr,
            self.columns,
            self.counts,
            self.totals,
            np.asarray(sources, dtype=np.int64),
            np.asarray(source_weights, dtype=np.float64),
            int(n),
            _NOTHING if excluded is None else np.asarray(excluded, dtype=np.int64),
        )

    def counts_of_one(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """`counts_between` for one list, ``[m, k] float32`` for ``sources [m]`` and
        ``targets [k]``: a search in the few sources' own edges instead of one over every
        edge of the graph, which at a million videos costs a cache miss per step."""
        return kernels.counts_of_one(
            self.indptr,
            self.columns,
            self.counts,
            np.asarray(sources, dtype=np.int64),
            np.asarray(targets, dtype=np.int64),
        )

    def _counts_of_one_list(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """`counts_between` for one list of any leading shape of ones (`counts_of_one`)."""
        out = self.counts_of_one(sources.reshape(-1), targets.reshape(-1))
        return out.reshape(*sources.shape, targets.shape[-1])

    def row_totals(self, rows: np.ndarray) -> np.ndarray:
        """``[...] float32`` total weight out of each row (0 for rows the graph does not hold)."""
        rows = np.asarray(rows, dtype=np.int64)
        held = (rows >= 0) & (rows < self.num_rows)
        return np.where(held, self.totals[np.where(held, rows, 0)], 0.0).astype(np.float32)

    def top(
        self,
        sources: np.ndarray,
        source_weights: np.ndarray,
        n: int,
        exclude: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` targets with the largest weighted conditional probability, per list.

        The score of target ``c`` for sources ``a_j`` is ``sum_j w_j * count(a_j, c) /
        total(a_j)``.

        Args:
            sources: ``[b, m] int64`` rows per list (0 for none).
            source_weights: ``[m] float32`` weight of each source position.
            n: Targets per list.
            exclude: ``[b, x] int64`` rows never to return per list (0 ignored): the watched
                videos.

        Returns:
            ``(rows [b, n] int64, scores [b, n] float32)``, best first; rows 0 and score 0
            where a list has fewer targets.
        """
        sources = np.asarray(sources, dtype=np.int64)
        b, m = sources.shape
        if b == 1:
            excluded = None if exclude is None else np.sort(np.asarray(exclude).reshape(-1))
            rows, scores = self.top_of_one(sources[0], source_weights, n, excluded)
            return rows[None], scores[None]
        held = (sources >= FIRST_ID_ROW) & (sources < self.num_rows)
        safe = np.where(held, sources, 0)
        lengths = np.where(held, self.indptr[safe + 1] - self.indptr[safe], 0).ravel()
        rows_out = np.zeros((b, n), dtype=np.int64)
        scores_out = np.zeros((b, n), dtype=np.float32)
        total = int(lengths.sum())
        if total == 0 or n == 0:
            return rows_out, scores_out
        # Edge positions of every (list, source) pair, flattened.
        starts = np.where(held, self.indptr[safe], 0).ravel()
        first = np.cumsum(lengths) - lengths
        edges = np.repeat(starts - first, lengths) + np.arange(total)
        pair = np.repeat(np.arange(b * m), lengths)
        lists = pair // m
        weight = np.broadcast_to(np.asarray(source_weights, np.float64), (b, m)).ravel()[pair]
        probability = self.counts[edges] / np.maximum(self.totals[safe.ravel()[pair]], 1e-12)
        pair_keys = lists * self.num_rows + self.columns[edges]
        order = np.argsort(pair_keys, kind="stable")
        pair_keys = pair_keys[order]
        starts = np.flatnonzero(np.r_[True, pair_keys[1:] != pair_keys[:-1]])
        keys = pair_keys[starts]
        scores = np.add.reduceat((weight * probability)[order], starts)
        if exclude is not None:
            excluded = np.sort(
                (np.arange(b)[:, None] * self.num_rows + np.asarray(exclude, np.int64)).ravel()
            )
            found = np.minimum(np.searchsorted(excluded, keys), len(excluded) - 1)
            allowed = excluded[found] != keys if len(excluded) else np.ones(len(keys), bool)
            keys, scores = keys[allowed], scores[allowed]
        owner, target = keys // self.num_rows, keys % self.num_rows
        # Best first within each list: a score is at most the sum of the source weights (a
        # weighted sum of probabilities), below the spacing between lists; the stable sort
        # keeps the smaller row first among equal scores.
        spacing = float(np.abs(np.asarray(source_weights, np.float64)).sum()) + 1.0
        ranked = np.argsort(owner * spacing - scores, kind="stable")
        rank = np.arange(len(ranked)) - np.searchsorted(owner[ranked], owner[ranked])
        keep = ranked[rank < n]
        rows_out[owner[keep], rank[rank < n]] = target[keep]
        scores_out[owner[keep], rank[rank < n]] = scores[keep]
        return rows_out, scores_out

    def save(self, directory: str | os.PathLike[str], name: str) -> None:
        """Writes ``{name}_{indptr,columns,counts,totals}.npy`` atomically."""
        for part in GRAPH_FILES:
            atomic_save_npy(Path(directory) / f"{name}_{part}.npy", getattr(self, part))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], name: str) -> ItemGraph:
        """Reads a graph written by `save`.

        Raises:
            BundleError: A missing file or arrays that do not form a graph.
        """
        arrays = {}
        for part in GRAPH_FILES:
            path = Path(directory) / f"{name}_{part}.npy"
            try:
                arrays[part] = map_npy(path)
            except (OSError, ValueError) as error:
                raise BundleError(f"cannot read candidate source {path}: {error}") from error
        indptr, columns = arrays["indptr"], arrays["columns"]
        consistent = (
            indptr.ndim == 1
            and len(indptr) >= 1
            and indptr[0] == 0
            and indptr[-1] == len(columns)
            and bool(np.all(np.diff(indptr) >= 0))
            and len(arrays["counts"]) == len(columns)
            and len(arrays["totals"]) == len(indptr) - 1
            and (len(columns) == 0 or (columns.min() >= 0 and columns.max() < len(indptr) - 1))
        )
        if not consistent:
            raise BundleError(f"candidate source {name!r} in {directory} is not a valid graph")
        return cls(
            indptr=indptr.astype(np.int64, copy=False),
            columns=columns.astype(np.int64, copy=False),
            counts=arrays["counts"].astype(np.float32, copy=False),
            totals=arrays["totals"].astype(np.float32, copy=False),
        )
