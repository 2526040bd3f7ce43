"""Bundles: the unit of deployment (docs/design.md §5, layout §6).

::

    <root>/
      bundles/<UTC time>-<short id>/   manifest.json, config.json, vocab/, retrieval/, ...
      bundles/.tmp-<id>/               a bundle being written (never served, swept later)
      bundles/.trash-<id>-<random>/    a bundle being deleted (renamed away first)
      CURRENT                          id of the serving bundle, replaced atomically
      PUBLISHED                        publish history: one JSON line per publish, promote
                                       and rollback, appended
      LOCK                             the job lock (`core.lock`)

A job writes everything into ``.tmp-<id>/``, `StagedBundle.commit` writes the manifest with the
sha256 of every file and renames the directory into place; only then may `BundleStore.publish`
move ``CURRENT``. A crash at any point leaves the serving bundle untouched. Loading verifies every
checksum and refuses a bundle with a missing, extra or altered file, and a directory named like
a bundle id whose manifest names another bundle (a bundle copied under a new name by hand).

Lifecycle. ``PUBLISHED`` is the record of what served when. Replayed, it gives the *serving
stack*: a publish or promote pushes a bundle, a rollback pops the serving one, so the bundle a
rollback returns to is the one that served before the current one, and a second rollback goes
further back (never back and forth). Before the log's first entry, a rollback falls back on the
manifest's parent (the bundle that was serving when the current one was trained), which also
only goes back in time. `BundleStore.apply_retention` keeps the newest N bundles and never
deletes the serving bundle, its parent, the rollback target, or the parent of a bundle a live
job is staging; it deletes by renaming to ``.trash-*`` first, so a reader never sees a
half-deleted bundle under its real name.
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
import socket
import time
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
PUBLISHED = "PUBLISHED"
STAGING_MARKER = ".staging.json"
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
ACTIONS: tuple[str, ...] = ("publish", "promote", "rollback")
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
    def from_dict(cls, payload: Any) -> Manifest:
        """Checks the fields' presence and types (a hand-edited manifest must not surface as
        a KeyError or TypeError far from here).

        Raises:
            BundleError: A missing field, or one of the wrong type.
        """
        if not isinstance(payload, Mapping):
            raise BundleError(f"manifest is a JSON {type(payload).__name__}, not an object")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(payload))
        if missing:
            raise BundleError(f"manifest is missing {missing}")
        for name, (kinds, wanted) in _MANIFEST_TYPES.items():
            value = payload[name]
            # bool is an int to isinstance; never a valid count or version here.
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise BundleError(
                    f"manifest field {name!r} must be {wanted}, got {type(value).__name__} "
                    f"{_short(value)}"
                )
        if not _BUNDLE_ID.match(payload["bundle_id"]):
            raise BundleError(
                f"manifest field 'bundle_id' {_short(payload['bundle_id'])} is not a bundle id "
                "(expected YYYYMMDDTHHMMSSZ-xxxxxx)"
            )
        bad = [name for name, digest in payload["files"].items() if not isinstance(digest, str)]
        if bad:
            raise BundleError(f"manifest field 'files': the sha256 of {bad[:3]} is not a string")
        return cls(**{k: payload[k] for k in names})


# Manifest field -> (accepted types, what the error message calls them).
_MANIFEST_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "bundle_id": (str, "a string"),
    "schema_version": (int, "an integer"),
    "created_at": (str, "a string"),
    "parent": ((str, type(None)), "a string or null"),
    "data": (dict, "an object"),
    "libraries": (dict, "an object"),
    "embedding_dim": (int, "an integer"),
    "counts": (dict, "an object"),
    "metrics": (dict, "an object"),
    "files": (dict, "an object"),
}


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class StagedBundle:
    """A bundle being written in ``bundles/.tmp-<id>/``; see `BundleStore.stage`."""

    def __init__(self, store: BundleStore, bundle_id: str, parent: str | None) -> None:
        self.store = store
        self.bundle_id = bundle_id
        self.parent = parent
        self.path = store.bundles_dir / f"{STAGING_PREFIX}{bundle_id}"
        self.path.mkdir(parents=True)
        # Says which bundle this job stages from (retention keeps it) and since when (a sweep
        # tells a crashed job's leftovers from a live one); removed before the manifest.
        atomic_write_json(
            self.path / STAGING_MARKER,
            {
                "bundle_id": bundle_id,
                "parent": parent,
                "created": time.time(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
            },
        )
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
        (self.path / STAGING_MARKER).unlink(missing_ok=True)
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

    def require_root(self) -> None:
        """Refuses a root that does not exist, for commands that must not create one.

        Raises:
            BundleError: The directory is missing (or is not a directory).
        """
        if self.root.is_dir():
            return
        what = "is not a directory" if self.root.exists() else "does not exist"
        raise BundleError(
            f"artifacts directory {self.root} {what}; run `vidrec train` to create one, or pass "
            "--artifacts with the directory your bundles are in"
        )

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

    def evaluation_path(self, bundle_id: str) -> Path:
        """Where a committed bundle's latest evaluation next to the baselines is kept.

        Outside the bundle, which is immutable once committed: ``vidrec evaluate`` and the demo
        write it, the inspector's bundle page reads it.

        Raises:
            BundleError: Unknown or malformed id.
        """
        self.path(bundle_id)
        return self.root / "reports" / "evaluations" / f"{bundle_id}.json"

    def path(self, bundle_id: str) -> Path:
        """Directory of a committed bundle (its manifest is not read here: `read_manifest`
        and `verify_bundle` also check that it names this id).

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

    def manifest_stamp(self, bundle_id: str) -> tuple[int, int, int] | None:
        """``(inode, mtime ns, size)`` of a bundle's manifest, None when it is missing: tells a
        manifest that changed from the one last read without reading it."""
        try:
            status = (self.bundles_dir / bundle_id / MANIFEST).stat()
        except (OSError, ValueError):  # ValueError: a NUL byte in a hand-written id
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size

    def current_id(self) -> str | None:
        """Id in ``CURRENT``, or None before the first publish.

        Raises:
            BundleError: ``CURRENT`` exists but cannot be read as text.
        """
        path = self.root / CURRENT
        try:
            text = path.read_text("utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
            raise BundleError(
                f"cannot read {path}: {error}; it must hold the id of the serving bundle: write "
                f"one by hand (the bundles are the directories in {self.bundles_dir})"
            ) from error
        return text or None

    def publish(self, bundle_id: str, *, action: str = "publish", reason: str = "") -> None:
        """Makes ``bundle_id`` the serving bundle after verifying it; atomic.

        ``CURRENT`` is replaced first, then the event is appended to ``PUBLISHED``; a crash in
        between leaves a log that misses the newest entry, which `serving_stack` repairs by
        taking ``CURRENT`` as the top.

        Args:
            bundle_id: The bundle to serve.
            action: ``"publish"`` (a job), ``"promote"`` or ``"rollback"`` (an operator), as
                recorded in ``PUBLISHED``.
            reason: Free text recorded with the event.

        Raises:
            BundleError: The bundle does not verify; ``CURRENT`` is left as it was.
        """
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        verify_bundle(self.path(bundle_id))
        previous = self.current_id()
        atomic_write_text(self.root / CURRENT, bundle_id + "\n")
        self._append_event(
            PublishEvent(
                time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                action=action,
                bundle_id=bundle_id,
                previous=previous,
                pid=os.getpid(),
                host=socket.gethostname(),
                reason=reason,
            )
        )
        logger.info("%s: bundle %s now serving (was %s)", action, bundle_id, previous)

    # -- lifecycle -----------------------------------------------------------------------

    def history(self) -> list[PublishEvent]:
        """Events of ``PUBLISHED``, oldest first; unreadable lines are skipped with a warning.

        Raises:
            BundleError: The file cannot be read, or holds bytes that are not UTF-8.
        """
        path = self.root / PUBLISHED
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise BundleError(f"cannot read {path}: {error}") from error
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            # vidrec writes only ASCII JSON there (a torn append cannot produce such a byte):
            # the file was damaged or edited with another encoding, and skipping a line could
            # point a rollback at the wrong bundle.
            line = raw.count(b"\n", 0, error.start) + 1
            raise BundleError(
                f"{path} line {line} is not UTF-8 text ({error.reason} at byte {error.start}); "
                "vidrec writes only ASCII there, so the file was damaged or edited: fix or "
                "delete that line by hand"
            ) from error
        events = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                events.append(PublishEvent.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as error:
                # A torn last line (crash while appending) or a hand edit: not fatal.
                logger.warning("%s line %d is unreadable, skipped: %s", PUBLISHED, number, error)
        return events

    def serving_stack(self) -> list[str]:
        """Bundles that served, oldest first, the serving one last; what rollback walks back.

        Replays ``PUBLISHED``: publish and promote push, rollback pops. When ``CURRENT`` is not
        the top (a crash between moving ``CURRENT`` and logging it, a hand edit, or bundles
        published before the log existed), ``CURRENT`` is pushed.
        """
        stack: list[str] = []
        for event in self.history():
            if event.action == "rollback":
                if stack:
                    stack.pop()
                if event.bundle_id in stack:
                    del stack[stack.index(event.bundle_id) + 1 :]
                else:
                    stack.append(event.bundle_id)
            elif not stack or stack[-1] != event.bundle_id:
                stack.append(event.bundle_id)
        current = self.current_id()
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)
        return stack

    def previous_id(self) -> str | None:
        """The bundle `rollback` would publish, or None at the start of history.

        That is the bundle that served before the current one according to ``PUBLISHED``;
        before the log's first entry, the current bundle's manifest parent.
        """
        stack = self.serving_stack()
        if len(stack) >= 2:
            return stack[-2]
        if not stack:
            return None
        try:
            return read_manifest(self.bundles_dir / stack[-1]).parent
        except BundleError:
            return None

    def promote(self, bundle_id: str, reason: str = "") -> Manifest:
        """Verifies ``bundle_id`` and makes it the serving bundle (an operator's publish).

        Raises:
            BundleError: Unknown id, the bundle does not verify (``CURRENT`` is kept), or it
                is already serving.
        """
        path = self.path(bundle_id)
        if self.current_id() == bundle_id:
            raise BundleError(f"bundle {bundle_id} is already serving; nothing to promote")
        manifest = verify_bundle(path)
        self.publish(bundle_id, action="promote", reason=reason)
        return manifest

    def rollback(self, reason: str = "") -> tuple[str, str]:
        """Publishes the bundle that served before the current one.

        A second rollback goes one step further back (see `serving_stack`); at the start of
        history it refuses.

        Returns:
            ``(from_id, to_id)``.

        Raises:
            BundleError: Nothing serves, there is nothing to go back to, or the previous bundle
                is gone or does not verify (``CURRENT`` is kept; the message says what to do).
        """
        current = self.current_id()
        if current is None:
            raise BundleError(
                f"nothing is serving under {self.root} (no {CURRENT}); nothing to roll back"
            )
        target = self.previous_id()
        if target is None:
            raise BundleError(
                f"bundle {current} is the start of the publish history ({PUBLISHED}) and has no "
                "parent bundle: nothing to roll back to. To serve another bundle, pick one from "
                "`vidrec bundles list` and run `vidrec bundles promote ID`"
            )
        if not (self.bundles_dir / target / MANIFEST).is_file():
            raise BundleError(
                f"cannot roll back from {current}: the bundle that served before it, {target}, "
                "no longer exists (deleted by hand?). Promote another one from "
                "`vidrec bundles list` with `vidrec bundles promote ID`"
            )
        try:
            self.publish(target, action="rollback", reason=reason)
        except BundleError as error:
            raise BundleError(
                f"cannot roll back from {current} to {target}: {error}. {CURRENT} still names "
                f"{current}; promote another bundle with `vidrec bundles promote ID`"
            ) from error
        return current, target

    def summaries(self) -> list[BundleSummary]:
        """One `BundleSummary` per committed bundle, oldest first (manifests read, not verified)."""
        current = self.current_id()
        previous = self.previous_id()
        out = []
        for bundle_id in self.bundle_ids():
            try:
                manifest = read_manifest(self.bundles_dir / bundle_id)
            except BundleError as error:
                out.append(
                    BundleSummary(
                        bundle_id,
                        "",
                        None,
                        None,
                        None,
                        {},
                        bundle_id == current,
                        bundle_id == previous,
                        str(error),
                    )
                )
                continue
            out.append(
                BundleSummary(
                    bundle_id=bundle_id,
                    created_at=manifest.created_at,
                    parent=manifest.parent,
                    first_timestamp=_int_or_none(manifest.data.get("first_timestamp")),
                    last_timestamp=_int_or_none(
                        manifest.data.get("cutoff", manifest.data.get("last_timestamp"))
                    ),
                    key_metrics=key_metrics(manifest.metrics),
                    serving=bundle_id == current,
                    previous=bundle_id == previous,
                    error="",
                )
            )
        return out

    def protected_ids(self, running_since: float | None = None) -> dict[str, str]:
        """Bundles retention must keep, with the reason.

        The serving bundle, its parent, the rollback target, and the parent of every staging
        directory that belongs to a live job (created at or after ``running_since``, the start
        of the job holding the lock; all of them when None).
        """
        protected: dict[str, str] = {}
        current = self.current_id()
        if current is not None:
            protected[current] = "serving (CURRENT)"
            try:
                parent = read_manifest(self.bundles_dir / current).parent
            except BundleError:
                parent = None
            if parent:
                protected.setdefault(parent, "parent of the serving bundle")
        previous = self.previous_id()
        if previous:
            protected.setdefault(previous, "rollback target")
        for staging in self._staging_dirs():
            parent = _staging_marker(staging).get("parent")
            if parent and (running_since is None or _created(staging) >= running_since):
                protected.setdefault(str(parent), f"a running job stages from it ({staging.name})")
        return protected

    def remove(self, bundle_id: str, running_since: float | None = None) -> None:
        """Deletes one bundle: renamed to ``.trash-*`` (atomic), then removed.

        Raises:
            BundleError: Unknown id, or the bundle is protected (see `protected_ids`).
        """
        path = self.path(bundle_id)
        why = self.protected_ids(running_since).get(bundle_id)
        if why:
            raise BundleError(f"bundle {bundle_id} is protected ({why}); not deleting it")
        self._trash(path)

    def apply_retention(self, keep_last: int, running_since: float | None = None) -> Retention:
        """Keeps the newest ``keep_last`` bundles plus the protected ones; deletes the rest.

        Also sweeps leftovers: ``.tmp-*`` staging directories of crashed jobs, i.e. created
        before ``running_since`` (the start time of the job lock the caller holds; none are
        swept when it is None, since a live job may own them), and ``.trash-*`` directories of
        interrupted deletions.

        Args:
            keep_last: How many of the newest bundles to keep (>= 1).
            running_since: Start time (Unix seconds) of the job lock the caller holds.

        Returns:
            What was deleted and kept, and why.
        """
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        swept = self.sweep_staging(older_than=running_since) if running_since is not None else []
        protected = self.protected_ids(running_since)
        ids = self.bundle_ids()
        newest = set(ids[-keep_last:])
        removed, kept = [], {}
        for bundle_id in ids:
            if bundle_id in newest:
                kept[bundle_id] = f"one of the newest {keep_last}"
            elif bundle_id in protected:
                kept[bundle_id] = protected[bundle_id]
            else:
                self._trash(self.bundles_dir / bundle_id)
                removed.append(bundle_id)
        for bundle_id, why in protected.items():
            if bundle_id not in kept and bundle_id not in ids:
                logger.warning("protected bundle %s (%s) does not exist", bundle_id, why)
        swept += self._sweep_trash()
        if removed or swept:
            logger.info("retention: removed %s, swept %s", removed, swept)
        return Retention(removed=removed, kept=kept, swept=swept)

    def sweep_staging(self, older_than: float | None = None) -> list[str]:
        """Deletes leftovers of crashed jobs (``.tmp-*``); returns what was removed.

        Args:
            older_than: Only staging directories created before this Unix time (the start of
                the job lock the caller holds); all of them when None, which is safe only when
                no job can be running.
        """
        removed = []
        for path in self._staging_dirs():
            if older_than is not None and _created(path) >= older_than:
                continue
            self._trash(path)
            removed.append(path.name)
        return removed + self._sweep_trash()

    def _staging_dirs(self) -> list[Path]:
        if not self.bundles_dir.is_dir():
            return []
        return sorted(p for p in self.bundles_dir.glob(f"{STAGING_PREFIX}*") if p.is_dir())

    def _trash(self, path: Path) -> None:
        trash = self.bundles_dir / f"{TRASH_PREFIX}{path.name.lstrip('.')}-{secrets.token_hex(3)}"
        try:
            os.replace(path, trash)
        except FileNotFoundError:
            return  # someone else removed it first
        fsync_directory(self.bundles_dir)
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep_trash(self) -> list[str]:
        if not self.bundles_dir.is_dir():
            return []
        removed = []
        for path in self.bundles_dir.glob(f"{TRASH_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed

    def _append_event(self, event: PublishEvent) -> None:
        # One write() of one line with O_APPEND: concurrent appenders never interleave within a
        # line, and a crash can only tear the last line, which `history` skips.
        line = (json.dumps(event.as_dict(), sort_keys=True) + "\n").encode("utf-8")
        # No mkdir: a publish has verified a bundle under this root, so it exists.
        fd = os.open(self.root / PUBLISHED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclasses.dataclass(frozen=True)
class PublishEvent:
    """One line of ``PUBLISHED``.

    Attributes:
        time: ISO 8601 UTC time of the event.
        action: ``publish`` (a job), ``promote`` or ``rollback`` (an operator).
        bundle_id: The bundle that serves from then on.
        previous: The bundle that served before (None for the first publish).
        pid: Process that made the change.
        host: Its host.
        reason: Free text.
    """

    time: str
    action: str
    bundle_id: str
    previous: str | None
    pid: int
    host: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> PublishEvent:
        if payload["action"] not in ACTIONS or not _BUNDLE_ID.match(payload["bundle_id"]):
            raise ValueError(f"not a publish event: {dict(payload)}")
        return cls(
            time=str(payload["time"]),
            action=str(payload["action"]),
            bundle_id=str(payload["bundle_id"]),
            previous=payload.get("previous"),
            pid=int(payload.get("pid", 0)),
            host=str(payload.get("host", "")),
            reason=str(payload.get("reason", "")),
        )


@dataclasses.dataclass(frozen=True)
class BundleSummary:
    """A bundle as `vidrec bundles list` shows it.

    Attributes:
        bundle_id: Its id.
        created_at: ISO 8601 UTC creation time (empty when the manifest is unreadable).
        parent: The bundle that was serving when it was trained.
        first_timestamp: Oldest event of its training data (Unix seconds), if known.
        last_timestamp: Data cutoff, or its newest event (Unix seconds), if known.
        key_metrics: See `key_metrics`.
        serving: Whether ``CURRENT`` names it.
        previous: Whether `BundleStore.rollback` would publish it.
        error: Why its manifest could not be read (empty when it could).
    """

    bundle_id: str
    created_at: str
    parent: str | None
    first_timestamp: int | None
    last_timestamp: int | None
    key_metrics: dict[str, float]
    serving: bool
    previous: bool
    error: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Retention:
    """Outcome of `BundleStore.apply_retention`.

    Attributes:
        removed: Bundles deleted.
        kept: Bundles kept, with the reason.
        swept: Leftover ``.tmp-*`` / ``.trash-*`` directories deleted.
    """

    removed: list[str]
    kept: dict[str, str]
    swept: list[str]


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``{"a/b/c": value}`` (booleans skipped)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


_RECALL = re.compile(r"^recall@(\d+)$")


def key_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The few figures a bundle listing shows: every NDCG@10, and per group the Recall@N
    with the largest N (the candidate list's recall); timings are left out.

    Keys lose a leading ``validation/``: ``{"retrieval/ndcg@10": ..., "retrieval/recall@100":
    ..., "ranking/ndcg@10": ...}``.
    """
    flat = {
        k.removeprefix("validation/"): v
        for k, v in flatten_metrics(metrics).items()
        if "seconds" not in k.split("/")
    }
    out: dict[str, float] = {}
    best_recall: dict[str, tuple[int, str]] = {}
    for key in flat:
        group, _, name = key.rpartition("/")
        if name == "ndcg@10":
            out[key] = flat[key]
        match = _RECALL.match(name)
        if match and int(match.group(1)) > best_recall.get(group, (0, ""))[0]:
            best_recall[group] = (int(match.group(1)), key)
    for _, key in best_recall.values():
        out[key] = flat[key]
    return dict(sorted(out.items()))


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _staging_marker(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads((path / STAGING_MARKER).read_text("utf-8"))
        return payload if isinstance(payload, dict) else {}
    except (OSError, ValueError):
        return {}


def _created(path: Path) -> float:
    """When a staging directory was created: its marker's time, else its mtime."""
    try:
        return float(_staging_marker(path)["created"])
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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

    A directory named like a bundle id (``<id>`` or, while staged, ``.tmp-<id>``) must hold
    that bundle's manifest: a bundle copied or renamed under another id would otherwise be
    promoted, served and reported under a name that is not its own. A directory with any other
    name (a copy made for ``vidrec evaluate --bundle DIR``) is not held to its name.

    Raises:
        BundleError: Missing or malformed manifest, fields of the wrong type, an unsupported
            schema version, or a manifest naming another bundle than its directory.
    """
    path = Path(bundle_dir) / MANIFEST
    try:
        payload = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as error:
        raise BundleError(f"{bundle_dir} has no {MANIFEST}; it is not a complete bundle") from error
    except (OSError, ValueError) as error:  # bad JSON, and bytes that are not UTF-8
        raise BundleError(
            f"cannot read {path}: {error}; the bundle is damaged: restore it or build a new one"
        ) from error
    try:
        manifest = Manifest.from_dict(payload)
    except BundleError as error:
        raise BundleError(f"{path}: {error}") from error
    if manifest.schema_version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema version {manifest.schema_version}, this vidrec reads "
            f"{SCHEMA_VERSION}; rebuild the bundle with this version"
        )
    name = Path(bundle_dir).name
    claimed = name.removeprefix(STAGING_PREFIX)
    if _BUNDLE_ID.match(claimed) and claimed != manifest.bundle_id:
        raise BundleError(
            f"bundle directory {name} holds the manifest of bundle {manifest.bundle_id} "
            f"(copied or renamed by hand?); a bundle is valid only under its own id: rename the "
            f"directory back to {manifest.bundle_id}, or delete it if {manifest.bundle_id} is "
            "still there"
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


def report_summaries(bundle_dir: str | os.PathLike[str], limit: int = 12) -> dict[str, Any]:
    """Short form of every JSON report in a bundle (``reports/``, ``index/``), by file name.

    Scalars are kept, lists become their length (``"epochs": "14 items"``), nested numbers
    are flattened; at most ``limit`` entries per report.
    """
    directory = Path(bundle_dir)
    out: dict[str, Any] = {}
    for path in sorted([*directory.glob("reports/*.json"), *directory.glob("index/*.json")]):
        try:
            payload = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as error:
            out[path.relative_to(directory).as_posix()] = {"error": str(error)}
            continue
        if not isinstance(payload, dict):
            continue
        summary: dict[str, Any] = {}
        for key, value in payload.items():
            if isinstance(value, list):
                summary[key] = f"{len(value)} items"
            elif isinstance(value, Mapping):
                summary.update(flatten_metrics(value, key))
            else:
                summary[key] = value
        out[path.relative_to(directory).as_posix()] = dict(list(summary.items())[:limit])
    return out
