"""Reading and writing the model parts of a bundle (layout in docs/design.md §6).

::

    vocab/        feature space: vocabularies, catalogue features, normalisation
    retrieval/    towers/ (SavedModel: query + embed_videos signatures),
                  video_embedding_rows.npy [n + 2, d] float32 (rows 0 and 1 zero),
                  video_ids.npy [n] int64
    ranking/      ranker/ (SavedModel: score signature)
    candidates/   item-to-item sources (`candidates.CandidateSources.save`)
    index/        videos.faiss, index_ids.npy, index_report.json, index_meta.json
                  (`index.VideoIndex.save`; written by `pipelines.jobs.build_index`)
    reports/      training reports (JSON) and curves (PNG), index_build.json
    config.json   the resolved configuration

`load_bundle` is the one loader for serving and jobs: it verifies every checksum, loads all
three parts and refuses a bundle whose parts disagree. `load_retrieval` and `load_ranker` load
the halves alone (evaluation, and jobs that build on a bundle that has no index yet).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from candidates import EVIDENCE_WIDTH, SERVING_ORDERS, CandidateSources
from candidates.sources import TWO_STAGE
from core.bundle import Manifest, verify_bundle
from core.config import VidrecConfig, config_from_dict, config_to_dict
from core.errors import BundleError
from core.features import FeatureSpace
from core.io import atomic_save_npy, atomic_write_json, map_npy
from core.training import TrainingHistory
from core.vocab import FIRST_ID_ROW
from index import VideoIndex
from modeling.request_runtime import conversion_process, stored_shape, write_converted
from pipelines import plots
from ranking.encoders import SAVED_MODEL_DIR as RANKER_SAVED_MODEL
from ranking.encoders import RankerScorer
from ranking.request import packed_score_function
from ranking.train import TrainedRanker
from retrieval.encoders import SAVED_MODEL_DIR as RETRIEVAL_SAVED_MODEL
from retrieval.encoders import RetrievalEncoders
from retrieval.request import query_function
from retrieval.train import TrainedRetrieval

logger = logging.getLogger(__name__)

INDEX_DIR = "index"
CANDIDATES_DIR = "candidates"


def write_config(bundle_dir: Path, config: VidrecConfig) -> None:
    """``config.json``: the configuration the bundle was built with."""
    atomic_write_json(bundle_dir / "config.json", config_to_dict(config))


def read_config(bundle_dir: Path) -> VidrecConfig:
    """Reads ``config.json``."""
    import json

    try:
        payload = json.loads((bundle_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise BundleError(f"cannot read {bundle_dir / 'config.json'}: {error}") from error
    return config_from_dict(VidrecConfig, payload)


def write_retrieval(
    bundle_dir: Path,
    trained: TrainedRetrieval,
    progress: bool = False,
    catalogue: np.ndarray | None = None,
) -> None:
    """Writes the feature space, both towers and the catalogue's embeddings.

    Args:
        bundle_dir: The staged bundle directory.
        trained: The trained model.
        progress: Show a progress bar while embedding the catalogue.
        catalogue: ``[num_rows, d] float32`` the trained towers' `catalogue_embeddings`, when
            the caller already has them (they are computed otherwise).
    """
    encoders = trained.encoders()
    trained.features.save(bundle_dir / "vocab")
    retrieval_dir = bundle_dir / "retrieval"
    encoders.save(retrieval_dir)
    if catalogue is None:
        catalogue = encoders.catalogue_embeddings(progress=progress)
    if catalogue.shape != (trained.features.video_vocab.num_rows, encoders.dim):
        raise BundleError(
            f"catalogue embeddings {catalogue.shape} do not cover the "
            f"{trained.features.video_vocab.num_rows} vocabulary rows x {encoders.dim} dims"
        )
    save_embedding_rows(bundle_dir, catalogue)
    atomic_save_npy(retrieval_dir / "video_ids.npy", trained.features.video_vocab.ids)
    _write_training_report(bundle_dir, "retrieval", "two-tower retrieval", trained.history)


def write_ranking(bundle_dir: Path, trained: TrainedRanker) -> None:
    """Writes the ranker and its training report."""
    trained.scorer().save(bundle_dir / "ranking")
    _write_training_report(bundle_dir, "ranking", "multi-head-attention ranker", trained.history)


def write_request_models(bundle_dir: Path, config: VidrecConfig, features: FeatureSpace) -> None:
    """Converts both towers' request functions to LiteRT once, at the shapes a server with
    this ``config`` asks for, and stores them beside their SavedModels, so that no server
    converts at load (`modeling.request_runtime.write_converted`).

    Args:
        bundle_dir: The staged bundle, with ``retrieval/`` and ``ranking/`` written.
        config: The bundle's configuration (shapes: histories, candidates, dimensions).
        features: The feature space the models were trained with.

    Raises:
        BundleError: LiteRT cannot convert a model.
    """
    num_attributes = len(features.user_attributes)
    dim = config.retrieval.embedding_dim
    with conversion_process() as converter:
        write_converted(
            query_function,
            "query",
            bundle_dir / "retrieval" / RETRIEVAL_SAVED_MODEL,
            (features.config.history_length, dim, num_attributes),
            converter,
        )
        write_converted(
            packed_score_function,
            "score",
            bundle_dir / "ranking" / RANKER_SAVED_MODEL,
            (
                config.ranking.history_length,
                config.serving.candidates,
                dim,
                features.config.max_categories,
                num_attributes,
                EVIDENCE_WIDTH,
            ),
            converter,
        )


def write_candidates(bundle_dir: Path, sources: CandidateSources) -> None:
    """Writes the item-to-item candidate sources under ``candidates/``."""
    sources.save(bundle_dir / CANDIDATES_DIR)


def load_candidates(bundle_dir: Path, config: VidrecConfig, num_rows: int) -> CandidateSources:
    """Reads ``candidates/``.

    Raises:
        BundleError: Missing (a bundle from before the sources), unreadable, or counted over
            more videos than the vocabulary has.
    """
    directory = Path(bundle_dir) / CANDIDATES_DIR
    if not directory.is_dir():
        raise BundleError(
            f"bundle {Path(bundle_dir).name} has no {CANDIDATES_DIR}/ (it predates the "
            "item-to-item candidate sources); train a new bundle with `vidrec train`"
        )
    sources = CandidateSources.load(directory, config.candidates)
    if sources.num_rows > num_rows:
        raise BundleError(
            f"bundle {Path(bundle_dir).name}: candidate sources cover {sources.num_rows} video "
            f"rows, the vocabulary only {num_rows}"
        )
    return sources


def serving_order(manifest: Manifest) -> str:
    """The order the stage gate chose for the bundle (`candidates.SERVING_ORDERS`).

    Raises:
        BundleError: The manifest names an order this version does not know.
    """
    order = manifest.metrics.get("stage_gate", {}).get("order", TWO_STAGE)
    if order not in SERVING_ORDERS:
        raise BundleError(
            f"bundle {manifest.bundle_id} serves order {order!r}, unknown to this version "
            f"(known: {', '.join(SERVING_ORDERS)})"
        )
    return order


def _write_training_report(
    bundle_dir: Path, name: str, title: str, history: TrainingHistory
) -> None:
    atomic_write_json(bundle_dir / "reports" / f"{name}_training.json", history.as_dict())
    metric_names = sorted({k for e in history.epochs for k in e.validation if "@" in k})
    plots.training_curves(
        bundle_dir / "reports" / f"{name}_training.png",
        title,
        [e.loss for e in history.epochs],
        {k: [e.validation.get(k, np.nan) for e in history.epochs] for k in metric_names},
        history.best_epoch,
    )


EMBEDDING_ROWS = "retrieval/video_embedding_rows.npy"
# Bundles written before the padded rows were stored hold the videos' rows alone.
_VIDEO_EMBEDDINGS = "retrieval/video_embeddings.npy"


def save_embedding_rows(bundle_dir: Path, rows: np.ndarray) -> None:
    """Writes the catalogue's embeddings by vocabulary row, padding and OOV rows included.

    Stored padded so that a server maps the file as the matrix its request path indexes:
    built from ``[n, d]`` at load, it was a private 256 MB copy per worker at a million videos.

    Args:
        bundle_dir: The bundle being written.
        rows: ``[n + 2, d] float32`` with rows 0 and 1 zero (`catalogue_embeddings`).
    """
    if np.any(rows[:FIRST_ID_ROW]):
        raise BundleError("the padding and OOV rows of the catalogue embeddings must be zero")
    atomic_save_npy(bundle_dir / EMBEDDING_ROWS, rows)


def map_embedding_rows(bundle_dir: Path) -> np.ndarray:
    """A bundle's ``[n + 2, d]`` embeddings by vocabulary row, mapped read-only (a padded
    copy for a bundle from before `save_embedding_rows`).

    Raises:
        OSError, ValueError: The file cannot be read as an array.
    """
    if not (bundle_dir / EMBEDDING_ROWS).exists() and (bundle_dir / _VIDEO_EMBEDDINGS).exists():
        videos = map_npy(bundle_dir / _VIDEO_EMBEDDINGS)
        if videos.ndim != 2:
            return videos  # refused by the caller's shape check
        rows = np.vstack([np.zeros((FIRST_ID_ROW, videos.shape[1]), videos.dtype), videos])
        rows.flags.writeable = False
        return rows
    return map_npy(bundle_dir / EMBEDDING_ROWS)


@dataclasses.dataclass
class RetrievalBundle:
    """The retrieval half of a loaded bundle.

    Attributes:
        manifest: The verified manifest.
        features: Feature space.
        encoders: Loaded towers.
        embedding_rows: ``[n + 2, d] float32`` embeddings by video vocabulary row (rows 0 and 1,
            padding and OOV, zero), mapped from the bundle and read-only.
        video_ids: ``[n] int64``.
    """

    manifest: Manifest
    features: FeatureSpace
    encoders: RetrievalEncoders
    embedding_rows: np.ndarray
    video_ids: np.ndarray

    @property
    def video_embeddings(self) -> np.ndarray:
        """``[n, d] float32`` unit-norm, in video vocabulary row order (a view)."""
        return self.embedding_rows[FIRST_ID_ROW:]

    def catalogue_rows(self) -> np.ndarray:
        """Embeddings by vocabulary row, ``[n + 2, d]`` with zero padding and OOV rows; one
        mapping shared by its readers (the ranker, a server's live catalogue). Read-only."""
        return self.embedding_rows


def load_retrieval(bundle_dir: str | os.PathLike[str]) -> RetrievalBundle:
    """Verifies a bundle and loads its retrieval half.

    Raises:
        BundleError: Checksums fail, or the towers, embeddings, ids, vocabulary and manifest
            disagree on dimension or count.
    """
    bundle_dir = Path(bundle_dir)
    return _load_retrieval(bundle_dir, verify_bundle(bundle_dir))


def _load_retrieval(
    bundle_dir: Path, manifest: Manifest, deferred: bool = False
) -> RetrievalBundle:
    """The retrieval half of a bundle whose manifest was just verified (towers loaded on
    first use with ``deferred``)."""
    features = FeatureSpace.load(bundle_dir / "vocab")
    encoders = RetrievalEncoders.load(bundle_dir / "retrieval", features, deferred=deferred)
    try:
        rows = map_embedding_rows(bundle_dir)
        ids = np.load(bundle_dir / "retrieval" / "video_ids.npy", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise BundleError(
            f"bundle {manifest.bundle_id}: cannot read retrieval/: {error}"
        ) from error
    if rows.ndim != 2 or rows.dtype != np.float32 or len(rows) < FIRST_ID_ROW:
        raise BundleError(
            f"bundle {manifest.bundle_id}: the video embeddings are {rows.dtype} "
            f"{rows.shape}, expected float32 [n + {FIRST_ID_ROW}, d]"
        )
    embeddings = rows[FIRST_ID_ROW:]
    dims = {
        "manifest": manifest.embedding_dim,
        "user tower": encoders.dim,
        "video embeddings": embeddings.shape[1],
    }
    if len(set(dims.values())) != 1:
        raise BundleError(f"bundle {manifest.bundle_id}: embedding dimensions disagree: {dims}")
    if (
        ids.dtype != np.int64
        or len(ids) != len(embeddings)
        or not np.array_equal(ids, features.video_vocab.ids)
    ):
        raise BundleError(
            f"bundle {manifest.bundle_id}: video_ids.npy ({len(ids)} {ids.dtype}) does not match "
            f"the embeddings ({len(embeddings)}) and the vocabulary "
            f"({features.video_vocab.num_ids})"
        )
    logger.info("loaded retrieval of bundle %s (%d videos)", manifest.bundle_id, len(ids))
    return RetrievalBundle(manifest, features, encoders, rows, ids)


def load_ranker(bundle_dir: str | os.PathLike[str], retrieval: RetrievalBundle) -> RankerScorer:
    """Loads the bundle's ranker over the retrieval half's features and embeddings.

    Raises:
        BundleError: The bundle has no ranker, or it does not load.
    """
    bundle_dir = Path(bundle_dir)
    return _load_ranker(bundle_dir, retrieval, read_config(bundle_dir))


def _load_ranker(
    bundle_dir: Path,
    retrieval: RetrievalBundle,
    config: VidrecConfig,
    deferred_evidence_width: int | None = None,
) -> RankerScorer:
    if not (bundle_dir / "ranking").is_dir():
        raise BundleError(f"bundle {retrieval.manifest.bundle_id} has no ranker")
    return RankerScorer.load(
        bundle_dir / "ranking",
        retrieval.features,
        retrieval.catalogue_rows(),
        config.ranking,
        deferred_evidence_width,
    )


def _stored_request_models(bundle_dir: Path) -> tuple[int, ...] | None:
    """The ranker's request shape when the bundle stores both models' LiteRT conversions
    (`write_request_models`), else None."""
    query = stored_shape(bundle_dir / "retrieval" / RETRIEVAL_SAVED_MODEL, "query")
    score = stored_shape(bundle_dir / "ranking" / RANKER_SAVED_MODEL, "score")
    return score if query is not None else None


@dataclasses.dataclass
class LoadedBundle:
    """Everything a server or job needs from one verified bundle.

    Attributes:
        path: The bundle directory.
        manifest: Its verified manifest.
        config: Its ``config.json``.
        retrieval: Feature space, towers, catalogue embeddings and ids.
        ranker: The ranker, or None when loaded with ``ranker=False``.
        index: The candidate index over exactly the catalogue's videos.
        sources: The item-to-item candidate sources.
        order: The order the bundle serves its candidates in (`serving_order`).
    """

    path: Path
    manifest: Manifest
    config: VidrecConfig
    retrieval: RetrievalBundle
    ranker: RankerScorer | None
    index: VideoIndex
    sources: CandidateSources
    order: str

    @property
    def bundle_id(self) -> str:
        """The bundle's id."""
        return self.manifest.bundle_id


def load_bundle(
    bundle_dir: str | os.PathLike[str], *, ranker: bool = True, deferred_models: bool = False
) -> LoadedBundle:
    """Verifies and loads a whole bundle: retrieval, ranker and index.

    Checks, in order: every file against the manifest's sha256; that the manifest's
    ``embedding_dim``, the user tower's output, the video embeddings and the index have one
    dimension; that ``video_ids.npy`` matches the vocabulary; that the index holds exactly the
    catalogue's ids (no missing, no extra videos); and that the index's own checksums hold.

    Args:
        bundle_dir: A committed bundle directory.
        ranker: Also load the ranker (serving needs it; index jobs do not).
        deferred_models: Where the bundle stores both models' LiteRT conversions, leave the
            TensorFlow SavedModels on disk until a function is first called (a LiteRT server
            calls only the video tower, for uploads).

    Returns:
        The loaded bundle.

    Raises:
        BundleError: Naming what is missing, altered or disagrees; the bundle must not be served.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    if not (bundle_dir / INDEX_DIR).is_dir():
        raise BundleError(
            f"bundle {manifest.bundle_id} has no {INDEX_DIR}/; build one with "
            f"`vidrec build-index --bundle {manifest.bundle_id}`"
        )
    config = read_config(bundle_dir)
    stored = _stored_request_models(bundle_dir) if deferred_models else None
    retrieval = _load_retrieval(bundle_dir, manifest, deferred=stored is not None)
    try:
        index = VideoIndex.load(bundle_dir / INDEX_DIR, expected_dim=retrieval.encoders.dim)
    except BundleError as error:
        raise BundleError(f"bundle {manifest.bundle_id}: {error}") from error
    check_index_matches(manifest.bundle_id, index, retrieval)
    sources = load_candidates(bundle_dir, config, retrieval.features.video_vocab.num_rows)
    order = serving_order(manifest)
    # The ranker's evidence width is the last of its request shape.
    evidence_width = None if stored is None else stored[-1]
    scorer = _load_ranker(bundle_dir, retrieval, config, evidence_width) if ranker else None
    logger.info(
        "loaded bundle %s: %d videos, %s index, d=%d%s",
        manifest.bundle_id,
        len(retrieval.video_ids),
        index.kind,
        index.dim,
        ", ranker" if scorer is not None else "",
    )
    return LoadedBundle(bundle_dir, manifest, config, retrieval, scorer, index, sources, order)


def check_index_matches(bundle_id: str, index: VideoIndex, retrieval: RetrievalBundle) -> None:
    """Refuses an index whose dimension or ids differ from the retrieval half's catalogue.

    Raises:
        BundleError: Naming the dimensions, or how many ids are missing from / extra in the index
            (with examples).
    """
    if index.dim != retrieval.video_embeddings.shape[1]:
        raise BundleError(
            f"bundle {bundle_id}: index dimension {index.dim} does not match the embeddings' "
            f"{retrieval.video_embeddings.shape[1]}"
        )
    indexed = np.sort(index.ids())
    catalogue = np.sort(retrieval.video_ids)
    if not np.array_equal(indexed, catalogue):
        missing = np.setdiff1d(catalogue, indexed, assume_unique=True)
        extra = np.setdiff1d(indexed, catalogue, assume_unique=True)
        raise BundleError(
            f"bundle {bundle_id}: the index does not hold exactly the catalogue's videos "
            f"({len(indexed)} indexed, {len(catalogue)} in the catalogue; {len(missing)} missing, "
            f"e.g. {missing[:3].tolist()}; {len(extra)} not in the catalogue, e.g. "
            f"{extra[:3].tolist()}); rebuild it with `vidrec build-index`"
        )
