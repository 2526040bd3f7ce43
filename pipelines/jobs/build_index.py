"""The index build job (DESIGN.md sections 2 and 4): catalogue -> video tower -> Faiss -> bundle.

``vidrec build-index`` takes a bundle (by default the serving one), optionally grows its feature
space with a data set's catalogue (videos uploaded since training), embeds the whole catalogue
with the bundle's video tower, builds a `index.VideoIndex` from ``config.index``, tunes it on
held-out *query* embeddings, verifies recall@K against exact search on other held-out queries,
and writes a new bundle whose parent is the source bundle::

    stage .tmp-<id>/  <- source files (hard-linked), config.json, index/, reports/index_build.json,
                         and, when the catalogue changed, vocab/ + retrieval/video_*.npy
    commit            -> manifest (sha256 of every file, metrics["index"]) and rename into place
    publish           -> CURRENT (unless publish=False)

The index is built and verified before anything is staged, so a build that misses the recall
target raises `IndexBuildError` and leaves no bundle behind and ``CURRENT`` untouched.

Queries. The index serves user-tower outputs, so it is tuned on them:

- with a data set, on the most recent ``features.history_length`` watches of a sample of its
  users (``query_source="user_histories"``);
- inside `pipelines.jobs.train.train_job`, on the validation histories (``"validation_histories"``);
- without data (fallback), on one-watch histories: the user-tower query of a user who has
  watched a single sampled catalogue video (``"one_watch_histories"``). These are real user-tower
  outputs (what a new user gets after a first watch), not video vectors standing in for queries.

The sampled queries are shuffled and split into a tuning set (``index.tuning_queries``) and a
disjoint verification set of up to as many; the build fails when the verification recall is
significantly below ``index.target_recall`` (mean + ``index.recall_confidence_z`` standard
errors below it).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import math
import os
import shutil
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow

from core.bundle import BundleStore, Manifest
from core.config import IndexConfig, VidrecConfig, config_from_dict, config_to_dict
from core.errors import BundleError, ConfigError, IndexBuildError
from core.features import FeatureSpace, VideoFeatureArrays
from core.io import atomic_save_npy, atomic_write_json, sha256_file
from core.schema import Dataset
from core.splits import EvalCases
from core.vocab import FIRST_ID_ROW
from index import VideoIndex, exact_search
from index.tuning import per_query_recall
from pipelines import artifacts
from retrieval.encoders import VIDEO_BATCH, RetrievalEncoders

logger = logging.getLogger(__name__)

INDEX_DIR = artifacts.INDEX_DIR
BUILD_REPORT = "reports/index_build.json"
QUERY_BATCH = 1_024
SOURCE_USER_HISTORIES = "user_histories"
SOURCE_VALIDATION_HISTORIES = "validation_histories"
SOURCE_ONE_WATCH = "one_watch_histories"
# Files the job always writes itself instead of carrying them over from the source bundle.
_REWRITTEN = ("config.json", BUILD_REPORT)
_CATALOGUE_FILES = ("retrieval/video_embeddings.npy", "retrieval/video_ids.npy")


@dataclasses.dataclass(frozen=True)
class QuerySets:
    """Held-out query embeddings for tuning and, disjoint from them, for verification.

    Attributes:
        tuning: ``[q, d] float32`` queries the operating point is tuned on.
        verification: ``[v, d] float32`` other queries the chosen point is checked on.
        source: Where they come from (``"user_histories"``, ``"validation_histories"``,
            ``"one_watch_histories"``).
    """

    tuning: np.ndarray
    verification: np.ndarray
    source: str


@dataclasses.dataclass
class IndexBuild:
    """A built, tuned and verified index with its report.

    Attributes:
        index: The index, ready to search and save.
        summary: What the manifest's ``metrics["index"]`` holds: kind, factory, operating point,
            tuning and verification recall@K against exact search, single-query latency,
            seconds by stage.
    """

    index: VideoIndex
    summary: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class BuildIndexResult:
    """Outcome of `build_index_job`.

    Attributes:
        bundle_id: The new bundle.
        bundle_dir: Its directory.
        parent: The source bundle's id.
        published: Whether ``CURRENT`` now names the new bundle.
        videos: Videos in the catalogue (and in the index).
        added_videos: Videos the data set added to the source's catalogue.
        index: The manifest's ``metrics["index"]``.
        seconds: Wall time by stage.
    """

    bundle_id: str
    bundle_dir: Path
    parent: str
    published: bool
    videos: int
    added_videos: int
    index: dict[str, Any]
    seconds: dict[str, float]


# ---------------------------------------------------------------------------- queries


def query_embeddings(
    encoders: RetrievalEncoders,
    catalogue_rows: np.ndarray,
    histories: list[np.ndarray],
    user_ids: np.ndarray | None = None,
    batch_size: int = QUERY_BATCH,
) -> np.ndarray:
    """User-tower queries of many histories, in batches.

    Args:
        encoders: The bundle's towers (over the feature space the histories are read with).
        catalogue_rows: ``[num_rows, d] float32`` embeddings by video vocabulary row.
        histories: Per user, raw video ids oldest first.
        user_ids: ``[b] int64`` raw user ids, or None for anonymous users.
        batch_size: Users per call of the user tower.

    Returns:
        ``[b, d] float32``.
    """
    out = np.zeros((len(histories), encoders.dim), dtype=np.float32)
    for start in range(0, len(histories), batch_size):
        stop = min(start + batch_size, len(histories))
        users = None if user_ids is None else user_ids[start:stop]
        out[start:stop] = encoders.query_embeddings(catalogue_rows, histories[start:stop], users)
    return out


def recent_histories(
    interactions: pd.DataFrame, features: FeatureSpace, max_users: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """The most recent watches of a random sample of users who watched a known video.

    Args:
        interactions: Validated interactions (sorted by user, then time).
        features: The feature space histories are read with (its ``history_length``).
        max_users: Users to sample at most.
        seed: Seed of the sample.

    Returns:
        Histories (raw video ids, oldest first, at most ``history_length`` each) and their
        ``[u] int64`` user ids.
    """
    users = interactions["user_id"].to_numpy(np.int64)
    videos = interactions["video_id"].to_numpy(np.int64)
    if len(users) == 0:
        return [], np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    stops = np.r_[starts[1:], len(users)]
    known = features.video_vocab.contains(videos)
    has_known = np.add.reduceat(known.astype(np.int64), starts) > 0
    candidates = np.flatnonzero(has_known)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.permutation(candidates)[:max_users])
    length = features.config.history_length
    histories = [videos[max(starts[i], stops[i] - length) : stops[i]].copy() for i in picked]
    return histories, users[starts[picked]]


def one_watch_histories(video_ids: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """Fallback query histories: single watches of distinct sampled catalogue videos.

    Args:
        video_ids: ``[n] int64`` the catalogue.
        count: Histories wanted.
        seed: Seed of the sample.

    Returns:
        ``min(count, n)`` one-video histories (``[1] int64`` each), for anonymous users.
    """
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(video_ids))[:count]
    return [video_ids[i : i + 1] for i in picked]


def validation_queries(
    encoders: RetrievalEncoders,
    catalogue_rows: np.ndarray,
    cases: EvalCases,
    config: IndexConfig,
) -> QuerySets:
    """Tuning and verification queries from a split's validation histories (the training job).

    Args:
        encoders: The trained towers.
        catalogue_rows: ``[num_rows, d] float32`` embeddings by video vocabulary row.
        cases: Validation cases; their histories are the users' training watches.
        config: Index configuration (how many queries, seed).
    """
    sample = np.random.default_rng(config.seed).permutation(len(cases))[: queries_wanted(config)]
    sample = np.sort(sample)
    histories = [cases.history(int(i)) for i in sample]
    queries = query_embeddings(encoders, catalogue_rows, histories, cases.user_ids[sample])
    return split_queries(queries, config, SOURCE_VALIDATION_HISTORIES)


def split_queries(queries: np.ndarray, config: IndexConfig, source: str) -> QuerySets:
    """Shuffles queries and splits them into disjoint tuning and verification sets.

    Tuning gets ``config.tuning_queries`` and verification up to as many; with fewer queries
    than twice that, each gets half.

    Raises:
        IndexBuildError: Fewer than two queries (nothing held out to verify on).
    """
    if len(queries) < 2:
        raise IndexBuildError(
            f"{len(queries)} {source} queries: at least 2 are needed to tune and verify the "
            "index on disjoint queries; give data with more users"
        )
    order = np.random.default_rng(config.seed + 7).permutation(len(queries))
    tuning = min(config.tuning_queries, math.ceil(len(queries) / 2))
    verification = min(config.tuning_queries, len(queries) - tuning)
    return QuerySets(
        tuning=np.ascontiguousarray(queries[order[:tuning]]),
        verification=np.ascontiguousarray(queries[order[tuning : tuning + verification]]),
        source=source,
    )


def queries_wanted(config: IndexConfig) -> int:
    """Queries to compute: a tuning set and a verification set of equal size."""
    return 2 * config.tuning_queries


# ---------------------------------------------------------------------------- index


def verify_recall(
    index: VideoIndex,
    embeddings: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    config: IndexConfig,
) -> dict[str, Any]:
    """Recall@K of ``index.search`` against exact inner-product search, on held-out queries.

    Args:
        index: A built and tuned index over ``embeddings``.
        embeddings: ``[n, d] float32`` the indexed vectors.
        ids: ``[n] int64`` their ids.
        queries: ``[v, d] float32`` queries not used for tuning.
        config: The index configuration (``recall_k``, ``normalize``, ``query_recall_floor``).

    Returns:
        ``queries``, ``k``, ``at_k`` (mean), ``at_k_stderr``, ``failed_queries`` (fraction
        below ``query_recall_floor``), ``at_10`` and ``seconds``.
    """
    started = time.perf_counter()
    k = min(config.recall_k, index.count)
    q = _unit(queries) if config.normalize else queries
    chunk = 200_000
    chunks = (
        (
            _unit(embeddings[s : s + chunk]) if config.normalize else embeddings[s : s + chunk],
            ids[s : s + chunk],
        )
        for s in range(0, len(embeddings), chunk)
    )
    _, truth = exact_search(q, chunks, k)
    _, found = index.search(queries, k)
    recall = per_query_recall(found, truth, k)
    at_10 = None
    if k >= 10:
        at_10 = float(np.mean(per_query_recall(found[:, :10], truth[:, :10], 10)))
    stderr = float(recall.std(ddof=1) / math.sqrt(len(recall))) if len(recall) > 1 else 0.0
    return {
        "queries": len(queries),
        "k": k,
        "at_k": round(float(recall.mean()), 5),
        "at_k_stderr": round(stderr, 5),
        "failed_queries": round(float(np.mean(recall < config.query_recall_floor)), 5),
        "at_10": None if at_10 is None else round(at_10, 5),
        "seconds": round(time.perf_counter() - started, 3),
    }


# Faiss' exact search uses BLAS once nq * d reaches this (see `blas_exact_search`).
BLAS_THRESHOLD = 1_280


@contextlib.contextmanager
def blas_exact_search(threshold: int = BLAS_THRESHOLD) -> Iterator[None]:
    """Lets Faiss' exact search use BLAS for batches of queries while the block runs.

    Faiss 1.15 leaves its per-query SIMD scan for BLAS only when ``nq * d >= 128000`` (a
    crossover measured on many-core machines, facebookresearch/faiss#5022): at d=64 that takes
    2,000 queries. On 2 cores BLAS is ~10x faster for the tuning and verification queries' ground
    truth (1,000 queries x 500k videos x 64 dims: 8.9 s vs 1.0 s, same neighbours); below
    ``threshold`` (single queries) the scan stays. The setting is process-global, so it is
    restored afterwards; a build job runs no searches in other threads meanwhile.
    """
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = min(previous, threshold)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def build_and_verify(
    embeddings: np.ndarray, ids: np.ndarray, config: IndexConfig, queries: QuerySets
) -> IndexBuild:
    """Builds and tunes an index on ``queries.tuning``, then verifies it on the other queries.

    Args:
        embeddings: ``[n, d] float32`` video embeddings (the whole catalogue).
        ids: ``[n] int64`` video ids, row-aligned.
        config: Index configuration.
        queries: Disjoint tuning and verification queries.

    Returns:
        The index and its summary for the manifest.

    Raises:
        IndexBuildError: No operating point reaches ``config.target_recall`` on the tuning
            queries, or the verification recall is significantly below it.
    """
    started = time.perf_counter()
    with blas_exact_search():
        index = VideoIndex.build(embeddings, ids, config, tuning_queries=queries.tuning)
        verification = verify_recall(index, embeddings, ids, queries.verification, config)
    upper = verification["at_k"] + config.recall_confidence_z * verification["at_k_stderr"]
    if upper < config.target_recall:
        raise IndexBuildError(
            f"{index.kind} index ({index.factory}) tuned to {index.operating_point.to_dict()} "
            f"reached recall@{verification['k']} {verification['at_k']:.4f} "
            f"(± {verification['at_k_stderr']:.4f}) on {verification['queries']} held-out "
            f"verification queries, below index.target_recall={config.target_recall}; raise "
            "index.tuning_queries or index.recall_confidence_z, or widen the search parameters"
        )
    logger.info(
        "verified %s index on %d held-out %s queries: recall@%d %.4f (target %.2f)",
        index.kind,
        verification["queries"],
        queries.source,
        verification["k"],
        verification["at_k"],
        config.target_recall,
    )
    report = index.report
    summary = {
        "kind": index.kind,
        "factory": index.factory,
        "dim": index.dim,
        "count": index.count,
        "operating_point": index.operating_point.to_dict(),
        "target_recall": config.target_recall,
        "query_source": queries.source,
        "tuning": {"queries": len(queries.tuning), **report.get("recall", {})},
        "verification": verification,
        "latency_ms": {
            key: report["latency"]["single_query"][f"{key}_ms"] for key in ("p50", "p99")
        },
        "batch_qps": report["latency"]["batch"]["qps"],
        "seconds": {
            "build": report["build"].get("build_seconds"),
            "tune": report["build"].get("tune_seconds"),
            "verify": verification["seconds"],
            "total": round(time.perf_counter() - started, 3),
        },
    }
    return IndexBuild(index, summary)


def write_index(bundle_dir: Path, build: IndexBuild, extra: dict[str, Any] | None = None) -> None:
    """Writes ``index/`` (`VideoIndex.save`) and ``reports/index_build.json`` into a bundle.

    Args:
        bundle_dir: The staged bundle directory.
        build: From `build_and_verify`.
        extra: More to record in the build report (e.g. seconds of the embedding stage).
    """
    build.index.save(bundle_dir / INDEX_DIR)
    atomic_write_json(
        bundle_dir / BUILD_REPORT,
        {**build.summary, **(extra or {}), "index_report": build.index.report},
    )


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


# ---------------------------------------------------------------------------- the job


def embed_catalogue(
    encoders: RetrievalEncoders,
    catalogue: VideoFeatureArrays,
    batch_size: int = VIDEO_BATCH,
    progress: bool = False,
) -> np.ndarray:
    """Embeddings of every video vocabulary row, ``[num_rows, d] float32``; rows 0, 1 zero.

    Args:
        encoders: The towers.
        catalogue: Features of every vocabulary row (``FeatureSpace.catalogue``).
        batch_size: Videos per call of the video tower.
        progress: Show a progress bar.
    """
    out = encoders.embed_features(catalogue, batch_size=batch_size, progress=progress)
    out[:FIRST_ID_ROW] = 0.0
    return out


def resolve_index_config(
    bundle_config: VidrecConfig, override: dict[str, Any] | None
) -> VidrecConfig:
    """The bundle's configuration with its ``index`` section updated from ``override``.

    Args:
        bundle_config: The source bundle's ``config.json``.
        override: A parsed ``--config`` file. Only its ``index`` section applies (the models are
            fixed); values of other sections that differ from the bundle's are ignored with a
            warning.

    Raises:
        ConfigError: Unknown sections or keys, or invalid values.
    """
    if not override:
        return bundle_config
    if not isinstance(override, dict):
        raise ConfigError(f"--config: expected a JSON object, got {type(override).__name__}")
    hints = typing.get_type_hints(VidrecConfig)
    for name, section in override.items():  # unknown sections/keys and bad values fail here
        if name not in hints:
            raise ConfigError(f"--config: unknown section {name!r}; known: {sorted(hints)}")
        config_from_dict(hints[name], section, name)
    bundle = config_to_dict(bundle_config)
    ignored = sorted(
        f"{name}.{key}"
        for name, section in override.items()
        if name != "index"
        for key, value in section.items()
        if _jsonable(value) != _jsonable(bundle[name][key])
    )
    if ignored:
        logger.warning(
            "build-index applies only the index section of --config; ignoring %s (the models "
            "are the bundle's)",
            ignored,
        )
    index = {**bundle["index"], **override.get("index", {})}
    return dataclasses.replace(bundle_config, index=config_from_dict(IndexConfig, index, "index"))


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def _features_changed(old: FeatureSpace, new: FeatureSpace) -> bool:
    if old.video_vocab != new.video_vocab:
        return True
    if old.categories.values != new.categories.values or old.creators.values != new.creators.values:
        return True
    return any(
        not np.array_equal(a, b)
        for a, b in zip(
            old.catalogue.as_dict().values(), new.catalogue.as_dict().values(), strict=True
        )
    )


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + "/") for s in skip)


def _carry_files(
    source: Path, manifest: Manifest, target: Path, skip: tuple[str, ...]
) -> list[str]:
    """Hard-links (or copies) the source bundle's files into ``target``, checking each sha256.

    Bundles are immutable and every write in vidrec replaces a file by renaming a new one over
    it, so a hard link never lets one bundle change another.

    Args:
        source: The verified source bundle.
        manifest: Its manifest.
        target: The staged bundle.
        skip: Relative paths (files or directories) left out.

    Returns:
        The carried relative paths.

    Raises:
        BundleError: A carried file no longer matches the source manifest.
    """
    carried = []
    for name, digest in sorted(manifest.files.items()):
        if _skipped(name, skip):
            continue
        src, dst = source / name, target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        if sha256_file(dst) != digest:
            raise BundleError(
                f"bundle {manifest.bundle_id}: {name} changed while it was carried into a new "
                "bundle; refusing to build on it"
            )
        carried.append(name)
    for directory in sorted(p for p in source.rglob("*") if p.is_dir()):
        relative = directory.relative_to(source).as_posix()
        if not _skipped(relative, skip):  # e.g. a SavedModel's empty assets/
            (target / relative).mkdir(parents=True, exist_ok=True)
    return carried


def resolve_source(store: BundleStore, bundle: str | os.PathLike[str] | None) -> Path:
    """Directory of the source bundle: an id in ``store``, a directory, or ``CURRENT``.

    Raises:
        BundleError: No such bundle, or nothing published yet and no bundle given.
    """
    if bundle is None:
        current = store.current_id()
        if current is None:
            raise BundleError(
                f"no serving bundle under {store.root} (CURRENT is missing): run `vidrec train` "
                "first or pass --bundle"
            )
        return store.path(current)
    text = os.fspath(bundle)
    if Path(text).is_dir():
        return Path(text)
    return store.path(text)


def build_index_job(
    store: BundleStore,
    bundle: str | os.PathLike[str] | None = None,
    dataset: Dataset | None = None,
    config_override: dict[str, Any] | None = None,
    publish: bool = True,
    progress: bool = False,
) -> BuildIndexResult:
    """Builds the index of a bundle's catalogue (grown by ``dataset``'s) into a new bundle.

    Args:
        store: Where the new bundle goes (and whose ``CURRENT`` moves).
        bundle: Source bundle id or directory; default the serving one.
        dataset: Optional data: its catalogue's new videos are added (known videos get their
            metadata refreshed) and its users' recent histories give the tuning queries. The
            job drops its reference once it has those, before embedding; pass the data set
            without keeping another reference to let its memory go (the CLI does).
        config_override: A parsed ``--config``; its ``index`` section overrides the bundle's.
        publish: Move ``CURRENT`` to the new bundle once it is committed.
        progress: Show a progress bar while embedding.

    Returns:
        The new bundle, its index summary and the seconds of every stage.

    Raises:
        BundleError: The source bundle does not load or verify.
        IndexBuildError: The index cannot reach ``index.target_recall``; nothing is written and
            ``CURRENT`` is unchanged.
        DataError: The data set does not fit the bundle.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    source_dir = resolve_source(store, bundle)
    config = resolve_index_config(artifacts.read_config(source_dir), config_override)
    wanted = queries_wanted(config.index)
    # Only what the job needs is kept: at a million videos the data set, the source's feature
    # space and its embeddings are each hundreds of MB that the index build does not use.
    source = artifacts.load_retrieval(source_dir)
    manifest, encoders, features = source.manifest, source.encoders, source.features
    source_ids, source_embeddings = source.video_ids, source.video_embeddings
    del source
    features_changed = False
    catalogue_record: dict[str, Any] | None = None
    histories: list[np.ndarray] = []
    user_ids: np.ndarray | None = None
    if dataset is not None:
        grown = features.grow(videos=dataset.videos)
        features_changed = _features_changed(features, grown)
        features = encoders.features = grown  # the towers now read histories with new uploads
        absent = ~np.isin(source_ids, dataset.videos["video_id"].to_numpy(np.int64))
        if absent.any():
            logger.warning(
                "%d of the bundle's videos are not in %s's catalogue (e.g. %s); they stay in "
                "the index: take videos down with VideoIndex.remove, not by leaving them out",
                int(absent.sum()),
                dataset.name,
                source_ids[absent][:3].tolist(),
            )
        histories, user_ids = recent_histories(
            dataset.interactions, features, wanted, config.index.seed
        )
        catalogue_record = {"name": dataset.name, "videos": features.video_vocab.num_ids}
        del dataset, grown  # a caller that passed its only reference lets the job free it here
    release_memory()
    added = features.video_vocab.num_ids - len(source_ids)
    seconds["load"] = time.perf_counter() - started
    logger.info(
        "building the index of bundle %s: %d videos (%d new)",
        manifest.bundle_id,
        features.video_vocab.num_ids,
        added,
    )

    started = time.perf_counter()
    rows = embed_catalogue(encoders, features.catalogue, progress=progress)
    embeddings, ids = rows[FIRST_ID_ROW:], features.video_vocab.ids
    embeddings_changed = not np.array_equal(embeddings, source_embeddings)
    if embeddings_changed and not features_changed:
        logger.info(
            "the re-embedded catalogue differs from the bundle's by up to %.2g; writing it",
            float(np.abs(embeddings - source_embeddings).max()),
        )
    del source_embeddings
    seconds["embed"] = time.perf_counter() - started

    started = time.perf_counter()
    if catalogue_record is not None:
        query_source = SOURCE_USER_HISTORIES
        queries = query_embeddings(encoders, rows, histories, user_ids)
    else:
        query_source = SOURCE_ONE_WATCH
        queries = query_embeddings(
            encoders, rows, one_watch_histories(ids, wanted, config.index.seed)
        )
    query_sets = split_queries(queries, config.index, query_source)
    del encoders, histories, user_ids  # TensorFlow's part is done: free the towers
    release_memory()
    seconds["queries"] = time.perf_counter() - started

    started = time.perf_counter()
    build = build_and_verify(embeddings, ids, config.index, query_sets)
    seconds["index"] = time.perf_counter() - started
    if not (features_changed or embeddings_changed):
        del rows, embeddings  # the index holds its own copy; the bundle keeps the source's file
        release_memory()

    skip: tuple[str, ...] = (INDEX_DIR, *_REWRITTEN)
    if features_changed:
        skip += ("vocab",)
    if features_changed or embeddings_changed:
        skip += _CATALOGUE_FILES
    job_seconds = _rounded(seconds)
    started = time.perf_counter()
    with store.stage(parent=manifest.bundle_id) as staged:
        _carry_files(source_dir, manifest, staged.path, skip)
        artifacts.write_config(staged.path, config)
        if features_changed:
            features.save(staged.path / "vocab")
        if features_changed or embeddings_changed:
            atomic_save_npy(staged.path / _CATALOGUE_FILES[0], embeddings)
            atomic_save_npy(staged.path / _CATALOGUE_FILES[1], ids)
        write_index(
            staged.path, build, {"source_bundle": manifest.bundle_id, "job_seconds": job_seconds}
        )
        data = dict(manifest.data)
        if catalogue_record is not None:
            data["catalogue"] = {**catalogue_record, "added_videos": added}
        bundle_dir = staged.commit(
            data=data,
            embedding_dim=manifest.embedding_dim,
            counts={**manifest.counts, "videos": len(ids), "indexed_videos": build.index.count},
            metrics={**manifest.metrics, "index": {**build.summary, "job_seconds": job_seconds}},
        )
        bundle_id = staged.bundle_id
    seconds["write"] = time.perf_counter() - started
    if publish:
        store.publish(bundle_id)
    logger.info(
        "bundle %s (parent %s) holds a %s index of %d videos%s",
        bundle_id,
        manifest.bundle_id,
        build.index.kind,
        build.index.count,
        "; published" if publish else "",
    )
    return BuildIndexResult(
        bundle_id=bundle_id,
        bundle_dir=bundle_dir,
        parent=manifest.bundle_id,
        published=publish,
        videos=len(ids),
        added_videos=added,
        index=build.summary,
        seconds=_rounded(seconds),
    )


def release_memory() -> None:
    """Hands memory freed by the job back to the operating system.

    At a million videos the data set, the source bundle's arrays and the towers free hundreds of
    MB between stages, which the allocators would otherwise keep for reuse the Faiss build
    cannot make: pyarrow's pool holds the Parquet read buffers, glibc its heap.
    """
    gc.collect()
    pyarrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in seconds.items()}
