"""Bundles: the unit of deployment (DESIGN.md section 4).

::

    <root>/
      bundles/<UTC time>-<short id>/   manifest.json, config.json, vocab/, retrieval/, ...
      bundles/.tmp-<id>/               a bundle being written (never served, swept later)
      CURRENT                          id of the serving bundle, replaced atomically

A job writes everything into ``.tmp-<id>/``, `StagedBundle.commit` writes the manifest with the
sha256 of every file and renames the directory into place; only then may `BundleStore.publish`
move ``CURRENT``. A crash at any point leaves the serving bundle untouched. Loading verifies every
checksum and refuses a bundle with a missing, extra or altered file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import BundleError
from core.io import atomic_write_json, atomic_write_text, fsync_directory, sha256_file

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
_BUNDLE_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
TRACKED_LIBRARIES: tuple[str, ...] = (
    "vidrec",
    "tensorflow",
    "tf-keras",
    "tensorflow-recommenders",
    "faiss-cpu",
    "numpy",
    "pandas",
)


def new_bundle_id(now: dt.datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-xxxxxx``: sortable by creation time, unique by its random suffix."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a bundle depends on (without importing them)."""
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def data_fingerprint(interactions: pd.DataFrame) -> str:
    """sha256 of the (user, video, timestamp) columns: identifies the data a model saw."""
    digest = hashlib.sha256()
    for column in ("user_id", "video_id", "timestamp"):
        digest.update(np.ascontiguousarray(interactions[column].to_numpy(np.int64)).tobytes())
    return digest.hexdigest()


def _bundle_files(directory: Path) -> dict[str, str]:
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(directory).as_posix()] = sha256_file(path)
    return files


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a bundle holds and where it came from (``manifest.json``)."""

    bundle_id: str
    schema_version: int
    created_at: str
    parent: str | None
    data: dict[str, Any]
    libraries: dict[str, str]
    embedding_dim: int
    counts: dict[str, int]
    metrics: dict[str, Any]
    files: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(payload))
        if missing:
            raise BundleError(f"manifest is missing {missing}")
        return cls(**{k: payload[k] for k in names})


class StagedBundle:
    """A bundle being written in ``bundles/.tmp-<id>/``; see `BundleStore.stage`."""

    def __init__(self, store: BundleStore, bundle_id: str, parent: str | None) -> None:
        self.store = store
        self.bundle_id = bundle_id
        self.parent = parent
        self.path = store.bundles_dir / f".tmp-{bundle_id}"
        self.path.mkdir(parents=True)
        self.committed = False

    def commit(
        self,
        *,
        data: dict[str, Any],
        embedding_dim: int,
        counts: dict[str, int],
        metrics: dict[str, Any] | None = None,
    ) -> Path:
        """Writes the manifest and renames the bundle into place.

        Returns:
            The final bundle directory.
        """
        manifest = Manifest(
            bundle_id=self.bundle_id,
            schema_version=SCHEMA_VERSION,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            parent=self.parent,
            data=data,
            libraries=library_versions(),
            embedding_dim=int(embedding_dim),
            counts={k: int(v) for k, v in counts.items()},
            metrics=metrics or {},
            files=_bundle_files(self.path),
        )
        atomic_write_json(self.path / MANIFEST, manifest.as_dict())
        final = self.store.bundles_dir / self.bundle_id
        os.replace(self.path, final)
        fsync_directory(self.store.bundles_dir)
        self.committed = True
        logger.info("bundle %s written (%d files)", self.bundle_id, len(manifest.files))
        return final

    def discard(self) -> None:
        """Removes the staging directory (a failed job's leftovers)."""
        shutil.rmtree(self.path, ignore_errors=True)


class BundleStore:
    """The bundles under one artifacts root, and which one is serving.

    Args:
        root: Artifacts directory (created on first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.bundles_dir = self.root / "bundles"

    def stage(self, parent: str | None = None) -> _StageContext:
        """Context manager yielding a `StagedBundle`; discarded unless committed.

        Example::

            with store.stage(parent=store.current_id()) as staged:
                write_files(staged.path)
                staged.commit(data=..., embedding_dim=64, counts=...)
        """
        return _StageContext(self, parent)

    def bundle_ids(self) -> list[str]:
        """Committed bundles, oldest first."""
        if not self.bundles_dir.is_dir():
            return []
        return sorted(p.name for p in self.bundles_dir.iterdir() if _BUNDLE_ID.match(p.name))

    def path(self, bundle_id: str) -> Path:
        """Directory of a committed bundle.

        Raises:
            BundleError: Unknown or malformed id.
        """
        if not _BUNDLE_ID.match(bundle_id):
            raise BundleError(
                f"{bundle_id!r} is not a bundle id (expected YYYYMMDDTHHMMSSZ-xxxxxx)"
            )
        path = self.bundles_dir / bundle_id
        if not (path / MANIFEST).is_file():
            known = ", ".join(self.bundle_ids()[-5:]) or "none"
            raise BundleError(f"no bundle {bundle_id} in {self.bundles_dir} (latest: {known})")
        return path

    def current_id(self) -> str | None:
        """Id in ``CURRENT``, or None before the first publish."""
        try:
            text = (self.root / CURRENT).read_text("utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def publish(self, bundle_id: str) -> None:
        """Makes ``bundle_id`` the serving bundle after verifying it; atomic.

        Raises:
            BundleError: The bundle does not verify; ``CURRENT`` is left as it was.
        """
        verify_bundle(self.path(bundle_id))
        atomic_write_text(self.root / CURRENT, bundle_id + "\n")
        logger.info("published bundle %s", bundle_id)

    def sweep_staging(self) -> list[str]:
        """Deletes leftovers of crashed jobs (``.tmp-*``); returns what was removed."""
        if not self.bundles_dir.is_dir():
            return []
        removed = []
        for path in self.bundles_dir.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed


class _StageContext:
    def __init__(self, store: BundleStore, parent: str | None) -> None:
        self.store = store
        self.parent = parent
        self.staged: StagedBundle | None = None

    def __enter__(self) -> StagedBundle:
        self.staged = StagedBundle(self.store, new_bundle_id(), self.parent)
        return self.staged

    def __exit__(self, *exc_info: object) -> None:
        if self.staged is not None and not self.staged.committed:
            self.staged.discard()


def read_manifest(bundle_dir: str | os.PathLike[str]) -> Manifest:
    """Parses ``manifest.json`` without verifying files.

    Raises:
        BundleError: Missing or malformed manifest, or an unsupported schema version.
    """
    path = Path(bundle_dir) / MANIFEST
    try:
        payload = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as error:
        raise BundleError(f"{bundle_dir} has no {MANIFEST}; it is not a complete bundle") from error
    except (OSError, json.JSONDecodeError) as error:
        raise BundleError(f"cannot read {path}: {error}") from error
    manifest = Manifest.from_dict(payload)
    if manifest.schema_version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema version {manifest.schema_version}, this vidrec reads "
            f"{SCHEMA_VERSION}; rebuild the bundle with this version"
        )
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike[str]) -> Manifest:
    """Checks every file against the manifest's sha256.

    Raises:
        BundleError: Naming the first missing, unexpected or altered file.
    """
    directory = Path(bundle_dir)
    manifest = read_manifest(directory)
    actual = _bundle_files(directory)
    missing = sorted(set(manifest.files) - set(actual))
    if missing:
        raise BundleError(f"bundle {manifest.bundle_id} is missing {missing[:3]}")
    extra = sorted(set(actual) - set(manifest.files))
    if extra:
        raise BundleError(f"bundle {manifest.bundle_id} has files not in its manifest: {extra[:3]}")
    for name, digest in manifest.files.items():
        if actual[name] != digest:
            raise BundleError(
                f"bundle {manifest.bundle_id}: {name} does not match its checksum "
                "(altered or truncated); refusing to load it"
            )
    return manifest
