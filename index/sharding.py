"""Sharded builds and sharded search, as plain functions any cluster engine can drive.

Build (Faiss' train-once, add-shards, merge pattern)::

    trained = train_empty(sample, config, expected_count=n)      # once, on a sample
    trained.save("trained/")                                      # ship to workers
    shard_i = add_shard(VideoIndex.load("trained/"), emb_i, ids_i)  # on each worker, in parallel
    shard_i.save(f"shards/{i}/")
    merged = merge_shards([VideoIndex.load(f"shards/{i}/") for i in ...])
    merged.tune(held_out_queries)                                 # then merged.save(...)

Serve: `ShardedIndex` searches several complete indexes (disjoint videos) in parallel threads and
merges their top-k lists by score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from core.config import IndexConfig
from core.errors import DataError
from index.structures import choose_kind, default_threads, resolve_layout
from index.video_index import VideoIndex, _check_ids, _check_vectors, _fit_transform

logger = logging.getLogger(__name__)


def train_empty(
    sample: np.ndarray,
    config: IndexConfig | None = None,
    *,
    expected_count: int,
    tuning_queries: np.ndarray | None = None,
) -> VideoIndex:
    """Chooses the structure for the whole catalogue and trains it, empty.

    Args:
        sample: Training vectors ``[m, d] float32`` drawn from the catalogue (IVF-PQ needs at
            least nlist of them; ``nlist * ivf_train_points_per_list`` are used at most).
        config: Index configuration; defaults to `IndexConfig()`.
        expected_count: Videos the merged index will hold (drives the kind and nlist).
        tuning_queries: Held-out queries ``[q, d] float32``; an HNSW graph is then built in
            coordinates fitted to them (see `index.query_aware`), shared by every shard.

    Returns:
        An empty, trained `VideoIndex`; save it and give it to every `add_shard`.
    """
    config = config if config is not None else IndexConfig()
    x = _check_vectors(sample, "sample")
    if expected_count < 1:
        raise DataError(f"expected_count must be >= 1, got {expected_count}")
    kind = choose_kind(expected_count, x.shape[1], config)
    layout = resolve_layout(kind, expected_count, x.shape[1], config)
    logger.info("training %s for %d videos on %d samples", layout.factory, expected_count, len(x))
    transform = _fit_transform(layout, config, x, tuning_queries)
    return VideoIndex.create_trained(layout, x, config, transform=transform)


def add_shard(
    trained: VideoIndex, embeddings: np.ndarray, ids: np.ndarray | Sequence[int]
) -> VideoIndex:
    """Fills a copy of ``trained`` with one shard of the catalogue (``trained`` is unchanged).

    Args:
        trained: The result of `train_empty` (or a loaded copy of it).
        embeddings: This shard's embeddings ``[n, d] float32``.
        ids: Their video ids ``[n]``; every video belongs to exactly one shard.

    Returns:
        An untuned `VideoIndex` holding the shard.
    """
    shard = trained.empty_like()
    shard.add(embeddings, ids)
    return shard


def merge_shards(shards: Sequence[VideoIndex]) -> VideoIndex:
    """Merges shards built by `add_shard` from the same trained index, in the given order.

    The first shard becomes the merged index and the others are emptied into it (Faiss moves
    inverted lists rather than copying them, so peak memory stays near the merged size). The
    result is untuned: call `VideoIndex.tune` before serving it.

    Raises:
        DataError: No shards, shards of different trained structures, or shared video ids.
    """
    if not shards:
        raise DataError("merge_shards: no shards given")
    merged = shards[0]
    for i, shard in enumerate(shards[1:], start=1):
        logger.info("merging shard %d/%d (%d videos)", i + 1, len(shards), shard.count)
        merged.merge_from(shard)
    return merged


class ShardedIndex:
    """Several indexes over disjoint videos, searched in parallel and merged by score.

    Single-query searches give each shard one OpenMP thread; batch searches split the cores
    between shards. ``add`` routes a video to shard ``id % len(shards)`` after removing any
    older copy from every shard.
    """

    def __init__(self, shards: Sequence[VideoIndex], *, max_workers: int | None = None) -> None:
        """Args:
            shards: Indexes of the same dimension holding disjoint video ids.
            max_workers: Search threads; defaults to one per shard.

        Raises:
            DataError: No shards, different dimensions or shared video ids.
        """
        if not shards:
            raise DataError("ShardedIndex: no shards given")
        dims = {s.dim for s in shards}
        if len(dims) != 1:
            raise DataError(f"ShardedIndex: shards have different dimensions {sorted(dims)}")
        all_ids = np.concatenate([s.ids() for s in shards])
        values, counts = np.unique(all_ids, return_counts=True)
        if (counts > 1).any():
            dupes = values[counts > 1]
            raise DataError(
                f"ShardedIndex: {len(dupes)} video id(s) are in several shards, e.g. "
                f"{dupes[:5].tolist()}"
            )
        self._shards = list(shards)
        self._pool = (
            ThreadPoolExecutor(
                max_workers=max_workers or len(self._shards), thread_name_prefix="vidrec-shard"
            )
            if len(self._shards) > 1
            else None
        )

    @property
    def shards(self) -> list[VideoIndex]:
        """The shards, in order."""
        return list(self._shards)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._shards[0].dim

    @property
    def count(self) -> int:
        """Videos a search can return, over all shards."""
        return sum(s.count for s in self._shards)

    def __len__(self) -> int:
        return self.count

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray | Sequence[int]] | None = None,
        *,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` over all shards; same contract as `VideoIndex.search`.

        Args:
            queries: ``[q, d] float32``.
            k: Results per query.
            exclude: One sequence of ids per query, or ``None``.
            threads: OpenMP threads per shard; by default 1 for a single query and the cores
                divided among the shards for a batch.

        Returns:
            Scores ``[q, k] float32`` and ids ``[q, k] int64`` (``-1`` / ``-inf`` padding last).
        """
        if threads is None:
            if isinstance(queries, np.ndarray) and queries.ndim == 2 and len(queries) == 1:
                threads = self._shards[0].config.single_query_threads
            else:
                total = self._shards[0].config.search_threads or default_threads()
                threads = max(1, total // len(self._shards))
        if self._pool is None:
            return self._shards[0].search(queries, k, exclude, threads=threads)
        futures = [
            self._pool.submit(s.search, queries, k, exclude, threads=threads) for s in self._shards
        ]
        results = [f.result() for f in futures]
        scores = np.concatenate([r[0] for r in results], axis=1)
        ids = np.concatenate([r[1] for r in results], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def add(self, embeddings: np.ndarray, ids: np.ndarray | Sequence[int]) -> int:
        """Adds or replaces videos, each in shard ``id % len(shards)``.

        Returns:
            How many ids were already present somewhere.
        """
        x = _check_vectors(embeddings, "embeddings", self.dim)
        video_ids = _check_ids(ids, len(x), "ids")
        replaced = sum(s.remove(video_ids) for s in self._shards)
        route = video_ids % len(self._shards)
        for i, shard in enumerate(self._shards):
            rows = np.flatnonzero(route == i)
            if len(rows):
                shard.add(x[rows], video_ids[rows])
        return replaced

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Removes videos from whichever shard holds them; returns how many were removed."""
        return sum(s.remove(ids) for s in self._shards)

    def save(self, directory: str | Path) -> Path:
        """Saves shard ``i`` under ``directory/shard-<i>`` (see `VideoIndex.save`)."""
        out = Path(directory)
        for i, shard in enumerate(self._shards):
            shard.save(out / f"shard-{i:03d}")
        return out

    @classmethod
    def load(
        cls, directory: str | Path, *, expected_dim: int | None = None, **kwargs: Any
    ) -> ShardedIndex:
        """Loads the shards `save` wrote (checksums and dimension verified per shard)."""
        src = Path(directory)
        paths = sorted(p for p in src.glob("shard-*") if p.is_dir())
        if not paths:
            raise DataError(f"{src}: no shard-* directories to load")
        return cls([VideoIndex.load(p, expected_dim=expected_dim) for p in paths], **kwargs)

    def close(self) -> None:
        """Stops the search threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
