"""The saved form of an index: four files, each written atomically, checked by sha256 on load.

``videos.faiss`` (`faiss.serialize_index`), ``index_ids.npy`` (position -> video id, ``-1`` =
removed) and ``index_report.json`` are written first; ``index_meta.json`` is written last and
holds the format version, the configuration, the layout, the operating point and the size and
sha256 of the other three, plus a sha256 of itself. A directory whose meta file is missing is
therefore not a saved index, and any truncated, altered or mismatched file is refused with a
`BundleError` that says to rebuild or restore, never loaded half-way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from core.config import IndexConfig, config_from_dict, config_to_dict
from core.errors import BundleError, ConfigError
from core.io import atomic_save_npy, atomic_write_json, atomic_write_with, sha256_file
from index.operating_points import OperatingPoint
from index.query_aware import QueryAwareTransform
from index.storage import VectorStore
from index.structures import Layout, estimate_memory_mb, structure_parameters

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "videos.faiss"
IDS_FILE = "index_ids.npy"
META_FILE = "index_meta.json"
REPORT_FILE = "index_report.json"
_HASH_CHUNK = 1 << 24


@dataclasses.dataclass(frozen=True)
class SavedIndex:
    """What `read_index` found in a directory, verified.

    Attributes:
        store: The Faiss structure and its id table.
        config: The configuration the index was built with.
        point: The tuned operating point, or ``None`` if the index was saved untuned.
        report: The contents of ``index_report.json``.
        fingerprint: The stored `fingerprint`.
    """

    store: VectorStore
    config: IndexConfig
    point: OperatingPoint | None
    report: dict[str, Any]
    fingerprint: str


def fingerprint(index: faiss.Index, transform: QueryAwareTransform | None) -> str:
    """sha256 of a trained, still empty structure and its coordinates.

    Nothing in vidrec compares fingerprints any more (sharded merges did), but
    ``index_meta.json`` format 1 has the field and earlier versions of `read_index` require it.
    """
    digest = hashlib.sha256(faiss.serialize_index(index))
    if transform is not None:
        digest.update(transform.digest().encode())
    return digest.hexdigest()


def meta_payload(
    store: VectorStore,
    config: IndexConfig,
    point: OperatingPoint,
    *,
    tuned: bool,
    fingerprint: str,
) -> dict[str, Any]:
    """What ``index_meta.json`` holds besides the file checksums (`write_index` adds those)."""
    layout = store.layout
    return {
        "format_version": FORMAT_VERSION,
        "kind": layout.kind,
        "factory": layout.factory,
        "layout": layout.to_dict(),
        "dim": layout.dim,
        "count": store.count,
        "positions": len(store.labels),
        "tombstones": store.tombstones,
        "tuned": tuned,
        "operating_point": point.to_dict(),
        "fingerprint": fingerprint,
        "config": config_to_dict(config),
        "query_transform": None if store.transform is None else store.transform.to_dict(),
        "faiss_version": faiss.__version__,
    }


def report_payload(
    store: VectorStore,
    config: IndexConfig,
    point: OperatingPoint,
    *,
    tuned: bool,
    build: dict[str, Any],
    measured: dict[str, Any],
) -> dict[str, Any]:
    """What ``index_report.json`` holds: structure, parameters, operating point and build times,
    with the ``tuning``, ``recall`` and ``latency`` sections of ``measured`` where present."""
    layout = store.layout
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": layout.kind,
        "factory": layout.factory,
        "metric": "inner_product",
        "normalized": config.normalize,
        "query_aware": store.transform is not None,
        "dim": layout.dim,
        "count": store.count,
        "tombstones": store.tombstones,
        "parameters": structure_parameters(layout, config),
        "memory_estimate_mb": round(
            estimate_memory_mb(layout.kind, len(store.labels), layout.dim, config), 1
        ),
        "tuned": tuned,
        "operating_point": point.to_dict(),
        "build": dict(build),
        "faiss_version": faiss.__version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    for key in ("tuning", "recall", "latency"):
        if key in measured:
            payload[key] = measured[key]
    return payload


def write_index(
    directory: str | Path,
    index: faiss.Index,
    labels: np.ndarray,
    meta: dict[str, Any],
    report: dict[str, Any],
) -> Path:
    """Writes the four files into ``directory`` (created if needed), the meta file last.

    Args:
        directory: Where to write.
        index: The Faiss structure, streamed to ``videos.faiss`` by ``faiss.write_index``
            (serialized in memory first it added ~0.55 GB to a 1M build's peak).
        labels: The id table ``[positions] int64``.
        meta: From `meta_payload`.
        report: From `report_payload`; ``serialized_bytes`` is added.

    Returns:
        The directory.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_with(out / INDEX_FILE, lambda path: faiss.write_index(index, path))
    files = {
        INDEX_FILE: {
            "sha256": sha256_file(out / INDEX_FILE),
            "bytes": (out / INDEX_FILE).stat().st_size,
        }
    }
    atomic_save_npy(out / IDS_FILE, labels)
    report = {**report, "serialized_bytes": files[INDEX_FILE]["bytes"]}
    atomic_write_json(out / REPORT_FILE, report)
    for name in (IDS_FILE, REPORT_FILE):
        raw = (out / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    meta = {**meta, "files": files}
    meta["meta_sha256"] = _meta_digest(meta)
    atomic_write_json(out / META_FILE, meta)
    return out


def read_index(directory: str | Path, *, expected_dim: int | None = None) -> SavedIndex:
    """Reads what `write_index` wrote, verifying every checksum and the dimension.

    Arguments and errors are those of `VideoIndex.load`, which this does the work of.
    """
    src = Path(directory)
    meta = _read_meta(src)
    dim = int(meta["dim"])
    if expected_dim is not None and int(expected_dim) != dim:
        raise BundleError(
            f"{src}: index dimension {dim} does not match expected dimension {expected_dim} "
            "(the query embeddings' size); the index and the model come from different builds"
        )
    files = meta["files"]
    _verify_file(src / INDEX_FILE, files[INDEX_FILE])
    try:
        # Mapped, not read: the vectors and the graph stay in the page cache, one copy for
        # every worker of a server; the store copies them before its first change.
        index = faiss.read_index(str(src / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:
        raise BundleError(
            f"{src / INDEX_FILE}: faiss cannot read it ({exc}); rebuild the index"
        ) from exc
    ids_raw = _read_verified(src / IDS_FILE, files[IDS_FILE])
    report_raw = _read_verified(src / REPORT_FILE, files[REPORT_FILE])
    try:
        labels = np.load(io.BytesIO(ids_raw.tobytes()), allow_pickle=False)
        report = json.loads(report_raw.tobytes().decode("utf-8"))
        config = config_from_dict(IndexConfig, meta["config"], "index")
    except (ValueError, ConfigError) as exc:
        raise BundleError(f"{src}: unreadable index metadata ({exc}); rebuild the index") from exc
    layout = Layout(**meta["layout"])
    stored_transform = meta.get("query_transform")
    transform = QueryAwareTransform.from_dict(stored_transform) if stored_transform else None
    if labels.dtype != np.int64 or labels.ndim != 1 or len(labels) != int(meta["positions"]):
        raise BundleError(f"{src / IDS_FILE}: expected {meta['positions']} int64 ids")
    store = VectorStore(index, layout, labels, transform, mapped=True)
    stored_dim = dim + (1 if transform is not None else 0)
    if index.d != stored_dim or not store.holds_positions():
        raise BundleError(
            f"{src}: {INDEX_FILE} (d={index.d}) does not match {META_FILE} (d={stored_dim}, "
            f"{len(labels)} positions); the files come from different builds"
        )
    if store.count != int(meta["count"]):
        raise BundleError(f"{src}: {store.count} live ids, {META_FILE} says {meta['count']}")
    point = OperatingPoint.from_dict(meta["operating_point"]) if meta["tuned"] else None
    return SavedIndex(
        store=store,
        config=config,
        point=point,
        report=report,
        fingerprint=meta["fingerprint"],
    )


def _read_meta(src: Path) -> dict[str, Any]:
    """The meta file of ``src``, after checking its format version and its own digest."""
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
    return meta


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _read_verified(path: Path, expected: dict[str, Any]) -> np.ndarray:
    """The bytes of ``path`` as ``uint8``, after checking size and sha256 against ``expected``."""
    _verify_file(path, expected)
    return np.fromfile(path, dtype=np.uint8)


def _verify_file(path: Path, expected: dict[str, Any]) -> None:
    """Checks the size and sha256 of ``path`` against ``expected``, reading it in chunks."""
    if not path.is_file():
        raise BundleError(f"{path}: missing; the saved index is incomplete")
    size = path.stat().st_size
    if size != int(expected["bytes"]):
        state = "truncated" if size < int(expected["bytes"]) else "has unexpected extra bytes"
        raise BundleError(
            f"{path}: {state} ({size} bytes, expected {expected['bytes']}); "
            "the file is corrupted, rebuild the index or restore the bundle"
        )
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            hasher.update(chunk)
    digest = hasher.hexdigest()
    if digest != expected["sha256"]:
        raise BundleError(
            f"{path}: checksum mismatch (sha256 {digest[:12]}…, "
            f"expected {expected['sha256'][:12]}…); "
            "the file is corrupted, rebuild the index or restore the bundle"
        )
