"""The index build job (docs/design.md §4, §6): catalogue -> video tower -> Faiss -> bundle.

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

The queries it tunes and verifies on are user-tower outputs (`pipelines.jobs.index_queries`);
building, tuning, verifying and writing the index is the stage `vidrec train` shares
(`pipelines.jobs.index_stage`). This module is the job around them: resolving the source
bundle and the configuration, growing the feature space, and carrying the source's files.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import shutil
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow

from core.bundle import BundleStore, Manifest
from core.config import IndexConfig, VidrecConfig, config_from_dict, config_to_dict
from core.errors import BundleError, ConfigError
from core.features import FeatureSpace
from core.io import atomic_save_npy, sha256_file
from core.schema import Dataset
from core.vocab import FIRST_ID_ROW
from pipelines import artifacts, tensorboard
from pipelines.jobs.index_queries import held_out_queries, queries_wanted, recent_histories
from pipelines.jobs.index_stage import (
    BUILD_REPORT,
    INDEX_DIR,
    build_and_verify,
    embed_catalogue,
    write_index,
)
from pipelines.serving.metadata import METADATA_FILE, merge_video_metadata, read_video_metadata

logger = logging.getLogger(__name__)

# Files the job always writes itself instead of carrying them over from the source bundle.
_REWRITTEN = ("config.json", BUILD_REPORT)
_METADATA = f"serving/{METADATA_FILE}"
_TENSORBOARD_INDEX = f"{tensorboard.TENSORBOARD_DIR}/index"
_TENSORBOARD_PROJECTOR = f"{tensorboard.TENSORBOARD_DIR}/{tensorboard.PROJECTOR_RUN}"
# The catalogue's files, left behind when they are rewritten (an older source's unpadded
# embeddings included: a rewrite stores the padded rows).
_CATALOGUE_FILES = (
    artifacts.EMBEDDING_ROWS,
    "retrieval/video_embeddings.npy",
    "retrieval/video_ids.npy",
)


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
    titles: pd.DataFrame | None = None  # the grown catalogue's, for serving/videos.parquet
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
        titles = dataset.videos[["video_id", "title", "categories"]]
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
    # A source from before the padded rows were stored gets them written (`artifacts`).
    rewrite_catalogue = (
        features_changed
        or embeddings_changed
        or not (source_dir / artifacts.EMBEDDING_ROWS).exists()
    )
    seconds["embed"] = time.perf_counter() - started

    started = time.perf_counter()
    query_sets = held_out_queries(
        encoders,
        rows,
        ids,
        config.index,
        (histories, user_ids) if catalogue_record is not None and user_ids is not None else None,
    )
    del encoders, histories, user_ids  # TensorFlow's part is done: free the towers
    release_memory()
    seconds["queries"] = time.perf_counter() - started

    started = time.perf_counter()
    build = build_and_verify(embeddings, ids, config.index, query_sets)
    seconds["index"] = time.perf_counter() - started
    if not rewrite_catalogue:
        del rows, embeddings  # the index holds its own copy; the bundle keeps the source's file
        release_memory()

    # The index run is rewritten; the projector too when the embeddings or the titles change.
    skip: tuple[str, ...] = (INDEX_DIR, *_REWRITTEN, _TENSORBOARD_INDEX)
    if titles is not None:
        skip += (_METADATA,)
    new_projector = titles is not None or features_changed or embeddings_changed
    if new_projector:
        skip += (_TENSORBOARD_PROJECTOR,)
    if features_changed:
        skip += ("vocab",)
    if rewrite_catalogue:
        skip += _CATALOGUE_FILES
    job_seconds = _rounded(seconds)
    started = time.perf_counter()
    with store.stage(parent=manifest.bundle_id) as staged:
        _carry_files(source_dir, manifest, staged.path, skip)
        artifacts.write_config(staged.path, config)
        if titles is not None:
            merge_video_metadata(source_dir / _METADATA, titles, staged.path / _METADATA)
        if features_changed:
            features.save(staged.path / "vocab")
        if rewrite_catalogue:
            artifacts.save_embedding_rows(staged.path, rows)
            atomic_save_npy(staged.path / "retrieval/video_ids.npy", ids)
        write_index(
            staged.path, build, {"source_bundle": manifest.bundle_id, "job_seconds": job_seconds}
        )
        tensorboard.write_index(staged.path, build.summary, build.index.report)
        if new_projector:
            tensorboard.write_projector(
                staged.path,
                # Unchanged embeddings were let go above: the source's file is the same.
                embeddings
                if rewrite_catalogue
                else artifacts.map_embedding_rows(source_dir)[FIRST_ID_ROW:],
                ids,
                read_video_metadata(staged.path / _METADATA),
                seed=config.index.seed,
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
