"""``vidrec export-embeddings``: a bundle's video vectors and held-out user-tower queries in one
``.npz``, the file ``benchmarks/ann.py --embeddings`` reads.

The arrays (all as the index sees them: unit-norm when ``index.normalize``):

- ``embeddings`` ``[n, d] float32``: the bundle's video vectors (``retrieval/video_embeddings.npy``,
  the vectors its index was built from), row-aligned with
- ``ids`` ``[n] int64``: their video ids;
- ``tuning_queries`` ``[q, d] float32`` and ``queries`` ``[v, d] float32``: disjoint held-out
  user-tower queries, the same tuning and verification sets ``vidrec build-index`` would tune and
  verify this bundle's index on (`pipelines.jobs.index_queries.held_out_queries`, seeded by
  ``index.seed``): users' recent histories when a data set is given, else one-watch histories.

Nothing in the bundle store changes; the file is written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np

from core.bundle import BundleStore
from core.errors import DataError
from core.io import atomic_save_npz
from core.schema import Dataset
from core.vocab import FIRST_ID_ROW
from pipelines import artifacts
from pipelines.jobs.index_queries import held_out_queries, queries_wanted, recent_histories

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_embeddings` wrote.

    Attributes:
        path: The ``.npz`` file.
        bundle_id: The bundle exported.
        videos: Rows of ``embeddings``.
        dim: Embedding dimension.
        tuning_queries: Rows of ``tuning_queries``.
        queries: Rows of ``queries``.
        query_source: ``"user_histories"`` or ``"one_watch_histories"``.
        seconds: Wall time.
    """

    path: Path
    bundle_id: str
    videos: int
    dim: int
    tuning_queries: int
    queries: int
    query_source: str
    seconds: float


def check_out_path(out: str | os.PathLike[str]) -> Path:
    """The output path, refused before any work when it cannot be written.

    Raises:
        DataError: The name does not end in ``.npz``, its directory is missing or not writable,
            or the path is a directory.
    """
    path = Path(out)
    if path.suffix != ".npz":
        raise DataError(f"--out {path}: the file name must end in .npz (numpy.load reads it)")
    if path.is_dir():
        raise DataError(f"--out {path}: is a directory; give a file name ending in .npz")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DataError(f"--out {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"--out {path}: directory {parent} is not writable; choose another path")
    return path


def export_embeddings(
    store: BundleStore,
    bundle_id: str,
    out: str | os.PathLike[str],
    dataset: Dataset | None = None,
) -> ExportResult:
    """Writes a bundle's video vectors and held-out queries to ``out`` (see the module doc).

    Args:
        store: The bundle store the bundle is in (read only).
        bundle_id: Id of a committed bundle under ``store``.
        out: The ``.npz`` to write (replaced atomically if it exists).
        dataset: Data whose users' recent histories give the queries; ``None`` uses one-watch
            histories (what ``vidrec build-index`` does without ``--data``).

    Returns:
        What was written.

    Raises:
        BundleError: Unknown bundle id, or the bundle does not verify.
        DataError: ``out`` cannot be written (checked before the bundle is loaded).
    """
    started = time.perf_counter()
    path = check_out_path(out)
    bundle_dir = store.path(bundle_id)
    config = artifacts.read_config(bundle_dir).index
    source = artifacts.load_retrieval(bundle_dir)
    encoders, features = source.encoders, source.features
    embeddings, ids = source.video_embeddings, source.video_ids
    # Embeddings by vocabulary row, rows 0 and 1 (padding, unknown) zero as `embed_catalogue`
    # leaves them: the user tower reads histories through them.
    rows = np.zeros((FIRST_ID_ROW + len(embeddings), embeddings.shape[1]), dtype=np.float32)
    rows[FIRST_ID_ROW:] = embeddings
    histories = None
    if dataset is not None:
        histories = recent_histories(
            dataset.interactions, features, queries_wanted(config), config.seed
        )
    query_sets = held_out_queries(encoders, rows, ids, config, histories)
    arrays = {
        "embeddings": _as_indexed(embeddings, config.normalize),
        "ids": np.ascontiguousarray(ids, dtype=np.int64),
        "tuning_queries": _as_indexed(query_sets.tuning, config.normalize),
        "queries": _as_indexed(query_sets.verification, config.normalize),
    }
    atomic_save_npz(path, arrays)
    seconds = time.perf_counter() - started
    logger.info(
        "exported bundle %s: %d videos x %d, %d + %d %s queries to %s in %.1f s",
        bundle_id,
        len(ids),
        embeddings.shape[1],
        len(query_sets.tuning),
        len(query_sets.verification),
        query_sets.source,
        path,
        seconds,
    )
    return ExportResult(
        path=path,
        bundle_id=bundle_id,
        videos=len(ids),
        dim=int(embeddings.shape[1]),
        tuning_queries=len(query_sets.tuning),
        queries=len(query_sets.verification),
        query_source=query_sets.source,
        seconds=round(seconds, 3),
    )


def _as_indexed(x: np.ndarray, normalize: bool) -> np.ndarray:
    """``[m, d] float32`` as the index stores or searches it: unit rows when ``normalize``."""
    x = np.asarray(x, dtype=np.float32)
    if not normalize:
        return np.ascontiguousarray(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
