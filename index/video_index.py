"""`VideoIndex`: the candidate index over video embeddings (numpy in, numpy out).

Vectors live in a Faiss index at internal *positions* ``0..P-1``; an ``int64`` table maps each
position to its video id (``-1`` once the video is removed). Removal is physical for the exact
index (`faiss.IndexFlat.remove_ids`, then the table is compacted the same way) and a tombstone
for HNSW (a graph cannot delete) and IVF-PQ: Faiss 1.15.1's fast-scan inverted lists do support
``remove_ids``, but a vector added afterwards to a list that had a removal is corrupted and never
found again (``IVF1,PQ8x4fs``: remove every third id, add one vector, search for it -> missing;
the same steps with ``IVF1,PQ8`` find it). A tombstoned position is filtered inside the search by
an `faiss.IDSelectorBitmap`, and every result goes through the id table, so a removed video is
never returned. Re-adding an id replaces its vector (the old position is dropped first). A later
rebuild compacts tombstones.

Searches may run from several threads at once; ``add``, ``remove``, ``merge_from`` and operating
point changes take an exclusive lock. Search parameters are passed per call
(`faiss.SearchParameters`), never set on the shared index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from core.config import IndexConfig, config_from_dict, config_to_dict
from core.errors import BundleError, ConfigError, DataError, IndexBuildError, NotFittedError
from core.io import atomic_save_npy, atomic_write_bytes, atomic_write_json
from index.query_aware import QueryAwareTransform
from index.structures import (
    FLAT,
    HNSW,
    IVF_HNSW_PQ,
    Layout,
    OperatingPoint,
    candidate_ladders,
    choose_kind,
    create_index,
    default_point,
    default_threads,
    escalate,
    estimate_memory_mb,
    ivf_parts,
    omp_threads,
    resolve_layout,
    search_parameters,
)
from index.tuning import (
    Criteria,
    exact_search,
    latency_profile,
    per_query_recall,
    recall_at_k,
    sample_rows,
    walk_ladders,
)

logger = logging.getLogger(__name__)

# Catalogue rows sampled to compare the videos' distribution with the queries'.
_SHIFT_SAMPLE = 100_000

FORMAT_VERSION = 1
INDEX_FILE = "videos.faiss"
IDS_FILE = "index_ids.npy"
META_FILE = "index_meta.json"
REPORT_FILE = "index_report.json"

_MAX_SEARCH_ATTEMPTS = 16
_TOMBSTONE_WARN_FRACTION = 0.2


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclasses.dataclass(frozen=True)
class _SearchState:
    """What a search reads besides the Faiss index; replaced as a whole under the write lock."""

    point: OperatingPoint
    params: Any  # faiss.SearchParameters | None
    selector: Any  # faiss.IDSelector | None, kept alive with its bitmap
    bitmap: np.ndarray | None


class VideoIndex:
    """Nearest-neighbour index over video embeddings by inner product (cosine when normalised).

    Create one with `build` (or, for sharded builds, `index.sharding`), or `load` a saved one.

    Example:
        >>> index = VideoIndex.build(embeddings, video_ids, IndexConfig(), tuning_queries=q)
        >>> scores, ids = index.search(user_vectors, k=300, exclude=watched)
        >>> index.save("bundle/index")
    """

    def __init__(
        self,
        index: faiss.Index,
        layout: Layout,
        config: IndexConfig,
        labels: np.ndarray,
        *,
        fingerprint: str,
        point: OperatingPoint | None = None,
        report: dict[str, Any] | None = None,
        transform: QueryAwareTransform | None = None,
    ) -> None:
        """Wraps an existing Faiss index; use `build`, `load` or `index.sharding` instead."""
        self._index = index
        self._transform = transform
        self._layout = layout
        self._config = config
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)
        self._count = int(np.count_nonzero(self._labels >= 0))
        self._fingerprint = fingerprint
        self._tuned = point is not None
        self._report: dict[str, Any] = dict(report or {})
        self._build_info: dict[str, Any] = dict(self._report.get("build", {}))
        self._lock = _ReadWriteLock()
        self._consumed = False
        self._state = self._make_state(point or default_point(layout, config))

    # ------------------------------------------------------------------ properties

    @property
    def kind(self) -> str:
        """``"flat"``, ``"hnsw"`` or ``"ivf_hnsw_pq"``."""
        return self._layout.kind

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._layout.dim

    @property
    def factory(self) -> str:
        """The `faiss.index_factory` string of the structure."""
        return self._layout.factory

    @property
    def query_aware(self) -> bool:
        """Whether the graph is built in query-fitted coordinates (`index.query_aware`)."""
        return self._transform is not None

    @property
    def layout(self) -> Layout:
        """Resolved structure (kind, factory, nlist, pq_m, refine)."""
        return self._layout

    @property
    def config(self) -> IndexConfig:
        """The configuration the index was built with."""
        return self._config

    @property
    def operating_point(self) -> OperatingPoint:
        """Search parameters in use."""
        return self._state.point

    @property
    def is_tuned(self) -> bool:
        """Whether `tune` (or a load of a tuned index) set the operating point."""
        return self._tuned

    @property
    def count(self) -> int:
        """Videos that a search can return."""
        return self._count

    @property
    def tombstones(self) -> int:
        """Removed videos whose vectors still occupy the structure (HNSW, IVF) until a rebuild."""
        if self.kind == FLAT:
            return 0
        return len(self._labels) - self._count

    @property
    def fingerprint(self) -> str:
        """sha256 of the trained, empty structure: shards with equal fingerprints can merge."""
        return self._fingerprint

    @property
    def report(self) -> dict[str, Any]:
        """A copy of what ``index_report.json`` holds (tuning, recall, latency, build)."""
        return json.loads(json.dumps(self._report_payload()))

    def __len__(self) -> int:
        return self._count

    def ids(self) -> np.ndarray:
        """Ids of the videos a search can return, ``[count] int64`` (in position order)."""
        with self._lock.reading():
            labels = self._labels
            return labels[labels >= 0].copy()

    def contains(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Whether each id is in the index, ``[n] bool``."""
        ids = _check_ids(ids, None, "ids", unique=False)
        with self._lock.reading():
            return np.isin(ids, self._labels)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        ids: np.ndarray | Sequence[int],
        config: IndexConfig | None = None,
        *,
        tuning_queries: np.ndarray | None = None,
        tune: bool = True,
    ) -> VideoIndex:
        """Chooses, trains, fills and (by default) tunes an index.

        Args:
            embeddings: Video embeddings ``[n, d] float32``.
            ids: Video ids ``[n]`` (any integer dtype, non-negative, unique).
            config: Index configuration; defaults to `IndexConfig()`.
            tuning_queries: Held-out query embeddings ``[q, d] float32`` (e.g. user-tower outputs
                of validation users), sampled down to ``config.tuning_queries``. Without them
                catalogue vectors stand in as queries, which is logged as a warning.
            tune: Tune the search parameters to ``config.target_recall`` (see `tune`).

        Returns:
            The index, tuned unless ``tune=False``.

        Raises:
            DataError: Bad embeddings or ids (shape, dtype, NaN, duplicates, zero vectors).
            IndexBuildError: The index cannot fit the memory budget or cannot reach the target.
        """
        config = config if config is not None else IndexConfig()
        x = _check_vectors(embeddings, "embeddings")
        video_ids = _check_ids(ids, len(x), "ids")
        if len(x) == 0:
            raise DataError("embeddings: the catalogue is empty; there is nothing to index")
        n, d = x.shape
        started = time.perf_counter()
        kind = choose_kind(n, d, config)
        layout = resolve_layout(kind, n, d, config)
        logger.info(
            "building %s index (%s) over %d videos x %d dims, ~%.0f MiB",
            kind,
            layout.factory,
            n,
            d,
            estimate_memory_mb(kind, n, d, config),
        )
        transform = _fit_transform(layout, config, x, tuning_queries)
        with omp_threads(config.build_threads):
            index = cls.create_trained(layout, x, config, transform=transform)
            trained_at = time.perf_counter()
            index._append(x, video_ids)
        added_at = time.perf_counter()
        index._build_info = {
            "train_seconds": round(trained_at - started, 3),
            "add_seconds": round(added_at - trained_at, 3),
            "build_seconds": round(added_at - started, 3),
            "threads": config.build_threads or default_threads(),
        }
        logger.info("built %s index of %d videos in %.1f s", kind, n, added_at - started)
        if tune:
            index.tune(tuning_queries, embeddings=x, ids=video_ids)
        return index

    @classmethod
    def create_trained(
        cls,
        layout: Layout,
        sample: np.ndarray,
        config: IndexConfig,
        *,
        transform: QueryAwareTransform | None = None,
    ) -> VideoIndex:
        """An empty index of ``layout``, trained on ``sample`` where the structure needs it.

        Args:
            layout: From `index.structures.resolve_layout`.
            sample: Training vectors ``[m, d] float32`` (IVF-PQ draws at most
                ``nlist * ivf_train_points_per_list`` rows from it; other kinds ignore it).
            config: Index configuration.
            transform: Query-fitted coordinates for an HNSW graph (see `index.query_aware`).

        Raises:
            IndexBuildError: Too few training vectors for the IVF lists.
        """
        x = _check_vectors(sample, "sample", layout.dim)
        index = _create_structure(layout, config, transform)
        if layout.kind == IVF_HNSW_PQ:
            if len(x) < layout.nlist:
                raise IndexBuildError(
                    f"IVF with {layout.nlist} lists needs at least {layout.nlist} training "
                    f"vectors, got {len(x)}; lower index.ivf_nlist "
                    "(0 derives it from the catalogue size)"
                )
            train = sample_rows(x, layout.nlist * config.ivf_train_points_per_list, config.seed)
            train = (
                _normalized(train, "sample") if config.normalize else np.ascontiguousarray(train)
            )
            started = time.perf_counter()
            with omp_threads(config.build_threads):
                index.train(train)
            logger.info(
                "trained %s on %d vectors in %.1f s",
                layout.factory,
                len(train),
                time.perf_counter() - started,
            )
        digest = hashlib.sha256(faiss.serialize_index(index))
        if transform is not None:
            digest.update(transform.digest().encode())
        return cls(
            index,
            layout,
            config,
            np.empty(0, dtype=np.int64),
            fingerprint=digest.hexdigest(),
            transform=transform,
        )

    # ------------------------------------------------------------------ tuning

    def tune(
        self,
        queries: np.ndarray | None = None,
        *,
        embeddings: np.ndarray | None = None,
        ids: np.ndarray | Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Picks the cheapest configured operating point whose recall@K reaches the target.

        Recall is measured against exact inner-product search over the indexed vectors (from
        ``embeddings``/``ids`` when given, else from the index's own float storage). Single-query
        p50/p99 and batch throughput at the chosen point go into the report.

        Args:
            queries: Held-out query embeddings ``[q, d] float32``; ``None`` samples catalogue
                vectors instead (an optimistic stand-in, logged as a warning).
            embeddings: The indexed vectors ``[n, d] float32`` (required for IVF-PQ with an
                SQ or no refine stage, which keeps no exact vectors).
            ids: Their ids ``[n]``, required with ``embeddings``.

        Returns:
            The report (also kept for ``index_report.json``).

        Raises:
            IndexBuildError: No configured point reaches ``config.target_recall``; the message
                names the best recall reached and the fields to change.
        """
        self._ensure_usable()
        cfg = self._config
        started = time.perf_counter()
        if self._count == 0:
            raise IndexBuildError("cannot tune an empty index; add videos first")
        if embeddings is not None:
            base = _check_vectors(embeddings, "embeddings", self.dim)
            if ids is None:
                raise DataError("tune: pass ids= together with embeddings=")
            base_ids = _check_ids(ids, len(base), "ids")
        else:
            base, base_ids = None, None
        if queries is None:
            source = "catalogue_sample"
            logger.warning(
                "tuning without held-out queries: catalogue vectors stand in for them, which "
                "overestimates recall; pass tuning_queries= (e.g. validation user embeddings)"
            )
            pool = base if base is not None else self._stored_vectors(cfg.tuning_queries)
            q = sample_rows(pool, cfg.tuning_queries, cfg.seed + 1)
        else:
            source = "held_out"
            q = sample_rows(
                _check_vectors(queries, "queries", self.dim), cfg.tuning_queries, cfg.seed
            )
        if len(q) == 0:
            raise DataError("queries: no tuning queries given")
        q = _normalized(q, "queries") if cfg.normalize else np.ascontiguousarray(q)
        k = min(cfg.recall_k, self._count)

        with omp_threads(cfg.search_threads), self._lock.reading():
            chunks = self._chunks_of(base, base_ids) if base is not None else self._stored_chunks()
            gt_started = time.perf_counter()
            _, truth = exact_search(q, chunks, k)
            gt_seconds = time.perf_counter() - gt_started
        logger.info("exact ground truth for %d queries, k=%d: %.1f s", len(q), k, gt_seconds)

        def evaluate(point: OperatingPoint) -> tuple[np.ndarray, float]:
            found, seconds = self._timed_raw_search(q, k, point)
            return per_query_recall(found, truth, k), 1e3 * seconds / len(q)

        criteria = Criteria(
            target=cfg.target_recall,
            confidence_z=cfg.recall_confidence_z,
            floor=cfg.query_recall_floor,
            max_failed=cfg.max_failed_queries,
        )
        chosen, trials = walk_ladders(candidate_ladders(self._layout, cfg, k), evaluate, criteria)
        if chosen is None:
            best = max(
                trials, key=lambda t: (t.recall - cfg.recall_confidence_z * t.stderr, -t.failed)
            )
            raise IndexBuildError(
                f"{self.kind} index ({self.factory}) cannot reach recall@{k} >= "
                f"{cfg.target_recall} (index.target_recall, with index.recall_confidence_z="
                f"{cfg.recall_confidence_z:g} standard errors of margin) while at most "
                f"{cfg.max_failed_queries:.1%} of queries stay below recall "
                f"{cfg.query_recall_floor} (index.max_failed_queries): best {best.recall:.4f} "
                f"(± {best.stderr:.4f}, {best.failed:.1%} failed) at {best.point.to_dict()} over "
                f"{len(trials)} tried points; widen "
                f"{_tuning_fields(self.kind, self._layout.refine)} or lower the target"
            )
        self.set_operating_point(chosen.point)
        logger.info(
            "operating point %s: recall@%d %.4f (target %.2f), %.2f%% of queries below %.2f, "
            "%.3f ms/query in batch",
            chosen.point.to_dict(),
            k,
            chosen.recall,
            cfg.target_recall,
            100 * chosen.failed,
            cfg.query_recall_floor,
            chosen.ms_per_query,
        )

        recall_10 = None
        if k >= 10:
            _, top10 = self.search(q, 10)
            recall_10 = recall_at_k(top10, truth, 10)
        single = latency_profile(lambda one: self.search(one, k), q, cfg.latency_queries)
        batch_started = time.perf_counter()
        self.search(q, k)
        batch_seconds = time.perf_counter() - batch_started
        tune_seconds = time.perf_counter() - started
        self._report = {
            "tuning": {
                "target_recall": cfg.target_recall,
                "recall_confidence_z": cfg.recall_confidence_z,
                "query_recall_floor": cfg.query_recall_floor,
                "max_failed_queries": cfg.max_failed_queries,
                "recall_k": k,
                "queries": len(q),
                "query_source": source,
                "ground_truth_seconds": round(gt_seconds, 3),
                "seconds": round(tune_seconds, 3),
                "trials": [t.to_dict() for t in trials],
            },
            "recall": {
                "k": k,
                "at_k": round(chosen.recall, 5),
                "at_k_stderr": round(chosen.stderr, 5),
                "failed_queries": round(chosen.failed, 5),
                "at_10": None if recall_10 is None else round(recall_10, 5),
            },
            "latency": {
                "single_query": {
                    **{key: round(v, 4) for key, v in single.items()},
                    "k": k,
                    "queries": cfg.latency_queries,
                    "threads": cfg.single_query_threads,
                },
                "batch": {
                    "queries": len(q),
                    "k": k,
                    "qps": round(len(q) / batch_seconds, 1),
                    "ms_per_query": round(1e3 * batch_seconds / len(q), 4),
                    "threads": cfg.search_threads or default_threads(),
                },
            },
        }
        if "build_seconds" in self._build_info:
            self._build_info["tune_seconds"] = round(tune_seconds, 3)
            self._build_info["total_seconds"] = round(
                self._build_info["build_seconds"] + tune_seconds, 3
            )
        logger.info(
            "tuned in %.1f s: single query p50 %.3f ms, p99 %.3f ms; batch %.0f queries/s",
            tune_seconds,
            single["p50_ms"],
            single["p99_ms"],
            len(q) / batch_seconds,
        )
        return self.report

    def set_operating_point(self, point: OperatingPoint) -> None:
        """Uses ``point`` for all following searches (e.g. an operator's override).

        Raises:
            ConfigError: A parameter of ``point`` does not apply to this kind or is out of range.
        """
        _check_point(point, self._layout)
        with self._lock.writing():
            self._state = self._make_state(point)
            self._tuned = True

    # ------------------------------------------------------------------ searching

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray | Sequence[int]] | None = None,
        *,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` videos per query, best first, never returning an excluded or removed id.

        Excluded ids are dropped after an over-fetch of ``k + len(exclude[i])`` candidates; rows
        the first pass cannot fill are searched again wider until ``k`` are found or the index
        has no more.

        Args:
            queries: ``[q, d] float32`` (one request: ``[1, d]``).
            k: Results per query, >= 1.
            exclude: ``None`` or one sequence of video ids per query (e.g. already watched).
            threads: OpenMP threads for this call; default ``config.single_query_threads`` for
                one query and ``config.search_threads`` for a batch.

        Returns:
            Scores ``[q, k] float32`` and ids ``[q, k] int64``; slots that cannot be filled
            hold id ``-1`` and score ``-inf``, after all real results.

        Raises:
            DataError: Bad queries (shape, dtype, dimension, NaN, zero vector), k or exclude.
        """
        q = self._prepare_queries(queries)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise DataError(f"k must be an int >= 1, got {k!r}")
        k = int(k)
        excluded = _check_exclude(exclude, len(q))
        if threads is None:
            threads = (
                self._config.single_query_threads if len(q) == 1 else self._config.search_threads
            )
        with omp_threads(threads), self._lock.reading():
            self._ensure_usable()
            return self._search_locked(q, k, excluded)

    def _prepare_queries(self, queries: Any) -> np.ndarray:
        """Validated (and, if configured, unit-norm) ``[q, d] float32`` queries.

        Kept lean: this runs on every request.
        """
        if (
            not isinstance(queries, np.ndarray)
            or queries.ndim != 2
            or queries.dtype != np.float32
            or queries.shape[1] != self.dim
        ):
            _check_vectors(queries, "queries", self.dim)  # raises the precise error
        norms = np.sqrt(np.einsum("ij,ij->i", queries, queries))
        if len(norms) and not (norms.min() > 0 and math.isfinite(norms.sum())):
            _check_vectors(queries, "queries", self.dim)  # NaN / inf rows
            bad = np.flatnonzero(norms <= 0)
            raise DataError(
                f"queries: {len(bad)} zero vector(s) cannot be searched (rows {bad[:5].tolist()})"
            )
        if self._config.normalize:
            queries = queries / norms[:, None]
        if self._transform is not None:
            return self._transform.queries(queries)
        return np.ascontiguousarray(queries)

    def _search_locked(
        self, q: np.ndarray, k: int, excluded: list[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        nq = len(q)
        labels = self._labels
        positions = len(labels)
        if nq == 0 or self._count == 0:
            return (
                np.full((nq, k), -np.inf, dtype=np.float32),
                np.full((nq, k), -1, dtype=np.int64),
            )
        state = self._state
        point, params = state.point, state.params
        extra = max((len(e) for e in excluded), default=0) if excluded else 0
        fetch = min(k + extra, positions)
        if point.k_factor is not None and fetch < self._config.recall_k:
            # The refine stage was tuned to re-rank k_factor * recall_k candidates; re-rank as
            # many for a shorter list so that recall@10 is not worse than the tuned recall@K.
            point = dataclasses.replace(
                point, k_factor=point.k_factor * self._config.recall_k / fetch
            )
            params = search_parameters(self._layout, point, state.selector)
        if fetch == k and not excluded:  # common case: no refill needed unless a slot is empty
            scores, found = self._index.search(q, k, params=params)
            if found.min() >= 0:
                ids = labels[found]
                if ids.min() >= 0:
                    return scores, ids
        if nq == 1 and excluded and fetch >= k:
            # One request (the serving path): filter the over-fetch with a handful of numpy
            # calls; only a list the exclusions leave short goes through the general refill.
            scores, found = self._index.search(q, fetch, params=params)
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
            scores, found = self._index.search(sub, fetch, params=params)
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
            wider = escalate(point, self._layout, positions) if not raw_full.all() else None
            if not grow and wider is None:
                break
            rows = rows[short]
            if grow:
                fetch = min(positions, fetch * 2)
            if wider is not None:
                point = wider
                params = search_parameters(self._layout, point, state.selector)
        return out_scores, out_ids

    def _timed_raw_search(
        self, q: np.ndarray, k: int, point: OperatingPoint
    ) -> tuple[np.ndarray, float]:
        """Ids ``[q, k]`` at ``point`` (no exclusions, no refill) and the wall time in seconds."""
        if self._transform is not None:
            q = self._transform.queries(q)
        with omp_threads(self._config.search_threads), self._lock.reading():
            params = search_parameters(self._layout, point, self._state.selector)
            started = time.perf_counter()
            _, found = self._index.search(q, k, params=params)
            seconds = time.perf_counter() - started
            labels = self._labels
            return np.where(found >= 0, labels[np.maximum(found, 0)], -1), seconds

    # ------------------------------------------------------------------ live changes

    def add(self, embeddings: np.ndarray, ids: np.ndarray | Sequence[int]) -> int:
        """Adds videos (uploads); an id already present has its vector replaced.

        Args:
            embeddings: ``[n, d] float32``.
            ids: ``[n]`` non-negative, unique within the call.

        Returns:
            How many of the ids were already present (updated rather than new).

        Raises:
            DataError: Bad embeddings or ids.
        """
        x = _check_vectors(embeddings, "embeddings", self.dim)
        video_ids = _check_ids(ids, len(x), "ids")
        if len(x) == 0:
            return 0
        with omp_threads(self._config.build_threads), self._lock.writing():
            self._ensure_usable()
            old = np.flatnonzero(np.isin(self._labels, video_ids))
            if len(old):
                self._drop_positions(old)
            self._append(x, video_ids)
            self._state = self._make_state(self._state.point)
        logger.info("added %d videos (%d replaced); %d in the index", len(x), len(old), self._count)
        return len(old)

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Removes videos (takedowns); unknown ids are ignored.

        Returns:
            How many videos were removed.
        """
        video_ids = _check_ids(ids, None, "ids", unique=False)
        with omp_threads(self._config.build_threads), self._lock.writing():
            self._ensure_usable()
            positions = np.flatnonzero(np.isin(self._labels, video_ids))
            if len(positions):
                self._drop_positions(positions)
                self._state = self._make_state(self._state.point)
        if len(positions):
            logger.info("removed %d videos; %d in the index", len(positions), self._count)
        if self.tombstones > _TOMBSTONE_WARN_FRACTION * max(len(self._labels), 1):
            logger.warning(
                "%d of %d %s positions are tombstones; rebuild the index to compact it",
                self.tombstones,
                len(self._labels),
                self.kind,
            )
        return len(positions)

    def _append(self, x: np.ndarray, video_ids: np.ndarray) -> None:
        """Adds vectors at new positions in chunks (caller holds the write lock or owns self)."""
        n = len(x)
        batch = self._config.add_batch_size
        started = time.perf_counter()
        for s in range(0, n, batch):
            chunk = x[s : s + batch]
            chunk = _normalized(chunk, "embeddings") if self._config.normalize else chunk
            if self._transform is not None:
                chunk = self._transform.items(chunk)
            first = len(self._labels)
            self._faiss_add(np.ascontiguousarray(chunk, dtype=np.float32), first)
            self._labels = np.concatenate([self._labels, video_ids[s : s + batch]])
            self._count += len(chunk)
            if n > batch:
                logger.info(
                    "added %d/%d videos to the %s index (%.1f s)",
                    min(s + batch, n),
                    n,
                    self.kind,
                    time.perf_counter() - started,
                )

    def _faiss_add(self, chunk: np.ndarray, first: int) -> None:
        if self.kind in (FLAT, HNSW):
            if self._index.ntotal != first:  # pragma: no cover - invariant
                raise IndexBuildError(
                    f"internal: faiss ntotal {self._index.ntotal} != positions {first}"
                )
            self._index.add(chunk)
            return
        base, refine = ivf_parts(self._index)
        positions = np.arange(first, first + len(chunk), dtype=np.int64)
        base.add_with_ids(chunk, positions)
        if refine is not None:
            refine.add(chunk)
            self._index.ntotal = refine.ntotal

    def _drop_positions(self, positions: np.ndarray) -> None:
        """Removes positions: physically from the exact index (which renumbers), else tombstones."""
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        if self.kind == FLAT:
            removed = self._index.remove_ids(faiss.IDSelectorBatch(positions))
            self._labels = np.delete(self._labels, positions)
        else:
            removed = len(positions)
            self._labels = self._labels.copy()  # searches holding the old table keep it intact
            self._labels[positions] = -1
        if removed != len(positions):  # pragma: no cover - invariant
            raise IndexBuildError(f"internal: removed {removed} of {len(positions)} positions")
        self._count -= len(positions)

    # ------------------------------------------------------------------ shards

    def empty_like(self) -> VideoIndex:
        """An empty index with this one's trained structure (same fingerprint), untuned."""
        with self._lock.reading():
            self._ensure_usable()
            if self._count or len(self._labels):
                index = _create_structure(self._layout, self._config, self._transform)
                if self.kind == IVF_HNSW_PQ:  # copy the trained quantizer and codebooks
                    index = faiss.clone_index(self._index)
                    index.reset()
            else:
                index = faiss.clone_index(self._index)
        return VideoIndex(
            index,
            self._layout,
            self._config,
            np.empty(0, dtype=np.int64),
            fingerprint=self._fingerprint,
            transform=self._transform,
        )

    def merge_from(self, other: VideoIndex) -> None:
        """Moves every video of ``other`` (a shard of the same trained structure) into this index.

        Exact and IVF structures merge their storage directly (Faiss ``merge_from``: inverted
        lists are moved, not re-encoded); an HNSW graph cannot be merged, so ``other``'s vectors
        are inserted here. ``other`` is left empty and unusable. The merged index is untuned:
        call `tune` afterwards.

        Raises:
            DataError: ``other`` has a different structure or shares video ids with this index.
        """
        if other is self:
            raise DataError("merge_from: cannot merge an index into itself")
        if other.fingerprint != self._fingerprint or other.layout != self._layout:
            raise DataError(
                f"merge_from: shards differ ({other.factory}, fingerprint {other.fingerprint[:12]} "
                f"vs {self.factory}, {self._fingerprint[:12]}); add every shard to the same "
                "train_empty() result"
            )
        started = time.perf_counter()
        with omp_threads(self._config.build_threads), self._lock.writing(), other._lock.writing():
            self._ensure_usable()
            other._ensure_usable()
            mine = self._labels[self._labels >= 0]
            theirs = other._labels[other._labels >= 0]
            shared = np.intersect1d(mine, theirs)
            if len(shared):
                raise DataError(
                    f"merge_from: {len(shared)} video id(s) are in both shards, e.g. "
                    f"{shared[:5].tolist()}; give each video to exactly one shard"
                )
            if self.kind == FLAT:
                self._index.merge_from(other._index, 0)
                self._labels = np.concatenate([self._labels, other._labels])
                self._count += other._count
            elif self.kind == IVF_HNSW_PQ:
                base, refine = ivf_parts(self._index)
                other_base, other_refine = ivf_parts(other._index)
                base.merge_from(other_base, len(self._labels))
                if refine is not None:
                    refine.merge_from(other_refine, 0)
                    self._index.ntotal = refine.ntotal
                self._labels = np.concatenate([self._labels, other._labels])
                self._count += other._count
            else:
                for vectors, video_ids in other._stored_chunks():
                    self._append(vectors, video_ids)
            other._mark_consumed()
            other._index.reset()
            self._tuned = False
            self._report = {}
            self._state = self._make_state(default_point(self._layout, self._config))
        logger.info(
            "merged a shard in %.1f s; %d videos in the index",
            time.perf_counter() - started,
            self._count,
        )

    def _make_state(self, point: OperatingPoint) -> _SearchState:
        selector, bitmap = None, None
        if self.kind != FLAT and self._count < len(self._labels):
            bitmap = np.packbits(self._labels >= 0, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        params = search_parameters(self._layout, point, selector)
        return _SearchState(point=point, params=params, selector=selector, bitmap=bitmap)

    # ------------------------------------------------------------------ vectors

    def _chunks_of(
        self, x: np.ndarray, video_ids: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        batch = self._config.add_batch_size
        for s in range(0, len(x), batch):
            chunk = x[s : s + batch]
            chunk = _normalized(chunk, "embeddings") if self._config.normalize else chunk
            yield np.ascontiguousarray(chunk, dtype=np.float32), video_ids[s : s + batch]

    def _exact_storage(self) -> faiss.Index | None:
        if self.kind in (FLAT, HNSW):
            return self._index
        _, refine = ivf_parts(self._index)
        if refine is not None and isinstance(refine, faiss.IndexFlat):
            return refine
        return None

    def _stored_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Live vectors and ids from the index's own float storage (caller holds a lock)."""
        storage = self._exact_storage()
        if storage is None:
            raise IndexBuildError(
                f"a {self.factory} index keeps no exact vectors; "
                "pass embeddings= and ids= to tune()"
            )
        batch = self._config.add_batch_size
        labels = self._labels
        for s in range(0, len(labels), batch):
            m = min(batch, len(labels) - s)
            live = labels[s : s + m] >= 0
            if not live.any():
                continue
            vectors = storage.reconstruct_n(s, m)[live]
            if self._transform is not None:
                vectors = self._transform.restore_items(vectors)
            yield np.ascontiguousarray(vectors), labels[s : s + m][live]

    def _stored_vectors(self, limit: int) -> np.ndarray:
        parts, total = [], 0
        with self._lock.reading():
            for vectors, _ in self._stored_chunks():
                parts.append(vectors)
                total += len(vectors)
                if total >= limit * 4:
                    break
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)

    def live_vectors(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields ``(vectors [m, d] float32, ids [m] int64)`` chunks of the indexed videos.

        Needs exact float storage (flat, HNSW, IVF-PQ with ``refine="flat"``). Holds the read
        lock until the generator is exhausted or closed, so consume it promptly.

        Raises:
            IndexBuildError: The structure keeps only compressed codes.
        """
        with self._lock.reading():
            yield from self._stored_chunks()

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Writes ``videos.faiss``, ``index_ids.npy``, ``index_report.json`` and, last,
        ``index_meta.json`` (holding the checksums) into ``directory``; each file atomically.

        Returns:
            The directory.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with self._lock.reading():
            self._ensure_usable()
            data = faiss.serialize_index(self._index)
            labels = self._labels.copy()
            meta = self._meta_payload()
            report = self._report_payload()
        atomic_write_bytes(out / INDEX_FILE, memoryview(data))
        files = {
            INDEX_FILE: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": int(data.nbytes)}
        }
        del data
        atomic_save_npy(out / IDS_FILE, labels)
        report["serialized_bytes"] = files[INDEX_FILE]["bytes"]
        atomic_write_json(out / REPORT_FILE, report)
        for name in (IDS_FILE, REPORT_FILE):
            raw = (out / name).read_bytes()
            files[name] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
        meta["files"] = files
        meta["meta_sha256"] = _meta_digest(meta)
        atomic_write_json(out / META_FILE, meta)
        logger.info("saved %s index of %d videos to %s", self.kind, self._count, out)
        return out

    @classmethod
    def load(cls, directory: str | Path, *, expected_dim: int | None = None) -> VideoIndex:
        """Loads an index written by `save`, verifying every checksum and the dimension.

        Args:
            directory: The directory given to `save`.
            expected_dim: Dimension the caller's query embeddings have (the user tower's output);
                a different index dimension is refused.

        Raises:
            BundleError: A file is missing, truncated, altered or inconsistent, or the dimension
                differs from ``expected_dim``.
        """
        src = Path(directory)
        meta_path = src / META_FILE
        if not meta_path.is_file():
            raise BundleError(
                f"{meta_path}: missing; {src} is not a saved index "
                f"(expected {META_FILE}, {INDEX_FILE}, {IDS_FILE}, {REPORT_FILE})"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(
                f"{meta_path}: corrupted, not valid JSON ({exc}); rebuild the index"
            ) from exc
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise BundleError(
                f"{meta_path}: index format version {version!r} is not {FORMAT_VERSION}; "
                "rebuild the index with this version of vidrec"
            )
        if meta.get("meta_sha256") != _meta_digest(meta):
            raise BundleError(
                f"{meta_path}: checksum mismatch, the file was altered; rebuild the index"
            )
        dim = int(meta["dim"])
        if expected_dim is not None and int(expected_dim) != dim:
            raise BundleError(
                f"{src}: index dimension {dim} does not match expected dimension {expected_dim} "
                "(the query embeddings' size); the index and the model come from different builds"
            )
        files = meta["files"]
        raw = _read_verified(src / INDEX_FILE, files[INDEX_FILE])
        try:
            index = faiss.deserialize_index(raw)
        except RuntimeError as exc:
            raise BundleError(
                f"{src / INDEX_FILE}: faiss cannot read it ({exc}); rebuild the index"
            ) from exc
        del raw
        ids_raw = _read_verified(src / IDS_FILE, files[IDS_FILE])
        report_raw = _read_verified(src / REPORT_FILE, files[REPORT_FILE])
        try:
            labels = np.load(io.BytesIO(ids_raw.tobytes()), allow_pickle=False)
            report = json.loads(report_raw.tobytes().decode("utf-8"))
            config = config_from_dict(IndexConfig, meta["config"], "index")
        except (ValueError, ConfigError) as exc:
            raise BundleError(
                f"{src}: unreadable index metadata ({exc}); rebuild the index"
            ) from exc
        layout = Layout(**meta["layout"])
        stored_transform = meta.get("query_transform")
        transform = QueryAwareTransform.from_dict(stored_transform) if stored_transform else None
        if labels.dtype != np.int64 or labels.ndim != 1 or len(labels) != int(meta["positions"]):
            raise BundleError(f"{src / IDS_FILE}: expected {meta['positions']} int64 ids")
        stored_dim = dim + (1 if transform is not None else 0)
        if index.d != stored_dim or not _consistent(index, layout, labels):
            raise BundleError(
                f"{src}: {INDEX_FILE} (d={index.d}) does not match {META_FILE} (d={stored_dim}, "
                f"{len(labels)} positions); the files come from different builds"
            )
        point = OperatingPoint.from_dict(meta["operating_point"]) if meta["tuned"] else None
        loaded = cls(
            index,
            layout,
            config,
            labels,
            fingerprint=meta["fingerprint"],
            point=point,
            report=report,
            transform=transform,
        )
        if loaded.count != int(meta["count"]):
            raise BundleError(f"{src}: {loaded.count} live ids, {META_FILE} says {meta['count']}")
        logger.info(
            "loaded %s index of %d videos (d=%d) from %s", layout.kind, loaded.count, dim, src
        )
        return loaded

    def _meta_payload(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "factory": self.factory,
            "layout": self._layout.to_dict(),
            "dim": self.dim,
            "count": self._count,
            "positions": len(self._labels),
            "tombstones": self.tombstones,
            "tuned": self._tuned,
            "operating_point": self._state.point.to_dict(),
            "fingerprint": self._fingerprint,
            "config": config_to_dict(self._config),
            "query_transform": None if self._transform is None else self._transform.to_dict(),
            "faiss_version": faiss.__version__,
        }

    def _report_payload(self) -> dict[str, Any]:
        cfg = self._config
        if self.kind == HNSW:
            parameters: dict[str, Any] = {
                "hnsw_m": cfg.hnsw_m,
                "hnsw_ef_construction": cfg.hnsw_ef_construction,
            }
        elif self.kind == IVF_HNSW_PQ:
            parameters = {
                "nlist": self._layout.nlist,
                "quantizer_hnsw_m": cfg.ivf_quantizer_hnsw_m,
                "pq_m": self._layout.pq_m,
                "pq_nbits": cfg.pq_nbits,
                "refine": self._layout.refine,
            }
        else:
            parameters = {}
        payload: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "factory": self.factory,
            "metric": "inner_product",
            "normalized": cfg.normalize,
            "query_aware": self._transform is not None,
            "dim": self.dim,
            "count": self._count,
            "tombstones": self.tombstones,
            "parameters": parameters,
            "memory_estimate_mb": round(
                estimate_memory_mb(self.kind, len(self._labels), self.dim, cfg), 1
            ),
            "tuned": self._tuned,
            "operating_point": self._state.point.to_dict(),
            "build": dict(self._build_info),
            "faiss_version": faiss.__version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        for key in ("tuning", "recall", "latency"):
            if key in self._report:
                payload[key] = self._report[key]
        return payload

    def _ensure_usable(self) -> None:
        if self._consumed:
            raise NotFittedError(
                "this index was merged into another one by merge_shards and is now empty; "
                "load it again from disk to reuse it"
            )

    def _mark_consumed(self) -> None:
        self._consumed = True
        self._labels = np.empty(0, dtype=np.int64)
        self._count = 0


# ---------------------------------------------------------------------- validation helpers


def _check_vectors(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous ``[n, d] float32`` array, or a `DataError` naming ``name``."""
    if not isinstance(x, np.ndarray):
        raise DataError(f"{name}: expected a numpy array [n, d] float32, got {type(x).__name__}")
    if x.ndim != 2:
        raise DataError(
            f"{name}: expected shape [n, d], got {list(x.shape)} (use x[None, :] for one row)"
        )
    if x.dtype != np.float32:
        raise DataError(f"{name}: expected dtype float32, got {x.dtype} (use .astype(np.float32))")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{name}: dimension {x.shape[1]} does not match the index dimension {dim}")
    if x.shape[1] == 0:
        raise DataError(f"{name}: dimension must be >= 1")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise DataError(
            f"{name}: {len(bad)} row(s) contain NaN or inf (first rows {bad[:5].tolist()})"
        )
    return np.ascontiguousarray(x)


def _check_ids(ids: Any, n: int | None, name: str, *, unique: bool = True) -> np.ndarray:
    """``ids`` as ``[n] int64``: integers, non-negative, unique unless told otherwise."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array of video ids, got shape {list(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name}: expected integer video ids, got dtype {arr.dtype}")
    if n is not None and len(arr) != n:
        raise DataError(f"{name}: {len(arr)} ids for {n} embeddings; they must match row for row")
    if arr.size and arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise DataError(f"{name}: ids must fit in int64")
    out = arr.astype(np.int64, copy=False)
    if out.size and out.min() < 0:
        raise DataError(
            f"{name}: ids must be >= 0 (-1 marks an empty result slot), got {out.min()}"
        )
    if unique and out.size:
        values, counts = np.unique(out, return_counts=True)
        if (counts > 1).any():
            dupes = values[counts > 1]
            raise DataError(f"{name}: {len(dupes)} duplicate id(s), e.g. {dupes[:5].tolist()}")
    return np.ascontiguousarray(out)


def _members(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_set)`` for a sorted ``sorted_set``, a few times faster on
    request-sized inputs (binary search instead of np.isin's sort or table)."""
    position = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[position] == values


def _check_exclude(exclude: Any, nq: int) -> list[np.ndarray] | None:
    if exclude is None:
        return None
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2:
        exclude = list(exclude)
    if not isinstance(exclude, Sequence) or isinstance(exclude, str | bytes):
        raise DataError("exclude: expected one sequence of video ids per query")
    if len(exclude) != nq:
        raise DataError(f"exclude: {len(exclude)} lists for {nq} queries; give one per query")
    out = []
    for i, e in enumerate(exclude):
        arr = np.asarray(e if e is not None else [], dtype=None)
        if arr.size == 0:
            out.append(np.empty(0, dtype=np.int64))
            continue
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"exclude[{i}]: expected a 1-D list of integer video ids")
        out.append(np.sort(arr.astype(np.int64, copy=False)))
    return out if any(len(e) for e in out) else None


def _normalized(x: np.ndarray, name: str) -> np.ndarray:
    """A unit-norm copy of ``x``; zero rows are refused."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    norms = np.einsum("ij,ij->i", out, out)
    if (norms <= 0).any():
        bad = np.flatnonzero(norms <= 0)
        raise DataError(
            f"{name}: {len(bad)} zero vector(s) cannot be normalised (rows {bad[:5].tolist()})"
        )
    faiss.normalize_L2(out)
    return out


def _fit_transform(
    layout: Layout, config: IndexConfig, catalogue: np.ndarray, queries: np.ndarray | None
) -> QueryAwareTransform | None:
    """The query-fitted coordinates of an HNSW build, or ``None`` where they do not help.

    They help only when the queries' distribution is far from the videos' (a trained user
    tower); on queries drawn like the videos they distort a graph that already fits. The shift
    is ``|C_q - C_x|_F / |C_x|_F`` over second moments: about 0.2 for a same-distribution
    sample of 300 queries, 2.5 on the trained 1M-video platform.
    """
    if layout.kind != HNSW or not config.query_aware:
        return None
    if queries is None or len(queries) < layout.dim:
        logger.warning(
            "HNSW graph over the raw vectors: query-aware coordinates need at least %d held-out "
            "queries, got %s",
            layout.dim,
            0 if queries is None else len(queries),
        )
        return None
    q = _check_vectors(queries, "tuning_queries", layout.dim)
    x = sample_rows(catalogue, _SHIFT_SAMPLE, config.seed)
    if config.normalize:
        q, x = _normalized(q, "tuning_queries"), _normalized(x, "embeddings")
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    videos_moment = x64.T @ x64 / len(x64)
    shift = float(
        np.linalg.norm(q64.T @ q64 / len(q64) - videos_moment) / np.linalg.norm(videos_moment)
    )
    if shift < config.query_aware_min_shift:
        logger.info(
            "queries are distributed like the videos (shift %.2f < index.query_aware_min_shift "
            "%.2f): HNSW graph over the raw vectors",
            shift,
            config.query_aware_min_shift,
        )
        return None
    logger.info("queries sit apart from the videos (shift %.2f): query-aware HNSW graph", shift)
    return QueryAwareTransform.fit(q, config.query_aware_shrinkage)


def _create_structure(
    layout: Layout, config: IndexConfig, transform: QueryAwareTransform | None
) -> faiss.Index:
    """An empty Faiss structure; one dimension wider when it stores transformed vectors."""
    if transform is None:
        return create_index(layout, config)
    return create_index(dataclasses.replace(layout, dim=layout.dim + 1), config)


def _check_point(point: OperatingPoint, layout: Layout) -> None:
    if not isinstance(point, OperatingPoint):
        raise ConfigError(
            f"operating point: expected an OperatingPoint, got {type(point).__name__}"
        )
    allowed = {
        FLAT: set(),
        HNSW: {"ef_search"},
        IVF_HNSW_PQ: {"nprobe", "quantizer_ef_search"}
        | ({"k_factor"} if layout.refine != "none" else set()),
    }[layout.kind]
    given = set(point.to_dict())
    if given - allowed:
        raise ConfigError(
            f"operating point: {sorted(given - allowed)} do not apply to a {layout.kind} index "
            f"(allowed: {sorted(allowed)})"
        )
    for name, value in point.to_dict().items():
        if value < 1:
            raise ConfigError(f"operating point: {name} must be >= 1, got {value}")
    if point.nprobe is not None and point.nprobe > layout.nlist:
        raise ConfigError(f"operating point: nprobe {point.nprobe} exceeds nlist {layout.nlist}")


def _tuning_fields(kind: str, refine: str) -> str:
    if kind == HNSW:
        return "index.hnsw_ef_search (or index.hnsw_m)"
    if kind == IVF_HNSW_PQ:
        fields = "index.ivf_nprobe"
        return fields + (
            ", index.refine_k_factor" if refine != "none" else " (or use index.refine)"
        )
    return "the candidates"


def _consistent(index: faiss.Index, layout: Layout, labels: np.ndarray) -> bool:
    """Whether the Faiss structure holds the positions the id table describes."""
    if layout.kind == FLAT:
        return int(index.ntotal) == len(labels) and bool((labels >= 0).all())
    if layout.kind == HNSW:
        return int(index.ntotal) == len(labels)
    base, refine = ivf_parts(index)
    return int(base.ntotal) == len(labels) and (refine is None or int(refine.ntotal) == len(labels))


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _read_verified(path: Path, expected: dict[str, Any]) -> np.ndarray:
    """The bytes of ``path`` as ``uint8``, after checking size and sha256 against ``expected``."""
    if not path.is_file():
        raise BundleError(f"{path}: missing; the saved index is incomplete")
    size = path.stat().st_size
    if size != int(expected["bytes"]):
        state = "truncated" if size < int(expected["bytes"]) else "has unexpected extra bytes"
        raise BundleError(
            f"{path}: {state} ({size} bytes, expected {expected['bytes']}); "
            "the file is corrupted, rebuild the index or restore the bundle"
        )
    raw = np.fromfile(path, dtype=np.uint8)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected["sha256"]:
        raise BundleError(
            f"{path}: checksum mismatch (sha256 {digest[:12]}…, "
            f"expected {expected['sha256'][:12]}…); "
            "the file is corrupted, rebuild the index or restore the bundle"
        )
    return raw
