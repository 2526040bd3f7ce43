"""Reading and writing the model parts of a bundle (layout in DESIGN.md section 4).

::

    vocab/        feature space: vocabularies, catalogue features, normalisation
    retrieval/    towers/ (SavedModel: query + embed_videos signatures),
                  video_embeddings.npy [n, d] float32, video_ids.npy [n] int64
    ranking/      ranker/ (SavedModel: score signature)
    reports/      training reports (JSON) and curves (PNG)
    config.json   the resolved configuration
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from core.bundle import Manifest, verify_bundle
from core.config import VidrecConfig, config_from_dict, config_to_dict
from core.errors import BundleError
from core.features import FeatureSpace
from core.io import atomic_save_npy, atomic_write_json
from core.training import TrainingHistory
from core.vocab import FIRST_ID_ROW
from pipelines import plots
from ranking.encoders import RankerScorer
from ranking.train import TrainedRanker
from retrieval.encoders import RetrievalEncoders
from retrieval.train import TrainedRetrieval

logger = logging.getLogger(__name__)


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


def write_retrieval(bundle_dir: Path, trained: TrainedRetrieval, progress: bool = False) -> None:
    """Writes the feature space, both towers and the catalogue's embeddings.

    Args:
        bundle_dir: The staged bundle directory.
        trained: The trained model.
        progress: Show a progress bar while embedding the catalogue.
    """
    encoders = trained.encoders()
    trained.features.save(bundle_dir / "vocab")
    retrieval_dir = bundle_dir / "retrieval"
    encoders.save(retrieval_dir)
    embeddings = encoders.catalogue_embeddings(progress=progress)[FIRST_ID_ROW:]
    atomic_save_npy(retrieval_dir / "video_embeddings.npy", embeddings)
    atomic_save_npy(retrieval_dir / "video_ids.npy", trained.features.video_vocab.ids)
    _write_training_report(bundle_dir, "retrieval", "two-tower retrieval", trained.history)


def write_ranking(bundle_dir: Path, trained: TrainedRanker) -> None:
    """Writes the ranker and its training report."""
    trained.scorer().save(bundle_dir / "ranking")
    _write_training_report(bundle_dir, "ranking", "multi-head-attention ranker", trained.history)


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


@dataclasses.dataclass
class RetrievalBundle:
    """The retrieval half of a loaded bundle.

    Attributes:
        manifest: The verified manifest.
        features: Feature space.
        encoders: Loaded towers.
        video_embeddings: ``[n, d] float32`` unit-norm, in video vocabulary row order.
        video_ids: ``[n] int64``.
    """

    manifest: Manifest
    features: FeatureSpace
    encoders: RetrievalEncoders
    video_embeddings: np.ndarray
    video_ids: np.ndarray

    def catalogue_rows(self) -> np.ndarray:
        """Embeddings by vocabulary row, ``[n + 2, d]`` with zero padding and OOV rows."""
        dim = self.video_embeddings.shape[1]
        return np.vstack([np.zeros((FIRST_ID_ROW, dim), np.float32), self.video_embeddings])


def load_retrieval(bundle_dir: str | os.PathLike[str]) -> RetrievalBundle:
    """Verifies a bundle and loads its retrieval half.

    Raises:
        BundleError: Checksums fail, or the towers, embeddings, ids, vocabulary and manifest
            disagree on dimension or count.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    features = FeatureSpace.load(bundle_dir / "vocab")
    encoders = RetrievalEncoders.load(bundle_dir / "retrieval", features)
    embeddings = np.load(bundle_dir / "retrieval" / "video_embeddings.npy", allow_pickle=False)
    ids = np.load(bundle_dir / "retrieval" / "video_ids.npy", allow_pickle=False)
    if embeddings.ndim != 2 or embeddings.dtype != np.float32:
        raise BundleError(
            f"bundle {manifest.bundle_id}: video_embeddings.npy is {embeddings.dtype} "
            f"{embeddings.shape}, expected float32 [n, d]"
        )
    dims = {
        "manifest": manifest.embedding_dim,
        "user tower": encoders.dim,
        "video_embeddings.npy": embeddings.shape[1],
    }
    if len(set(dims.values())) != 1:
        raise BundleError(f"bundle {manifest.bundle_id}: embedding dimensions disagree: {dims}")
    if len(ids) != len(embeddings) or not np.array_equal(ids, features.video_vocab.ids):
        raise BundleError(
            f"bundle {manifest.bundle_id}: video_ids.npy ({len(ids)}) does not match the "
            f"embeddings ({len(embeddings)}) and the vocabulary ({features.video_vocab.num_ids})"
        )
    logger.info("loaded retrieval of bundle %s (%d videos)", manifest.bundle_id, len(ids))
    return RetrievalBundle(manifest, features, encoders, embeddings, ids)


def load_ranker(bundle_dir: str | os.PathLike[str], retrieval: RetrievalBundle) -> RankerScorer:
    """Loads the bundle's ranker over the retrieval half's features and embeddings.

    Raises:
        BundleError: The bundle has no ranker, or it does not load.
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "ranking").is_dir():
        raise BundleError(f"bundle {retrieval.manifest.bundle_id} has no ranker")
    config = read_config(bundle_dir)
    return RankerScorer.load(
        bundle_dir / "ranking", retrieval.features, retrieval.catalogue_rows(), config.ranking
    )
