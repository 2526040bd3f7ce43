"""Fixtures shared by the pipeline tests: one tiny trained bundle for the whole session (serving,
CLI and retrain tests), and the event store on either backend (a throwaway PostgreSQL server for
the session)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from core.bundle import BundleStore
from core.config import VidrecConfig, config_from_dict
from tests.pg_cluster import Cluster, ClusterError
from tests.stores import POSTGRESQL, SQLITE, StoreBackend
from tests.tiny import SHARED_SECTIONS, shared_platform

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SECONDS = 600  # `vidrec train` of the shared bundle; ~30 s on 2 cores


class SharedBundle:
    """The session's tiny bundle, trained by a real ``vidrec train`` process in ``root``.

    ``root`` holds ``data/`` (`tests.tiny.shared_platform`'s first seven days), ``config.json``
    (`tests.tiny.SHARED_SECTIONS`) and ``artifacts/`` with the one published bundle. The
    process starts as soon as the session knows that a test will need the bundle, and trains on
    the other core while the tests that do not need it run first (`pytest_collection_modifyitems`
    below): TensorFlow spends most of a tiny training tracing, in one Python thread.
    """

    def __init__(self, root: Path) -> None:
        from pipelines.data.datasets import write_dataset

        self.root = root
        self.base, self.everything = shared_platform()
        write_dataset(self.base, root / "data")
        (root / "config.json").write_text(json.dumps(SHARED_SECTIONS))
        self.log = root / "train.log"
        command = [
            sys.executable, "-m", "pipelines.cli", "train", "--data", str(root / "data"),
            "--artifacts", str(root / "artifacts"), "--config", str(root / "config.json"),
        ]  # fmt: skip
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )

    def wait(self) -> str:
        """Waits for the training; the published bundle's id."""
        try:
            code = self.process.wait(TRAIN_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"`vidrec train` of the shared bundle took over {TRAIN_SECONDS} s")
        if code != 0:
            pytest.fail(f"`vidrec train` of the shared bundle exited {code}:\n"
                        + self.log.read_text(errors="replace")[-4000:])  # fmt: skip
        bundle_id = BundleStore(self.root / "artifacts").current_id()
        assert bundle_id is not None
        return bundle_id

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


_SHARED = pytest.StashKey[SharedBundle]()


def _needs_shared_bundle(item: pytest.Item) -> bool:
    return "shared_bundle" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after -m / -k deselected what will not run
def pytest_collection_modifyitems(config, items):
    """Starts training the shared bundle, and runs the modules that need it last."""
    needing = {item.module for item in items if _needs_shared_bundle(item)}
    if not needing or config.option.collectonly:
        return
    config.stash[_SHARED] = SharedBundle(Path(tempfile.mkdtemp(prefix="vidrec-shared-")))
    items.sort(key=lambda item: item.module in needing)  # stable: order within kept


def pytest_unconfigure(config):
    shared = config.stash.get(_SHARED, None)
    if shared is not None:
        shared.close()


@pytest.fixture(scope="session")
def shared_bundle(request) -> tuple[SharedBundle, str]:
    """``(shared bundle, its id)`` once trained: read only, copy what a test changes."""
    shared = request.config.stash.get(_SHARED, None)
    if shared is None:  # collected some other way: train now
        shared = SharedBundle(Path(tempfile.mkdtemp(prefix="vidrec-shared-")))
        request.config.stash[_SHARED] = shared
    return shared, shared.wait()


@pytest.fixture(scope="session")
def serving_platform(shared_bundle, tmp_path_factory):
    """``(data, config, root, bundle_id)``: a published tiny bundle under ``root/artifacts``,
    trained on ``data`` (days 0-6 of the shared platform).

    Tests may publish other bundles beside it but must point ``CURRENT`` back at it.
    """
    shared, bundle_id = shared_bundle
    root = tmp_path_factory.mktemp("serving")
    shutil.copytree(shared.root / "artifacts", root / "artifacts")
    return shared.base, config_from_dict(VidrecConfig, SHARED_SECTIONS), root, bundle_id


@pytest.fixture(scope="module")
def cli_workspace(shared_bundle, tmp_path_factory):
    """A private copy per test module (tests add bundles to it) of a directory with ``data/``,
    ``config.json`` and ``artifacts/`` holding one bundle published by ``vidrec train``."""
    shared, _ = shared_bundle
    root = tmp_path_factory.mktemp("cli") / "workspace"
    shutil.copytree(shared.root, root, ignore=shutil.ignore_patterns("train.log"))
    return root


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server (tests/pg_cluster.py) for the session, removed afterwards.

    Never skipped: without PostgreSQL's server programs the tests that need it fail, saying how
    to install them (`make test` does).
    """
    try:
        cluster = Cluster(max_connections=300)
    except ClusterError as error:
        pytest.fail(f"cannot start a PostgreSQL server for the tests: {error}")
    yield cluster
    cluster.remove()


@pytest.fixture()
def pg_url(pg_cluster):
    """URL of a new empty schema of the session's PostgreSQL server, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    yield pg_cluster.url(search_path=schema)
    if not pg_cluster.running():  # a test that stops the server starts it again; be sure
        pg_cluster.start()
    with psycopg.connect(pg_cluster.url(), autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=[SQLITE, POSTGRESQL])
def store_backend(request, tmp_path):
    """The event store on each backend in turn (`tests.stores.StoreBackend`)."""
    if request.param == SQLITE:
        backend = StoreBackend(SQLITE, str(tmp_path / "events.db"))
    else:
        url = request.getfixturevalue("pg_url")
        backend = StoreBackend(POSTGRESQL, url, request.getfixturevalue("pg_cluster"))
    yield backend
    backend.close()
