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

Searches may run from several threads at once; ``add``, ``remove`` and operating point changes
take an exclusive lock. Search parameters are passed per call (`faiss.SearchParameters`), never
set on the shared index.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import IndexConfig
from core.errors import DataError, IndexBuildError
from index.arrays import check_exclude, check_ids, check_vectors, chunks
from index.concurrency import ReadWriteLock, default_threads, omp_threads
from index.operating_points import OperatingPoint, check_point, default_point
from index.persistence import (
    fingerprint,
    meta_payload,
    read_index,
    report_payload,
    write_index,
)
from index.query_aware import choose_transform
from index.search import SearchState, prepare_queries, search, search_at
from index.storage import VectorStore
from index.structures import (
    Layout,
    candidate_kinds,
    create_index,
    estimate_memory_mb,
    resolve_layout,
    train_index,
)
from index.tuning import (
    choose_point,
    exact_search,
    first_vectors,
    tuning_queries,
    tuning_report,
)

logger = logging.getLogger(__name__)

_TOMBSTONE_WARN_FRACTION = 0.2


class VideoIndex:
    """Nearest-neighbour index over video embeddings by inner product (cosine when normalised).

    Create one with `build`, or `load` a saved one.

    Example:
        >>> index = VideoIndex.build(embeddings, video_ids, IndexConfig(), tuning_queries=q)
        >>> scores, ids = index.search(user_vectors, k=300, exclude=watched)
        >>> index.save("bundle/index")
    """

    def __init__(
        self,
        store: VectorStore,
        config: IndexConfig,
        *,
        fingerprint: str,
        point: OperatingPoint | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        """Wraps a filled `VectorStore`; use `build` or `load` instead."""
        self._store = store
        self._config = config
        self._fingerprint = fingerprint
        self._tuned = point is not None
        self._report: dict[str, Any] = dict(report or {})
        self._build_info: dict[str, Any] = dict(self._report.get("build", {}))
        self._lock = ReadWriteLock()
        self._state = SearchState.create(store, point or default_point(store.layout, config))

    # ------------------------------------------------------------------ properties

    @property
    def kind(self) -> str:
        """``"flat"``, ``"hnsw"``, ``"hnsw_sq"``, ``"ivf_sq"`` or ``"ivf_hnsw_pq"``."""
        return self._store.layout.kind

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._store.layout.dim

    @property
    def factory(self) -> str:
        """The `faiss.index_factory` string of the structure."""
        return self._store.layout.factory

    @property
    def query_aware(self) -> bool:
        """Whether the graph is built in query-fitted coordinates (`index.query_aware`)."""
        return self._store.transform is not None

    @property
    def layout(self) -> Layout:
        """Resolved structure (kind, factory, nlist, pq_m, refine)."""
        return self._store.layout

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
        return self._store.count

    @property
    def tombstones(self) -> int:
        """Removed videos whose vectors still occupy the structure (HNSW, IVF) until a rebuild."""
        return self._store.tombstones

    @property
    def report(self) -> dict[str, Any]:
        """A copy of what ``index_report.json`` holds (tuning, recall, latency, build)."""
        return json.loads(json.dumps(self._report_payload()))

    def ids(self) -> np.ndarray:
        """Ids of the videos a search can return, ``[count] int64`` (in position order)."""
        with self._lock.reading():
            return self._store.live_ids()

    def contains(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Whether each id is in the index, ``[n] bool``."""
        ids = check_ids(ids, None, "ids", unique=False)
        with self._lock.reading():
            return np.isin(ids, self._store.labels)

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

        With ``config.kind = "auto"`` above ``flat_max_videos`` every fitting kind of
        ``config.candidate_kinds`` is built and tuned and the one with the lowest single-query
        p50 at the recall target is kept (the report's ``build.kind_selection`` lists them all);
        ``tune=False`` builds the first of them only.

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
        x = check_vectors(embeddings, "embeddings")
        video_ids = check_ids(ids, len(x), "ids")
        if len(x) == 0:
            raise DataError("embeddings: the catalogue is empty; there is nothing to index")
        kinds = candidate_kinds(len(x), x.shape[1], config)
        if len(kinds) == 1 or not tune:
            index = cls._build_kind(kinds[0], x, video_ids, config, tuning_queries)
            if tune:
                index.tune(tuning_queries, embeddings=x, ids=video_ids)
            return index
        return cls._build_fastest(kinds, x, video_ids, config, tuning_queries)

    @classmethod
    def _build_fastest(
        cls,
        kinds: list[str],
        x: np.ndarray,
        video_ids: np.ndarray,
        config: IndexConfig,
        tuning_queries: np.ndarray | None,
    ) -> VideoIndex:
        """Builds and tunes each kind, keeps the one with the lowest single-query p50.

        The p50 is the one `tune` measures at each kind's chosen point (one thread, the
        tuning queries), so the kinds are compared as a request uses them. A kind that cannot
        reach the recall target drops out. The best index so far waits on disk (a temporary
        directory) while the next kind builds: holding it in memory made that the build's
        peak (1M videos, `benchmarks/build.py`: 3,149 MiB held, 2,864 MiB parked).

        Raises:
            IndexBuildError: No kind reaches the target (the message has each kind's).
        """
        best: VideoIndex | None = None
        best_p50 = math.inf
        parked = False
        compared: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="vidrec-index-") as parking:
            for position, kind in enumerate(kinds):
                index = cls._try_kind(kind, x, video_ids, config, tuning_queries, compared)
                if index is not None:
                    p50 = index.report["latency"]["single_query"]["p50_ms"]
                    if p50 < best_p50:
                        best, best_p50, parked = index, p50, False
                    del index
                if best is not None and position < len(kinds) - 1:
                    best.save(parking)
                    best, parked = None, True
            if parked:
                best = cls.load(parking)
        if best is None:
            raise IndexBuildError(
                "no index kind of index.candidate_kinds reaches the recall target: "
                + "; ".join(f"{c['kind']}: {c['error']}" for c in compared)
            )
        # Under "build" because index_report.json carries that section whole.
        best._build_info["kind_selection"] = {"by": "single_query_p50_ms", "candidates": compared}
        logger.info(
            "chose the %s index (%s): the fastest of %s at the recall target",
            best.kind,
            best.factory,
            [c["kind"] for c in compared],
        )
        return best

    @classmethod
    def _try_kind(
        cls,
        kind: str,
        x: np.ndarray,
        video_ids: np.ndarray,
        config: IndexConfig,
        tuning_queries: np.ndarray | None,
        compared: list[dict[str, Any]],
    ) -> VideoIndex | None:
        """Builds and tunes one kind for `_build_fastest` and appends its row to ``compared``;
        None when it cannot reach the recall target."""
        try:
            index = cls._build_kind(kind, x, video_ids, config, tuning_queries)
            index.tune(tuning_queries, embeddings=x, ids=video_ids)
        except IndexBuildError as error:
            logger.warning("%s index left out: %s", kind, error)
            compared.append({"kind": kind, "error": str(error)})
            return None
        report = index.report
        single = report["latency"]["single_query"]
        compared.append(
            {
                "kind": kind,
                "factory": index.factory,
                "query_aware": index.query_aware,
                "operating_point": index.operating_point.to_dict(),
                "recall": report["recall"]["at_k"],
                "p50_ms": single["p50_ms"],
                "p99_ms": single["p99_ms"],
                "build_seconds": report["build"].get("build_seconds"),
                "tune_seconds": report["build"].get("tune_seconds"),
            }
        )
        logger.info(
            "%s index: recall@%d %.4f at single-query p50 %.3f ms",
            kind,
            report["recall"]["k"],
            report["recall"]["at_k"],
            single["p50_ms"],
        )
        return index

    @classmethod
    def _build_kind(
        cls,
        kind: str,
        x: np.ndarray,
        video_ids: np.ndarray,
        config: IndexConfig,
        tuning_queries: np.ndarray | None,
    ) -> VideoIndex:
        """Trains and fills one kind of index over checked vectors, untuned."""
        n, d = x.shape
        started = time.perf_counter()
        layout = resolve_layout(kind, n, d, config)
        logger.info(
            "building %s index (%s) over %d videos x %d dims, ~%.0f MiB",
            kind,
            layout.factory,
            n,
            d,
            estimate_memory_mb(kind, n, d, config),
        )
        transform = choose_transform(layout, config, x, tuning_queries)
        stored_dim = layout.dim + 1 if transform is not None else layout.dim
        with omp_threads(config.build_threads):
            structure = create_index(layout, config, dim=stored_dim)
            train_index(
                structure,
                layout,
                x,
                config,
                to_stored=transform.items if transform is not None else None,
            )
            trained_fingerprint = fingerprint(structure, transform)
            trained_at = time.perf_counter()
            store = VectorStore(structure, layout, np.empty(0, dtype=np.int64), transform)
            store.append(x, video_ids, batch=config.add_batch_size, normalize=config.normalize)
        added_at = time.perf_counter()
        build_info = {
            "train_seconds": round(trained_at - started, 3),
            "add_seconds": round(added_at - trained_at, 3),
            "build_seconds": round(added_at - started, 3),
            "threads": config.build_threads or default_threads(),
        }
        logger.info("built %s index of %d videos in %.1f s", kind, n, added_at - started)
        return cls(store, config, fingerprint=trained_fingerprint, report={"build": build_info})

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
        cfg = self._config
        started = time.perf_counter()
        if self.count == 0:
            raise IndexBuildError("cannot tune an empty index; add videos first")
        base: tuple[np.ndarray, np.ndarray] | None = None
        if embeddings is not None:
            x = check_vectors(embeddings, "embeddings", self.dim)
            if ids is None:
                raise DataError("tune: pass ids= together with embeddings=")
            base = (x, check_ids(ids, len(x), "ids"))

        def stand_in() -> np.ndarray:
            if base is not None:
                return base[0]
            with self._lock.reading():
                return first_vectors(
                    self._store.vectors(cfg.add_batch_size), 4 * cfg.tuning_queries
                )

        q, source = tuning_queries(queries, stand_in, cfg, self.dim)
        k = min(cfg.recall_k, self.count)
        with omp_threads(cfg.search_threads), self._lock.reading():
            truth_chunks = (
                chunks(*base, cfg.add_batch_size, normalize=cfg.normalize)
                if base is not None
                else self._store.vectors(cfg.add_batch_size)
            )
            gt_started = time.perf_counter()
            _, truth = exact_search(q, truth_chunks, k)
            gt_seconds = time.perf_counter() - gt_started
        logger.info("exact ground truth for %d queries, k=%d: %.1f s", len(q), k, gt_seconds)

        def measure(point: OperatingPoint) -> tuple[np.ndarray, float]:
            with omp_threads(cfg.search_threads), self._lock.reading():
                return search_at(self._store, self._state, q, k, point)

        chosen, trials = choose_point(self.layout, cfg, k, truth, measure)
        self.set_operating_point(chosen.point)
        self._report = tuning_report(
            q,
            truth,
            k,
            chosen,
            trials,
            self.search,
            cfg,
            source=source,
            ground_truth_seconds=gt_seconds,
            started=started,
        )
        if "build_seconds" in self._build_info:
            tune_seconds = self._report["tuning"]["seconds"]
            self._build_info["tune_seconds"] = tune_seconds
            self._build_info["total_seconds"] = round(
                self._build_info["build_seconds"] + tune_seconds, 3
            )
        return self.report

    def set_operating_point(self, point: OperatingPoint) -> None:
        """Uses ``point`` for all following searches (e.g. an operator's override).

        Raises:
            ConfigError: A parameter of ``point`` does not apply to this kind or is out of range.
        """
        check_point(point, self.layout)
        with self._lock.writing():
            self._state = SearchState.create(self._store, point)
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
        has no more (`index.search`).

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
        cfg = self._config
        q = prepare_queries(
            queries, self.dim, normalize=cfg.normalize, transform=self._store.transform
        )
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise DataError(f"k must be an int >= 1, got {k!r}")
        excluded = check_exclude(exclude, len(q))
        if threads is None:
            threads = cfg.single_query_threads if len(q) == 1 else cfg.search_threads
        with omp_threads(threads), self._lock.reading():
            return search(self._store, self._state, q, int(k), excluded, recall_k=cfg.recall_k)

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
        x = check_vectors(embeddings, "embeddings", self.dim)
        video_ids = check_ids(ids, len(x), "ids")
        if len(x) == 0:
            return 0
        cfg = self._config
        with omp_threads(cfg.build_threads), self._lock.writing():
            old = self._store.positions_of(video_ids)
            if len(old):
                self._store.drop(old)
            self._store.append(x, video_ids, batch=cfg.add_batch_size, normalize=cfg.normalize)
            self._state = SearchState.create(self._store, self._state.point)
        logger.info("added %d videos (%d replaced); %d in the index", len(x), len(old), self.count)
        return len(old)

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Removes videos (takedowns); unknown ids are ignored.

        Returns:
            How many videos were removed.
        """
        video_ids = check_ids(ids, None, "ids", unique=False)
        with omp_threads(self._config.build_threads), self._lock.writing():
            positions = self._store.positions_of(video_ids)
            if len(positions):
                self._store.drop(positions)
                self._state = SearchState.create(self._store, self._state.point)
            stored = len(self._store.labels)
        if len(positions):
            logger.info("removed %d videos; %d in the index", len(positions), self.count)
        if self.tombstones > _TOMBSTONE_WARN_FRACTION * max(stored, 1):
            logger.warning(
                "%d of %d %s positions are tombstones; rebuild the index to compact it",
                self.tombstones,
                stored,
                self.kind,
            )
        return len(positions)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Writes ``videos.faiss``, ``index_ids.npy``, ``index_report.json`` and, last,
        ``index_meta.json`` (holding the checksums) into ``directory``; each file atomically.

        Returns:
            The directory.
        """
        with self._lock.reading():
            labels = self._store.labels.copy()
            meta = meta_payload(
                self._store,
                self._config,
                self._state.point,
                tuned=self._tuned,
                fingerprint=self._fingerprint,
            )
            report = self._report_payload()
            out = write_index(directory, self._store.index, labels, meta, report)
        logger.info("saved %s index of %d videos to %s", self.kind, meta["count"], out)
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
        saved = read_index(directory, expected_dim=expected_dim)
        loaded = cls(
            saved.store,
            saved.config,
            fingerprint=saved.fingerprint,
            point=saved.point,
            report=saved.report,
        )
        logger.info(
            "loaded %s index of %d videos (d=%d) from %s",
            loaded.kind,
            loaded.count,
            loaded.dim,
            directory,
        )
        return loaded

    def _report_payload(self) -> dict[str, Any]:
        return report_payload(
            self._store,
            self._config,
            self._state.point,
            tuned=self._tuned,
            build=self._build_info,
            measured=self._report,
        )
